"""`aligner gate`: 0 on the baseline itself, 1 on an injected regression, 2 on bad input; JUnit parses."""
from __future__ import annotations

import copy
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.make_results import make_results  # noqa: E402

from aligner import gate  # noqa: E402
from aligner.cli import cli  # noqa: E402


def _write(path: Path, results: dict[str, Any]) -> Path:
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


def _gate(*args: str) -> Any:
    return CliRunner().invoke(cli, ["gate", *args])


def _junit(path: Path) -> dict[str, str | None]:
    """check name -> failure text (None when the case passed)."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "aligner-gate"
    out = {}
    for case in suite.findall("testcase"):
        fail = case.find("failure")
        out[case.get("name")] = None if fail is None else (fail.text or "")
    assert int(suite.get("failures")) == sum(v is not None for v in out.values())
    return out


@pytest.fixture()
def accepted(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    results = make_results("pass", run_id="accepted")
    res = _write(tmp_path / "results.json", results)
    base = tmp_path / "baseline.json"
    r = _gate(str(res), "--baseline", str(base), "--update-baseline")
    assert r.exit_code == 0, r.output
    return results, base


def test_baseline_itself_passes(tmp_path: Path, accepted: tuple[dict[str, Any], Path]) -> None:
    results, base = accepted
    junit = tmp_path / "gate.xml"
    r = _gate(str(tmp_path / "results.json"), "--baseline", str(base), "--junit", str(junit))
    assert r.exit_code == 0, r.output
    assert "gate: PASS" in r.output
    cases = _junit(junit)
    assert set(cases) == set(gate.CHECKS) and all(v is None for v in cases.values())
    assert len(json.loads(base.read_text())["layers"]) == len(results["layers"])


def test_injected_failing_layer(tmp_path: Path, accepted: tuple[dict[str, Any], Path]) -> None:
    results, base = accepted
    bad = copy.deepcopy(results)
    row = next(r for r in bad["layers"] if r["torch_name"] == "neck.Rep_p4" and r["kind"] == "forward")
    row["rel"], row["ok"] = row["tol"] * 30, False  # no error finding: only the baseline catches it
    junit = tmp_path / "gate.xml"
    r = _gate(str(_write(tmp_path / "bad.json", bad)), "--baseline", str(base), "--junit", str(junit))
    assert r.exit_code == 1, r.output
    assert "neck.Rep_p4" in r.output and "REGRESSION" in r.output and "gate: FAIL" in r.output
    cases = _junit(junit)
    assert "neck.Rep_p4" in cases["new_failing_layers"] and cases["error_findings"] is None


def test_error_growth_within_tolerance_still_fails(tmp_path: Path, accepted: tuple[dict[str, Any], Path]) -> None:
    results, base = accepted
    grown = copy.deepcopy(results)
    row = next(r for r in grown["layers"] if r["kind"] == "backward" and r["rel"] < r["tol"] / 100)
    row["rel"] = row["tol"] * 0.5  # still ok, but more than 10x its baseline error
    r = _gate(str(_write(tmp_path / "g.json", grown)), "--baseline", str(base))
    assert r.exit_code == 1 and "error_growth" in r.output
    # a per-kind budget large enough accepts it
    r = _gate(str(tmp_path / "g.json"), "--baseline", str(base), "--budget", "backward=1e6")
    assert r.exit_code == 0, r.output


def test_noise_below_floor_is_not_growth(accepted: tuple[dict[str, Any], Path]) -> None:
    results, base = accepted
    noisy = copy.deepcopy(results)
    row = noisy["layers"][0]
    row["rel"] = row["tol"] * 1e-3  # may be >10x the baseline, but far below any meaningful error
    baseline = json.loads(base.read_text())
    baseline["layers"][0]["rel"] = row["tol"] * 1e-6
    assert gate.evaluate(noisy, baseline).passed


def test_growth_compares_the_judged_number(accepted: tuple[dict[str, Any], Path]) -> None:
    """With a float64 reference the verdict judges err(port, ref64); ``rel`` against the float32 reference also
    carries that reference's own rounding, which moves between machines (measured on the correct GOLD-YOLO-N
    at 128 px: neck.Rep_n5.conv1's backward rel 1.0e-3 -> 8.7e-2 while err(port, ref64) stayed 1.3e-3)."""
    results, _ = accepted
    base = copy.deepcopy(results)
    row = next(r for r in base["layers"] if r["kind"] == "backward" and r["rel"] < r["tol"] / 100)
    row.update(metric="rel_l2_fp64", rel_fp64=row["tol"] / 100)
    baseline = gate.make_baseline(base)
    reference_noise = copy.deepcopy(base)
    moved = next(r for r in reference_noise["layers"] if gate.layer_key(r) == gate.layer_key(row))
    moved["rel"] = row["tol"] * 0.9  # the float32 reference moved; the judged number did not
    assert gate.evaluate(reference_noise, baseline).passed
    moved["rel_fp64"] = row["tol"] * 0.5  # the port itself moved 50x, still within tolerance
    outcome = gate.evaluate(reference_noise, baseline)
    assert not outcome.passed
    assert any(c.check == "error_growth" for c in outcome.changes)


def test_new_unmatched_and_param_change(tmp_path: Path, accepted: tuple[dict[str, Any], Path]) -> None:
    results, base = accepted
    unmatched = copy.deepcopy(results)
    unmatched["unmatched"]["jittor"].append("neck.extra_conv")
    r = _gate(str(_write(tmp_path / "u.json", unmatched)), "--baseline", str(base))
    assert r.exit_code == 1 and "neck.extra_conv" in r.output

    params = copy.deepcopy(results)
    params["params"]["jittor"]["modules"]["neck"]["trainable"] += 64
    params["params"]["jittor"]["trainable"] += 64
    res = _write(tmp_path / "p.json", params)
    r = _gate(str(res), "--baseline", str(base))
    assert r.exit_code == 1 and "jittor.trainable" in r.output and "jittor.modules.neck" in r.output
    assert _gate(str(res), "--baseline", str(base), "--allow-param-change").exit_code == 0


def test_error_finding_fails_without_baseline(tmp_path: Path) -> None:
    junit = tmp_path / "j.xml"
    r = _gate(str(_write(tmp_path / "b.json", make_results("broken"))), "--junit", str(junit))
    assert r.exit_code == 1
    cases = _junit(junit)
    assert "neck.Rep_p4.conv1" in cases["error_findings"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("skipped")) == 4  # the baseline checks are reported as skipped, not passed


def test_update_baseline_refuses_failing_run(tmp_path: Path) -> None:
    res = _write(tmp_path / "b.json", make_results("broken"))
    base = tmp_path / "base.json"
    r = _gate(str(res), "--baseline", str(base), "--update-baseline")
    assert r.exit_code == 1 and not base.exists()
    assert _gate(str(res), "--baseline", str(base), "--update-baseline", "--force").exit_code == 0
    assert base.exists()


def test_bad_input_is_exit_2(tmp_path: Path) -> None:
    other = make_results("pass")
    other["schema"] = 2
    r = _gate(str(_write(tmp_path / "s2.json", other)))
    assert r.exit_code == 2 and "schema" in r.output
    (tmp_path / "x.json").write_text("{not json", encoding="utf-8")
    assert _gate(str(tmp_path / "x.json")).exit_code == 2
    assert _gate(str(tmp_path / "missing.json")).exit_code == 2
    ok = _write(tmp_path / "ok.json", make_results("pass"))
    r = _gate(str(ok), "--budget", "oops")
    assert r.exit_code == 2 and "KIND=FACTOR" in r.output
