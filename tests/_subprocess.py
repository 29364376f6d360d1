"""Capture one framework's trace set in a fresh Python process, through the command line (``aligner capture``)."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def capture_in_subprocess(pair: str, framework: str, out_dir: str | Path, *, states: Sequence[str] = (),
                          weights_from: str | Path | None = None, dtype: str | None = None,
                          timeout: float = 600) -> Path:
    """Run ``python -m aligner capture`` and return ``out_dir``; a failed run fails the test with its stderr."""
    cmd = [sys.executable, "-m", "aligner", "capture", "--framework", framework, "--pair", pair, "--out", str(out_dir)]
    cmd += [a for s in states for a in ("--state", s)]
    if weights_from is not None:
        cmd += ["--weights-from", str(weights_from)]
    if dtype is not None:
        cmd += ["--dtype", dtype]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"capture subprocess ({framework}) failed ({res.returncode}):\n{res.stderr[-4000:]}"
    return Path(out_dir)
