"""Hostile inputs and precious directories: the user's files survive, incomparable inputs are refused,
bad input ends in one line and exit 2, concurrent fix-log writers keep every entry, outputs follow the
umask, and user text cannot become Markdown/HTML or a spreadsheet formula."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from _synth import make_trace, port_of  # noqa: E402
from fixtures.make_results import make_results  # noqa: E402

from aligner import api, fixlog, gate  # noqa: E402
from aligner.cli import cli  # noqa: E402
from aligner.errors import IncomparableError, TraceFormatError  # noqa: E402
from aligner.fsio import MARKER, OutputDirError, atomic_dir  # noqa: E402
from aligner.report import write_outputs  # noqa: E402
from aligner.report.outputs import render_summary  # noqa: E402
from aligner.results_io import ResultsFormatError, check_results, load_results  # noqa: E402
from aligner.trace_io import read_trace, write_trace, write_trace_set  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "baselines" / "gold_yolo-n-128.json"


def _one_line_error(r) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("aligner: error") or ln.startswith("Error:")]


# ---- 1. output directories ------------------------------------------------------------------------

def test_capture_into_a_users_folder_keeps_the_users_file(tmp_path: Path) -> None:
    user = tmp_path / "x"
    user.mkdir()
    (user / "f").write_text("k")
    r = CliRunner().invoke(cli, ["capture", "--framework", "torch", "--pair", "small", "--out", str(user)])
    _one_line_error(r)
    assert (user / "f").read_text() == "k"
    with pytest.raises(OutputDirError):  # the writer itself refuses too
        write_trace_set({"init": make_trace(state="init")}, user)
    assert sorted(p.name for p in user.iterdir()) == ["f"]  # no staging folder either


def test_aligner_outputs_are_replaced_and_user_dirs_are_not(tmp_path: Path) -> None:
    out = write_trace(make_trace(), tmp_path / "t")
    assert (out / MARKER).is_file()
    write_trace(make_trace(seed=3), out)  # ours: replaced
    (out / MARKER).unlink()
    with pytest.raises(OutputDirError):  # without the marker it is not ours any more
        write_trace(make_trace(), out)
    run = tmp_path / "report"
    run.mkdir()
    (run / "index.html").write_text("mine")
    with pytest.raises(OutputDirError):
        write_outputs(make_results("pass"), run)
    assert (run / "index.html").read_text() == "mine"


def test_unwritable_out_is_refused_before_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    called = []
    monkeypatch.setattr(api, "run_pair", lambda *a, **k: called.append(1), raising=False)
    r = CliRunner().invoke(cli, ["run", "--model", "small", "--out", str(blocker / "run")])
    _one_line_error(r)
    assert not called


# ---- 2 and 5. comparability -----------------------------------------------------------------------

def _planted(tmp_path: Path) -> tuple[Path, Path]:
    ref = make_trace("torch", state="init")
    port = port_of(ref)
    port.arrays["act/3/"] = port.arrays["act/3/"] * 1.01  # a 1 % activation error in neck.conv
    return (write_trace_set({"init": ref}, tmp_path / "pt"), write_trace_set({"init": port}, tmp_path / "jt"))


def test_reference64_must_be_the_torch_trace_at_the_other_precision(tmp_path: Path) -> None:
    pt, jt = _planted(tmp_path)
    with pytest.raises(IncomparableError, match="not torch"):
        api.diff(pt, jt, reference64=jt)  # the port's own trace as the reference
    with pytest.raises(IncomparableError, match="dtype"):
        api.diff(pt, jt, reference64=pt)  # the run's own precision
    r64 = write_trace_set({"init": make_trace("torch", state="init", dtype="float64")}, tmp_path / "r64")
    assert api.diff(pt, jt, reference64=r64).verdict == "fail"  # a real reference: the error is found
    r = CliRunner().invoke(cli, ["diff", str(pt), str(jt), "--reference64", str(jt), "--out", str(tmp_path / "o")])
    _one_line_error(r)
    assert "reference" in r.output


def test_traces_of_other_dtype_or_inputs_or_without_calls_are_refused(tmp_path: Path) -> None:
    ref = make_trace("torch", state="init")
    pt = write_trace_set({"init": ref}, tmp_path / "pt")
    j64 = port_of(make_trace("torch", state="init", dtype="float64"))
    with pytest.raises(IncomparableError, match="dtype"):
        api.diff(pt, write_trace_set({"init": j64}, tmp_path / "j64"))
    other = port_of(ref)
    other.meta.update(inputs_sha256="b" * 64)
    ref.meta.update(inputs_sha256="a" * 64)
    with pytest.raises(IncomparableError, match="inputs differ"):
        api.diff(write_trace_set({"init": ref}, tmp_path / "pt2"), write_trace_set({"init": other}, tmp_path / "o"))
    from dataclasses import replace
    empty = replace(port_of(make_trace("torch", state="init")), calls=[])
    with pytest.raises(IncomparableError, match="no module call"):
        api.diff(pt, write_trace_set({"init": empty}, tmp_path / "empty"))


# ---- 3 and 10. the gate ----------------------------------------------------------------------------

def test_gate_refuses_another_pairs_baseline(tmp_path: Path) -> None:
    results = make_results("pass")
    results["run"]["pair"] = "small"
    results["run"]["config"] = {"batch": 2, "img_size": 32, "num_classes": 3}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    r = CliRunner().invoke(cli, ["gate", str(path), "--baseline", str(BASELINE), "--allow-param-change"])
    _one_line_error(r)
    assert "pair 'gold_yolo-n' vs 'small'" in r.output
    with pytest.raises(IncomparableError):
        gate.evaluate(results, json.loads(BASELINE.read_text()))


@pytest.mark.parametrize("factor", ["nan", "inf", "0.5", "-1"])
def test_gate_growth_factor_must_be_a_real_budget(tmp_path: Path, factor: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(make_results("pass")), encoding="utf-8")
    _one_line_error(CliRunner().invoke(cli, ["gate", str(path), "--growth-factor", factor]))
    _one_line_error(CliRunner().invoke(cli, ["gate", str(path), "--budget", f"backward={factor}"]))


def test_fail_verdict_without_findings_and_bad_types_are_refused(tmp_path: Path) -> None:
    bad = make_results("pass")
    bad["verdict"] = "fail"
    with pytest.raises(ResultsFormatError, match="verdict"):
        check_results(bad)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    _one_line_error(CliRunner().invoke(cli, ["gate", str(path)]))
    for mutate in (lambda d: d["findings"][0].update(severity="fatal"),
                   lambda d: d["layers"][0].update(ok="yes"),
                   lambda d: d["layers"][0].update(kind="sideways"),
                   lambda d: d["params"]["torch"].update(trainable=-5),
                   lambda d: d.update(run=[]),
                   lambda d: d["findings"][0].update(type="no_such_type")):
        doc = make_results("broken")
        mutate(doc)
        with pytest.raises(ResultsFormatError):
            check_results(doc)


def test_non_utf8_baseline_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(make_results("pass")), encoding="utf-8")
    base = tmp_path / "base.json"
    base.write_bytes(b'{"schema": 1, "run": {"id": "\xff\xfe"}}')
    r = CliRunner().invoke(cli, ["gate", str(path), "--baseline", str(base)])
    _one_line_error(r)
    assert "UTF-8" in r.output
    results = tmp_path / "nan.json"
    results.write_text(json.dumps(make_results("pass")).replace('"seed": 0', '"seed": NaN'), encoding="utf-8")
    with pytest.raises(ResultsFormatError):
        load_results(results)


# ---- 4 and 10. the fix log -------------------------------------------------------------------------

def test_twenty_concurrent_adds_keep_twenty_entries(tmp_path: Path) -> None:
    store = tmp_path / "fx"
    cmd = [sys.executable, "-m", "aligner", "fixlog", "add", "--dir", str(store), "--problem"]
    procs = [subprocess.Popen([*cmd, f"problem {i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [e for _, e in outs]
    entries = fixlog.load(store)
    assert len(entries) == 20 and len({e.id for e in entries}) == 20
    assert {e.problem for e in entries} == {f"problem {i}" for i in range(20)}
    assert sorted(o.strip() for o, _ in outs) == sorted(e.id for e in entries)


@pytest.mark.parametrize("args", [["--date", "2026-13-45 10:00"], ["--date", "yesterday"], ["--problem", " "]])
def test_fixlog_add_validates(tmp_path: Path, args: list[str]) -> None:
    base = {"--problem": "p"}
    opts = dict(base, **dict(zip(args[::2], args[1::2])))
    flat = [x for kv in opts.items() for x in kv]
    _one_line_error(CliRunner().invoke(cli, ["fixlog", "add", "--dir", str(tmp_path / "fx"), *flat]))
    assert not (tmp_path / "fx" / "entries.jsonl").exists()


def test_mistyped_fixlog_dir_is_an_error(tmp_path: Path) -> None:
    fixlog.add(tmp_path / "fixlog", problem="p")
    for command in (["list"], ["render"], ["show", "FX0001"]):
        r = CliRunner().invoke(cli, ["fixlog", *command, "--dir", str(tmp_path / "fixlgo")])
        _one_line_error(r)
        assert "no fix log" in r.output


# ---- 7. arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["run", "--model", "small", "--num-classes", "0"],
    ["run", "--model", "small", "--img-size", "-4"],
    ["run", "--model", "small", "--img-size", "0"],
    ["run", "--model", "small", "--img-size", "100000"],
    ["run", "--model", "small", "--seed", "-1"],
    ["run", "--model", "small", "--state", "nosuch"],
    ["anchors", "--img-size", "320", "--strides", "0"],
    ["anchors", "--img-size", "320", "--strides", "8,-16"],
    ["params", "gold_yolo-n", "--num-classes", "0"],
], ids=lambda a: " ".join(a[2:]) if a[0] == "run" else " ".join(a))
def test_bad_arguments_are_one_line_exit_2(tmp_path: Path, args: list[str], monkeypatch) -> None:
    called = []
    monkeypatch.setattr(api, "run_pair", lambda *a, **k: called.append(1), raising=False)
    extra = ["--out", str(tmp_path / "o")] if args[0] == "run" else []
    _one_line_error(CliRunner().invoke(cli, [*args, *extra]))
    assert not called


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text("{", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "aligner", "--debug", "report", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" in p.stderr
    p = subprocess.run([sys.executable, "-m", "aligner", "report", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_params_counts_what_run_compares() -> None:
    """`aligner params` builds the pair as `aligner run` does: the trainable count of a recorded run."""
    recorded = json.loads(BASELINE.read_text(encoding="utf-8"))["params"]["torch"]["trainable"]
    r = CliRunner().invoke(cli, ["params", "gold_yolo-n", "--depth", "0"])
    assert r.exit_code == 0, r.output
    assert f"Trainable: {recorded:,}" in r.output


# ---- 8. Ctrl-C -------------------------------------------------------------------------------------

def test_interrupted_staging_folder_is_removed(tmp_path: Path) -> None:
    target = write_trace(make_trace(), tmp_path / "t")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert read_trace(target).state == "perturbed"


def test_ctrl_c_exits_130_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_outputs(make_results("pass"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    p = subprocess.Popen([sys.executable, "-m", "aligner", "run", "--model", "small", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:  # the first progress line comes once Jittor is loaded: interrupt then
        seen.append(line)
        if "aligning small" in line:
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    err = "".join(seen) + err
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["run"]


# ---- 9. permissions --------------------------------------------------------------------------------

def test_outputs_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        paths = write_outputs(make_results("pass"), tmp_path / "run")
        trace = write_trace(make_trace(), tmp_path / "trace")
        fixlog.add(tmp_path / "fx", problem="p")
        gate.write_baseline(make_results("pass"), tmp_path / "base.json")
        files = [paths.index_html, paths.results_json, paths.layers_csv, paths.summary_md, trace / "manifest.json",
                 trace / "arrays.npz", tmp_path / "fx" / "entries.jsonl", tmp_path / "base.json"]
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o644" for f in files}
        assert oct((tmp_path / "run").stat().st_mode & 0o777) == "0o755"
        assert oct(trace.stat().st_mode & 0o777) == "0o755"
    finally:
        os.umask(old)


# ---- 10. escaping ----------------------------------------------------------------------------------

def test_summary_escapes_markdown_and_csv_neutralises_formulas(tmp_path: Path) -> None:
    results = make_results("broken")
    f = next(x for x in results["findings"] if x["severity"] == "error")
    f["location"] = "neck.`<img src=x onerror=alert(1)>`"
    f["message"] = "anchors 125->32 <b>bold</b> | cell *x*"
    results["layers"][0]["torch_name"] = "=HYPERLINK(\"http://x\")"
    results["layers"][1]["torch_name"] = "@SUM(A1)"
    md = render_summary(results)
    line = next(ln for ln in md.splitlines() if "125" in ln)
    assert "`` neck.`<img src=x onerror=alert(1)>` ``" in line  # a code span the backtick cannot close
    assert r"125-\>32 \<b\>bold\</b\> \| cell \*x\*" in line
    assert "&gt;" not in md and "&lt;" not in md
    assert line.count(" | ") == 3 and line.startswith("| ")  # still four cells
    paths = write_outputs(results, tmp_path / "run")
    with open(paths.layers_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["torch_name"] == "'=HYPERLINK(\"http://x\")" and rows[1]["torch_name"] == "'@SUM(A1)"
    assert rows[2]["torch_name"] == results["layers"][2]["torch_name"]


def test_trace_with_changed_bytes_is_refused(tmp_path: Path) -> None:
    path = write_trace(make_trace(), tmp_path / "t")
    data = bytearray((path / "arrays.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "arrays.npz").write_bytes(bytes(data))
    with pytest.raises(TraceFormatError, match="checksum"):
        read_trace(path)
    path = write_trace(make_trace(), tmp_path / "t2")
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text.replace('"pair": "synthetic"', '"pair": "synthetiC"'))
    with pytest.raises(TraceFormatError, match="checksum"):
        read_trace(path)


def test_input_and_weight_digests_agree_across_precisions() -> None:
    """The float64 reference of a configuration starts from the float32 run's values: same digest, so
    --reference64 is accepted for it; another seed's values are not."""
    import numpy as np

    from aligner.comparability import array_digest

    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5)}
    w64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in w.items()}
    assert array_digest(w) == array_digest(w64)
    other = {**w, "a": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}
    assert array_digest(other) != array_digest(w)
    assert array_digest([w["a"]]) != array_digest([w["a"].T.copy()])  # the shape is part of it
