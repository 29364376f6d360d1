"""The `aligner` command line: --help everywhere, exit codes 0/1/2, anchors, params, --lang zh."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.make_results import make_results  # noqa: E402

import aligner.api  # noqa: E402
from aligner import cli as cli_mod  # noqa: E402
from aligner.cli import cli, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "gold_yolo_n_nc20_dfl_500"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


ALL = _commands(cli)


def test_every_command_is_there() -> None:
    names = {" ".join(c) for c in ALL}
    assert {"run", "capture", "diff", "report", "gate", "params", "anchors", "doctor", "fixlog", "fixlog add",
            "fixlog edit", "fixlog list", "fixlog show", "fixlog render"} <= names


@pytest.mark.parametrize("command", [(), *ALL], ids=lambda c: " ".join(c) or "aligner")
def test_help_has_example_and_exit_codes(command: tuple[str, ...]) -> None:
    r = CliRunner().invoke(cli, [*command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Example:" in r.output and "aligner " in r.output.split("Example:", 1)[1]
    assert "Exit codes:" in r.output and "2  usage or environment error" in r.output


def test_python_dash_m() -> None:
    p = subprocess.run([sys.executable, "-m", "aligner", "anchors", "--img-size", "320"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "1600 + 400 + 100 = 2100" in p.stdout


def test_anchors_500() -> None:
    r = CliRunner().invoke(cli, ["anchors", "--img-size", "500"])
    assert r.exit_code == 0
    lines = r.output.splitlines()
    # docs/gold-yolo-notes.md, "Anchors": 63x63 + 32x32 + 16x16 = 3969 + 1024 + 256 = 5249 at 500 px
    assert any("63 x 63" in ln and ln.split()[-1] == "3969" for ln in lines)
    assert any("32 x 32" in ln and ln.split()[-1] == "1024" for ln in lines)
    assert any("16 x 16" in ln and ln.split()[-1] == "256" for ln in lines)
    assert "3969 + 1024 + 256 = 5249" in r.output


def test_anchors_zh_and_usage_errors() -> None:
    r = CliRunner().invoke(cli, ["anchors", "--img-size", "500", "--lang", "zh"])
    assert r.exit_code == 0 and "锚点总数: 3969 + 1024 + 256 = 5249" in r.output and "输入尺寸 500" in r.output
    assert CliRunner().invoke(cli, ["anchors"]).exit_code == 2
    assert CliRunner().invoke(cli, ["anchors", "--img-size", "0"]).exit_code == 2
    assert CliRunner().invoke(cli, ["anchors", "--img-size", "500", "--strides", "8,x"]).exit_code == 2
    assert CliRunner().invoke(cli, ["anchors", "--img-size", "500", "--lang", "fr"]).exit_code == 2


def test_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2
    assert main(["anchors", "--img-size", "320"]) == 0
    assert main(["report", "/no/such/results.json"]) == 2
    assert "Exit codes" in capsys.readouterr().out


def _fake_run_pair(variant: str, calls: list[dict[str, Any]]) -> Any:
    def run_pair(model: str, **kw: Any) -> dict[str, Any]:
        calls.append({"model": model, **kw})
        return make_results(variant, run_id=f"fake-{variant}")
    return run_pair


@pytest.mark.parametrize("args, mode", [([], "auto"), (["--isolate", "always"], "always"),
                                        (["--isolate", "never"], "never"), (["--no-isolate"], "never")])
def test_run_isolate_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], mode: str) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(aligner.api, "run_pair", _fake_run_pair("pass", calls), raising=False)
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--img-size", "128", "--out", str(tmp_path / "o"),
                                 *args])
    assert r.exit_code == 0, r.output
    assert calls[0]["isolate"] == mode
    bad = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--out", str(tmp_path / "p"), "--isolate", "x"])
    assert bad.exit_code == 2 and "--isolate" in bad.output


@pytest.mark.parametrize("variant,code", [("pass", 0), ("broken", 1)])
def test_run_writes_outputs_and_maps_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str,
                                             code: int) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(aligner.api, "run_pair", _fake_run_pair(variant, calls), raising=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--num-classes", "20", "--img-size", "500",
                                 "--seed", "0", "--out", str(out), "--dtype", "float64", "--steps", "2",
                                 "--fixlog", str(tmp_path / "fx"), "--set", "use_dfl=true,iou_type=giou"])
    assert r.exit_code == code, r.output
    assert callable(calls[0].pop("progress"))  # progress lines also when not on a terminal (CI logs)
    assert calls == [{"model": "gold_yolo-n", "num_classes": 20, "img_size": 500, "seed": 0, "dtype": "float64",
                      "stats_only": False, "steps": 2, "states": None, "noise_floor": True, "use_dfl": True,
                      "iou_type": "giou", "cache": True, "isolate": "auto"}]
    assert "use_dfl=True, reg_max=16, iou_type=giou" in r.output  # the configuration in use is printed
    assert {p.name for p in out.iterdir()} == {"index.html", "results.json", "layers.csv", "summary.md",
                                               ".aligner-output"}
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["verdict"] == variant.replace(
        "broken", "fail")
    n_errors = sum(f["severity"] == "error" for f in make_results(variant)["findings"])
    assert f"fixlog: {n_errors} opened" in r.output
    if variant == "broken":
        assert "First divergence: neck.Rep_p4.conv1" in r.output
        assert (out / "index.html").read_text(encoding="utf-8").count('class="fixentry"') == n_errors


def test_run_lang_zh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(aligner.api, "run_pair", _fake_run_pair("broken", []), raising=False)
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--out", str(tmp_path), "--lang", "zh"])
    assert r.exit_code == 1
    assert "结论: 未通过" in r.output and "首个分歧：neck.Rep_p4.conv1（前向" in r.output
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "未通过" in summary and "前向分歧" in summary


def test_report_rerenders_and_refuses_other_schema(tmp_path: Path) -> None:
    res = tmp_path / "results.json"
    res.write_text(json.dumps(make_results("broken")), encoding="utf-8")
    r = CliRunner().invoke(cli, ["report", str(res), "--lang", "zh"])
    assert r.exit_code == 0, r.output  # rendering a failing run is a success
    assert (tmp_path / "index.html").exists() and (tmp_path / "layers.csv").exists()
    other = make_results("pass")
    other["schema"] = 7
    res.write_text(json.dumps(other), encoding="utf-8")
    r = CliRunner().invoke(cli, ["report", str(res), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "schema 7" in r.output and not (tmp_path / "o" / "index.html").exists()


def test_quiet_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert cli_mod.interactive() is False


@pytest.mark.skipif(not (GOLDEN / "manifest.json").exists(), reason="golden data missing")
def test_params_matches_official_count() -> None:
    counts = json.loads((GOLDEN / "manifest.json").read_text(encoding="utf-8"))["counts"]
    r = CliRunner().invoke(cli, ["params", "gold_yolo-n", "--num-classes", "20", "--use-dfl", "--depth", "1"])
    assert r.exit_code == 0, r.output
    assert f"Total params: {counts['params_total']:,} ({counts['param_tensors_total']} tensors)" in r.output
    assert f"Trainable: {counts['params_trainable']:,}" in r.output
    for part, c in counts["per_part"].items():
        row = next(ln for ln in r.output.splitlines() if ln.startswith(part + " "))
        assert f"{c['trainable']:,}" in row
    assert CliRunner().invoke(cli, ["params", "gold_yolo-q"]).exit_code == 2
    # default: the official N configuration, no DFL (docs/gold-yolo-notes.md: 6,048,970 at nc=20)
    r = CliRunner().invoke(cli, ["params", "gold_yolo-n", "--num-classes", "20", "--depth", "0"])
    assert r.exit_code == 0 and "Total params: 6,048,970 " in r.output and "use_dfl=False" in r.output, r.output


def test_faults_help_lists_the_runner_options() -> None:
    r = CliRunner().invoke(cli, ["faults", "--help"])
    assert r.exit_code == 0, r.output
    for opt in ("--subset", "--only", "--img-size", "--dtype", "--seed", "--out", "--no-faults", "--no-clean",
                "--clean-sizes", "--no-cache"):
        assert opt in r.output, opt
    from aligner.faults import run as runner  # the defaults must stay those of the argparse runner

    defaults = {p.name: p.default for p in cli.commands["faults"].params}
    assert defaults["out"] == str(runner.DEFAULT_OUT)
    assert defaults["clean_sizes"] == ",".join(map(str, runner.CLEAN_SIZES))
    assert (defaults["subset"], defaults["img_size"], defaults["dtype"], defaults["seed"]) == (
        "all", 100, "float32", 0)


def test_faults_only_checks_names_then_forwards(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aligner.faults import run as runner
    from aligner.faults.catalogue import catalogue

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "run_faults", lambda **kw: calls.append(kw) or {})  # no model runs here
    r = CliRunner().invoke(cli, ["faults", "--only", "no_such_fault"])
    assert r.exit_code == 2, r.output
    assert "no_such_fault" in r.output and all(f.name in r.output for f in catalogue())
    assert calls == []  # refused before the runner (and any framework) was reached
    r = CliRunner().invoke(cli, ["faults", "--only", "detach_neck,double_sigmoid", "--only", "tal_topk",
                                 "--img-size", "160", "--seed", "-1", "--no-clean", "--no-cache"])
    assert r.exit_code == 0, r.output
    assert [{k: v for k, v in c.items() if k != "progress"} for c in calls] == [
        {"subset": "all", "only": ["detach_neck", "double_sigmoid", "tal_topk"], "img_size": 160,
         "dtype": "float32", "seed": -1, "out": "benchmarks/results", "faults": True, "clean": False,
         "clean_sizes": [320, 500, 640], "cache": False}]
    monkeypatch.undo()
    # the real runner; with --no-faults --no-clean it runs nothing and writes empty tables
    r = CliRunner().invoke(cli, ["faults", "--only", "tal_topk", "--img-size", "160", "--seed", "-1", "--dtype",
                                 "float64", "--no-faults", "--no-clean", "--no-cache", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "faults.json").read_text(encoding="utf-8"))["meta"]
    assert (meta["img_size"], meta["seed"], meta["dtype"], meta["subset"], meta["cache"]) == (
        160, -1, "float64", "only", False)


def test_gold_yolo_pairs_default_to_the_official_configurations() -> None:
    """The pair's defaults are the shipped configs (reference_torch.configs, the official values)."""
    from aligner.pairs import get_pair
    from reference_torch.configs import VARIANTS

    for size in "nsml":
        cfg, pair = VARIANTS[f"gold_yolo-{size}"], get_pair(f"gold_yolo-{size}")
        assert (pair.use_dfl, pair.reg_max, pair.iou_type) == (cfg.use_dfl, cfg.reg_max, cfg.iou_type), size
        assert pair.config()["official"]
    n = get_pair("gold_yolo-n", use_dfl=True)
    assert (n.reg_max, n.iou_type, n.config()["official"]) == (16, "siou", False)


def test_set_overrides_and_refuses_unknown_keys(tmp_path: Path) -> None:
    from aligner.pairs import parse_settings

    assert parse_settings("gold_yolo-n", ["use_dfl=true", "reg_max=16,iou_type=giou", "batch=1"]) == {
        "use_dfl": True, "reg_max": 16, "iou_type": "giou", "batch": 1}
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--out", str(tmp_path / "o"),
                                 "--set", "use_dlf=true"])
    assert r.exit_code == 2 and "no such option" in r.output and "use_dfl" in r.output
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--out", str(tmp_path / "o"),
                                 "--set", "iou_type=foo"])
    assert r.exit_code == 2 and "iou_type must be one of" in r.output
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--out", str(tmp_path / "o"),
                                 "--img-size", "320", "--set", "img_size=160"])
    assert r.exit_code == 2 and "repeats --img-size" in r.output
