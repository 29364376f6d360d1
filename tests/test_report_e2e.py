"""End to end on real captures of the small pair (both frameworks): `aligner run`, the report in a
browser, the fix log opened by a broken port (Jittor BN eps) and closed by the correct one, the gate.

Two captures of the small pair; the first Jittor run of a machine compiles kernels (minutes).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from aligner import api, fixlog, gate
from aligner.pairs import get_pair
from aligner.report import write_outputs

sys.path.insert(0, str(Path(__file__).parent))
from test_fixlog import parse_markdown  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A broken port (api), then the correct one (CLI), sharing one fix log."""
    root = tmp_path_factory.mktemp("e2e")
    store = root / "fixlog"
    broken = api.run(get_pair("small"), port=api.Port(options={"fault": "bn_eps"})).to_dict()
    opened = fixlog.sync_with_results(broken, store)
    write_outputs(broken, root / "broken", fixlog_entries=opened.touched)
    # a real process with pipes (not a terminal), as in a CI log
    r = subprocess.run([sys.executable, "-m", "aligner", "run", "--model", "small", "--out", str(root / "ok"),
                        "--fixlog", str(store)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    ok = json.loads((root / "ok" / "results.json").read_text(encoding="utf-8"))
    return {"root": root, "store": store, "broken": broken, "opened": opened, "ok": ok, "cli_output": r.stdout,
            "cli_stderr": r.stderr}


def test_broken_port_is_found(runs: dict[str, Any]) -> None:
    broken = runs["broken"]
    assert broken["verdict"] == "fail"
    assert broken["first_divergence"]["location"] == "down.bn"
    types = {(f["type"], f["location"]) for f in broken["findings"] if f["severity"] == "error"}
    assert ("mode_mismatch", "down.bn") in types and ("forward_divergence", "down.bn") in types
    assert runs["ok"]["verdict"] == "pass"
    assert "verdict: PASS" in runs["cli_output"]


def test_terminal_shows_stages_not_framework_chatter(runs: dict[str, Any]) -> None:
    err = runs["cli_stderr"]
    stages = [ln for ln in err.splitlines() if re.match(r"^\[\s*\d+\.\ds\] ", ln)]
    assert len(stages) >= 3, err                      # one line per stage with its elapsed time, without a TTY
    assert any("capturing" in ln for ln in stages)
    assert "Compiling Operators" not in err + runs["cli_output"]
    assert "smallest subnormal" not in err + runs["cli_output"]
    assert len(err.splitlines()) <= len(stages) + 1    # at most the "framework output folded" line besides them


def test_fixlog_round_trip_on_real_output(runs: dict[str, Any]) -> None:
    errors = [f for f in runs["broken"]["findings"] if f["severity"] == "error"]
    assert len(runs["opened"].opened) == len(errors)
    entries = parse_markdown(fixlog.render_markdown(fixlog.load(runs["store"]), "zh"))
    assert len(entries) == len(errors)
    ok_id = runs["ok"]["run"]["id"]
    for entry in entries:
        d = dict(entry)
        assert [n for n, _ in entry] == ["日期", "问题", "分析", "修复", "验证", "状态"]
        assert d["状态"] == "✅完成" and ok_id in d["验证"]
    fwd = next(e for e in fixlog.load(runs["store"]) if e.key == "forward_divergence|init|down.bn")
    row = next(r for r in runs["ok"]["layers"]
               if r["torch_name"] == "down.bn" and r["state"] == "init" and r["kind"] == "forward")
    assert row["ok"] and "rel" in fwd.verification and "tol" in fwd.verification


def test_gate_on_real_output(runs: dict[str, Any], tmp_path: Path) -> None:
    baseline = gate.make_baseline(runs["ok"])
    assert gate.evaluate(runs["ok"], baseline).passed
    result = gate.evaluate(runs["broken"], baseline)
    assert not result.passed
    failing = {c.subject for c in result.regressions if c.check == "new_failing_layers"}
    assert "init/forward down.bn" in failing


@pytest.fixture()
def page(runs: dict[str, Any]) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium missing (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser.new_page()
        browser.close()


def test_real_report_in_browser(runs: dict[str, Any], page: Any) -> None:
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    url = (runs["root"] / "broken" / "index.html").resolve().as_uri()
    page.goto(url)
    page.wait_for_selector("html[data-ready]", state="attached")
    assert page.locator("#verdict").inner_text() == "FAIL"
    assert "down.bn" in page.locator("#headline").inner_text()
    page.check("#f-failing")
    assert int(page.locator("#rows-shown").inner_text()) == sum(not r["ok"] for r in runs["broken"]["layers"]) > 0
    assert page.locator("#chart-forward svg circle.fail").count() > 0
    assert page.locator(".fixentry").count() == len(runs["opened"].opened)
    assert errors == [] and requests == [url]
