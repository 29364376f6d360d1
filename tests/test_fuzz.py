"""A fast slice of the reader fuzz (benchmarks/fuzz.py runs 10,000 cases): every corrupted trace set,
results.json, baseline or fix log is either read intact, refused with the project's error, or a still-valid
document; never a crash, never an invalid document read silently."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import fuzz  # noqa: E402


def test_fuzz_slice_has_no_crash_and_no_silent_acceptance() -> None:
    report = fuzz.run(320, seed=7)
    counts = report["counts"]
    assert set(counts) == set(fuzz.KINDS) and all(sum(c.values()) == 80 for c in counts.values())
    assert sum(c.get("raw", 0) for c in counts.values()) == 0, report["examples"]
    assert sum(c.get("silent", 0) for c in counts.values()) == 0, report["examples"]
    # the corruptions are real: most cases are refused, in every kind
    assert all(c.get("refused", 0) >= 40 for c in counts.values()), counts


def test_the_oracle_tells_valid_edits_from_damage(tmp_path: Path) -> None:
    import json
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    doc = {"schema": 1, "verdict": "pass", "findings": [{"message": "x", "severity": "info", "rel": 0.5}]}
    a.write_text(json.dumps(doc))
    for edit, valid in ((lambda d: d["findings"][0].update(message="y"), True),
                        (lambda d: d["findings"][0].update(rel=0.25), True),
                        (lambda d: d.update(verdict="PASS"), False),
                        (lambda d: d["findings"][0].update(severity=3), False),
                        (lambda d: d["findings"][0].pop("message"), False)):
        d = json.loads(json.dumps(doc))
        edit(d)
        b.write_text(json.dumps(d))
        assert fuzz.valid_variant("results", a, b) is valid, d
