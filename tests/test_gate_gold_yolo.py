"""The project's own regression gate: the correct GOLD-YOLO-N port at 128x128 against the committed baseline.

The baseline (tests/baselines/gold_yolo-n-128.json) was accepted with
`aligner gate RESULTS --baseline tests/baselines/gold_yolo-n-128.json --update-baseline`; a port change that
makes a passing layer fail, grows an error past its budget, adds an unmatched module or changes a parameter
count fails this test.
"""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BASELINE = Path(__file__).parent / "baselines" / "gold_yolo-n-128.json"


def test_gold_yolo_n_passes_the_gate_against_the_committed_baseline(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "aligner", "run", "--model", "gold_yolo-n", "--num-classes", "20",
         "--img-size", "128", "--seed", "0", "--out", str(tmp_path / "run")],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    junit = tmp_path / "gate.xml"
    gate = subprocess.run(
        [sys.executable, "-m", "aligner", "gate", str(tmp_path / "run" / "results.json"),
         "--baseline", str(BASELINE), "--junit", str(junit)],
        capture_output=True, text=True)
    assert gate.returncode == 0, gate.stdout[-3000:] + gate.stderr[-3000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures")) == 0 and int(suite.get("tests")) > 0
