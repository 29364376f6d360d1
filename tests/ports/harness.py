"""Run a zoo port through the command line (map file, --port, --port-loss) and read its error findings.

What a zoo test asserts: on the correct port no error finding at all; with every planted deviation on, each named
with its finding type at its module, and no error finding anywhere else: every error (a cause such as a module's
own deviation, a setting, a parameter, the loss or the assigner, and the end-to-end symptoms: the first forward
and backward divergences, gradient patterns) points at a planted place or inside one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_port(out: Path, *, img_size: int, port: str, map_file: Path, port_args: dict, port_loss: str,
             port_loss_args: dict, extra: Sequence[str] = ()) -> list[dict]:
    """``aligner run`` on GOLD-YOLO-N (official configuration, 20 classes, batch 2) with the port; its findings."""
    args = ["run", "--model", "gold_yolo-n", "--num-classes", "20", "--img-size", str(img_size), "--set", "batch=2",
            *extra, "--port", port, "--port-args", json.dumps(port_args), "--map", str(map_file),
            "--port-loss", port_loss, "--port-loss-args", json.dumps(port_loss_args), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "aligner", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=3600)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text(encoding="utf-8"))["findings"]


def errors(findings: Iterable[dict]) -> list[tuple[str, str]]:
    return [(f["type"], f["location"]) for f in findings if f["severity"] == "error"]


def _under(location: str, prefix: str) -> bool:
    return location == prefix or location.startswith(prefix + ".")


def unexplained(found: list[tuple[str, str]], expected: Sequence[tuple[str, str, str]],
                also: Sequence[tuple[str, str]] = ()) -> tuple[list, list]:
    """(expected findings not reported, error findings at no planted place and not in ``also``)."""
    missing = [row for row in expected if row[1:] not in found]
    places = [loc for _, _, loc in expected]
    stray = [(kind, loc) for kind, loc in found if (kind, loc) not in also
             and not any(_under(loc, p) for p in places)]
    return missing, stray
