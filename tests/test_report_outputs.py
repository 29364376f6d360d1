"""The run directory: four files written together or not at all; CSV and JSON round-trip the rows."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.make_results import make_results  # noqa: E402

from aligner.report import outputs, write_outputs  # noqa: E402
from aligner.results_io import ResultsFormatError, load_results  # noqa: E402
from aligner.report.html import build_page  # noqa: E402


def test_four_files_round_trip(tmp_path: Path) -> None:
    results = make_results("broken", steps=2)
    paths = write_outputs(results, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".aligner-output", "index.html", "layers.csv",
                                                         "results.json", "summary.md"]
    assert load_results(paths.results_json) == json.loads(json.dumps(results))
    with open(paths.layers_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results["layers"])
    assert sum(r["ok"] == "False" for r in rows) == sum(not r["ok"] for r in results["layers"])
    assert rows[0]["shape_torch"] == "x".join(map(str, results["layers"][0]["shape_torch"]))
    assert float(rows[3]["rel"]) == results["layers"][3]["rel"]  # numbers round-trip exactly (repr)
    summary = paths.summary_md.read_text(encoding="utf-8")
    assert "**FAIL**" in summary and "`neck.Rep_p4.conv1`" in summary


def test_failure_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_outputs(make_results("pass"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "render_summary", lambda *a, **k: "x")
    monkeypatch.setattr(outputs, "layers_csv", boom)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(make_results("broken"), tmp_path)
    # the previous report is intact and no temp file is left behind
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_schema_is_checked(tmp_path: Path) -> None:
    bad = make_results("pass")
    bad["schema"] = 2
    with pytest.raises(ResultsFormatError, match="schema 2"):
        write_outputs(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "results.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ResultsFormatError, match="JSON object"):
        load_results(tmp_path)


def test_findings_most_important_first() -> None:
    results = make_results("broken")
    page = build_page(results)
    # the analysis's causal order, as results.json lists it
    assert [f.id for f in page.findings] == [f["id"] for f in results["findings"]]
    assert page.findings[0].is_first and page.findings[0].type == "forward_divergence"
    # the chips add up to the findings
    assert sum(n for _, _, n in page.type_chips) == len(page.findings)


def test_both_languages_cover_every_label_and_finding_type() -> None:
    from aligner.records import FindingType
    from aligner.report.i18n import TABLES, TYPE_NAMES

    assert set(TABLES["en"]) == set(TABLES["zh"])
    for lang in ("en", "zh"):
        assert set(TYPE_NAMES[lang]) == {t.value for t in FindingType}


def test_schema_version_agrees_with_the_producer() -> None:
    from aligner import api
    from aligner.results_io import RESULTS_SCHEMA

    assert api.RESULTS_SCHEMA == RESULTS_SCHEMA
