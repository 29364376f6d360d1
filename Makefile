# Two entry points for a fresh clone: `make report` and `make test`. Each sets up what is missing first.
PY := .venv/bin/python
REPORT_DIR := reports/latest

.PHONY: setup report test doctor bench faults clean-report

setup:
	@bash scripts/setup.sh

report: setup
	$(PY) -m aligner run --model gold_yolo-n --num-classes 20 --img-size 500 --seed 0 --out $(REPORT_DIR) --fixlog reports/fixlog

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

doctor: setup
	$(PY) -m aligner doctor

faults: setup
	$(PY) -m aligner.faults.run

bench: setup
	$(PY) -m benchmarks.run

clean-report:
	rm -rf $(REPORT_DIR)
