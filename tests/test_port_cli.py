"""The user's-own-port workflow on the command line: `aligner map` proposes the name map, `aligner run --port
... --map ...` aligns the port through it. The port here is the small pair's Jittor model one wrapper level
deeper (``model.``), as users' wrappers put it; with a planted BatchNorm eps the report must name that module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PORT = """
from jittor import nn
from aligner.pairs._small_jittor import SmallNet


class Wrapper(nn.Module):
    def __init__(self, num_classes, fault=None):
        self.model = SmallNet(num_classes, fault=fault)

    def execute(self, x):
        return self.model(x)


def build(num_classes=3, fault=None):
    return Wrapper(num_classes, fault)
"""


def _aligner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "aligner", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


def _findings(run_dir: Path) -> list[tuple[str, str, str]]:
    r = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return [(f["severity"], f["type"], f["location"]) for f in r["findings"]]


def test_map_then_run_a_wrapped_port(tmp_path: Path) -> None:
    (tmp_path / "myport.py").write_text(textwrap.dedent(PORT), encoding="utf-8")
    m = _aligner(tmp_path, "map", "--model", "small", "--port", "myport.py:build", "--out", "map.json")
    assert m.returncode == 0, m.stderr[-2000:]

    clean = _aligner(tmp_path, "run", "--model", "small", "--port", "myport.py:build", "--map", "map.json",
                     "--out", "clean")
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    found = _findings(tmp_path / "clean")
    assert not [f for f in found if f[0] == "error"], found
    # every tensor was transferred through the map: no weight-transfer or missing-parameter finding
    assert not [f for f in found if f[1] in ("weight_transfer", "missing_parameter", "extra_parameter")], found

    broken = _aligner(tmp_path, "run", "--model", "small", "--port", "myport.py:build", "--port-args",
                      '{"fault": "bn_eps"}', "--map", "map.json", "--out", "broken")
    assert broken.returncode == 1, broken.stdout[-2000:] + broken.stderr[-2000:]
    errors = [f for f in _findings(tmp_path / "broken") if f[0] == "error"]
    assert ("error", "mode_mismatch", "down.bn") in errors, errors
    assert "First divergence: down.bn" in broken.stdout


def test_port_options_are_checked_before_any_capture(tmp_path: Path) -> None:
    (tmp_path / "myport.py").write_text(textwrap.dedent(PORT), encoding="utf-8")
    r = _aligner(tmp_path, "run", "--model", "small", "--port-args", "{}", "--out", "o1")
    assert r.returncode == 2 and "--port-args needs --port" in r.stderr
    r = _aligner(tmp_path, "run", "--model", "small", "--port", "myport.py:nothing", "--out", "o2")
    assert r.returncode == 2 and "has no attribute 'nothing'" in r.stderr
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    r = _aligner(tmp_path, "run", "--model", "small", "--port", "myport.py:build", "--map", "bad.json",
                 "--out", "o3")
    assert r.returncode == 2 and "\n" not in r.stderr.strip(), r.stderr
