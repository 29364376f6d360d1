"""The dated fix log: a broken run opens entries, a partial fix marks ⚠️, the fix closes them with ✅
and evidence, and the Markdown has exactly the fields of the user's porting-log template."""
from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.make_results import make_results  # noqa: E402

from aligner import fixlog  # noqa: E402
from aligner.cli import cli  # noqa: E402

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "000_83ef0050832eeb8d.txt"
NOW = datetime(2026, 11, 26, 11, 30)


def spec_template() -> tuple[list[str], list[str]]:
    """Field names and status values of the template in the user's own log (记录模板)."""
    text = SPEC.read_text(encoding="utf-8")
    block = text.split("### 每次修复记录格式:", 1)[1].split("```", 2)[1]
    lines = [ln for ln in block.strip().splitlines() if ln.strip()]
    names = [ln.split(":", 1)[0].strip() for ln in lines]
    status = lines[-1].split(":", 1)[1].strip().strip("[]").split("/")
    return names, status


def parse_markdown(md: str) -> list[list[tuple[str, str]]]:
    """Fenced blocks of "name: value" lines (continuation lines start with spaces)."""
    entries = []
    for block in re.findall(r"^```+\n(.*?)\n```+$", md, flags=re.S | re.M):
        fields: list[tuple[str, str]] = []
        for line in block.splitlines():
            if line.startswith("    ") and fields:
                fields[-1] = (fields[-1][0], fields[-1][1] + "\n" + line.strip())
            else:
                name, sep, value = line.partition(": ")
                assert sep, f"not a template line: {line!r}"
                fields.append((name, value))
        entries.append(fields)
    return entries


def test_spec_template_is_what_we_think() -> None:
    names, status = spec_template()
    assert names == ["日期", "问题", "分析", "修复", "验证", "状态"]
    assert status == ["✅完成", "❌待修复", "⚠️部分完成"]


def test_round_trip_broken_partial_fixed(tmp_path: Path) -> None:
    names, status_values = spec_template()
    store = tmp_path / "fixlog"
    broken = make_results("broken", run_id="run-broken")
    errors = [f for f in broken["findings"] if f["severity"] == "error"]

    rep = fixlog.sync_with_results(broken, store, now=NOW)
    assert len(rep.opened) == len(errors) == 4 and not rep.closed
    md = fixlog.render_markdown(fixlog.load(store), "zh")
    entries = parse_markdown(md)
    assert len(entries) == 4
    for entry, finding in zip(entries, errors):
        assert [n for n, _ in entry] == names  # field for field, in order
        d = dict(entry)
        assert d["日期"] == "2026-11-26 11:30"
        assert d["问题"] == finding["message_zh"]
        assert finding["location"] in d["分析"]
        assert d["状态"] == "❌待修复" and d["状态"] in status_values

    # second run: eps fixed, detach still there -> 2 closed, backward divergence improved (⚠️), 1 still open
    rep = fixlog.sync_with_results(make_results("partial", run_id="run-partial"), store, now=NOW)
    assert {e.key.split("|")[0] for e in rep.closed} == {"forward_divergence", "mode_mismatch"}
    assert [e.key.split("|")[0] for e in rep.partial] == ["backward_divergence"]
    assert [e.key.split("|")[0] for e in rep.still_open] == ["unreachable_gradient"]
    assert not rep.opened
    partial = dict(parse_markdown(fixlog.render_markdown(list(rep.partial), "zh"))[0])
    assert partial["状态"] == "⚠️部分完成"
    assert "run-partial" in partial["验证"] and "0.2" in partial["验证"] and "0.004" in partial["验证"]
    fwd = next(e for e in rep.closed if e.key.startswith("forward_divergence"))
    closed = dict(parse_markdown(fixlog.render_markdown([fwd], "zh"))[0])
    assert closed["状态"] == "✅完成"
    # evidence: the run id and the metric of that layer that now passes, read from the new results
    row = next(r for r in make_results("partial")["layers"]
               if r["torch_name"] == "neck.Rep_p4.conv1" and r["state"] == "init" and r["kind"] == "forward")
    assert "run-partial" in closed["验证"] and "rel" in closed["验证"] and row["ok"]
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e[-+]\d+)?", closed["验证"].split("：", 1)[1])]
    assert any(x == pytest.approx(row["rel"], rel=0.02) for x in numbers), closed["验证"]
    assert any(x == pytest.approx(row["tol"]) for x in numbers), closed["验证"]

    # third run: everything fixed -> every entry ✅, with the run id as evidence
    rep = fixlog.sync_with_results(make_results("pass", run_id="run-fixed"), store, now=NOW)
    assert len(rep.closed) == 2 and not rep.opened and not rep.partial and not rep.still_open
    final = parse_markdown(fixlog.render_markdown(fixlog.load(store), "zh"))
    assert [dict(e)["状态"] for e in final] == ["✅完成"] * 4
    assert sum("run-fixed" in dict(e)["验证"] for e in final) == 2
    history = [e.history for e in fixlog.load(store)]
    assert history[2] == ("run-broken: open", "run-partial: partial", "run-fixed: done")

    # a regression after the fix opens a new entry instead of reviving the closed one
    rep = fixlog.sync_with_results(make_results("broken", run_id="run-again"), store, now=NOW)
    assert len(rep.opened) == 4 and [e.id for e in rep.opened] == ["FX0005", "FX0006", "FX0007", "FX0008"]


def test_english_field_names(tmp_path: Path) -> None:
    fixlog.sync_with_results(make_results("broken"), tmp_path, now=NOW)
    entries = parse_markdown(fixlog.render_markdown(fixlog.load(tmp_path), "en"))
    assert [n for n, _ in entries[0]] == ["Date", "Problem", "Analysis", "Fix", "Verification", "Status"]
    assert dict(entries[0])["Status"] == "❌Open"
    assert dict(entries[0])["Problem"].startswith("Forward output of neck.Rep_p4.conv1")


def test_manual_entries_untouched_and_pairs_separate(tmp_path: Path) -> None:
    manual = fixlog.add(tmp_path, problem="梯度传播断开，476/480参数梯度为零", analysis="计算图断开", now=NOW)
    other = make_results("broken")
    other["run"]["pair"] = "gold_yolo-s"
    fixlog.sync_with_results(other, tmp_path, now=NOW)
    rep = fixlog.sync_with_results(make_results("pass"), tmp_path, now=NOW)  # gold_yolo-n: nothing tracked
    assert not rep.closed and not rep.opened
    stored = fixlog.load(tmp_path)
    assert stored[0] == manual and stored[0].status is fixlog.Status.OPEN
    assert all(e.status is fixlog.Status.OPEN for e in stored)


def test_multiline_values_and_fences(tmp_path: Path) -> None:
    e = fixlog.add(tmp_path, problem="a\nb", fix="use ```code``` here", now=NOW)
    md = fixlog.render_markdown([e], "zh")
    assert "````" in md  # a longer fence than the backtick run in the content
    assert "问题: a\n    b" in md


def test_other_format_is_refused(tmp_path: Path) -> None:
    fixlog.add(tmp_path, problem="x", now=NOW)
    f = tmp_path / "entries.jsonl"
    data = json.loads(f.read_text(encoding="utf-8"))
    f.write_text(json.dumps({**data, "format": 99}) + "\n", encoding="utf-8")
    with pytest.raises(fixlog.FixlogError, match="format 99"):
        fixlog.load(tmp_path)


def test_cli_add_edit_list_show_render(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "log")
    r = runner.invoke(cli, ["fixlog", "add", "--dir", d, "--problem", "Anchor数量不匹配", "--analysis",
                            "2100 是 320 输入的数量", "--date", "2024-07-30 17:35"])
    assert r.exit_code == 0 and r.output.strip() == "FX0001"
    r = runner.invoke(cli, ["fixlog", "edit", "FX0001", "--dir", d, "--fix", "500 输入就是 5249", "--verification",
                            "aligner anchors --img-size 500", "--status", "done"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["fixlog", "list", "--dir", d])
    assert r.exit_code == 0 and "FX0001" in r.output and "✅完成" in r.output
    r = runner.invoke(cli, ["fixlog", "show", "FX0001", "--dir", d])
    assert r.output.splitlines() == ["日期: 2024-07-30 17:35", "问题: Anchor数量不匹配", "分析: 2100 是 320 输入的数量",
                                     "修复: 500 输入就是 5249", "验证: aligner anchors --img-size 500", "状态: ✅完成"]
    out = tmp_path / "FIXLOG.md"
    r = runner.invoke(cli, ["fixlog", "render", "--dir", d, "--out", str(out), "--lang", "en"])
    assert r.exit_code == 0
    assert parse_markdown(out.read_text(encoding="utf-8"))[0][-1] == ("Status", "✅Done")
    r = runner.invoke(cli, ["fixlog", "show", "FX0009", "--dir", d])
    assert r.exit_code == 2 and "FX0009" in r.output
