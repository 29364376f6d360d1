"""Terminal output of long commands: stage lines with elapsed time, framework chatter folded (fd level)."""
from __future__ import annotations

import io
import os
import re
import warnings

import pytest

from aligner.progress import Progress, folded_output


def test_progress_line_has_elapsed_time() -> None:
    out = io.StringIO()
    Progress(out)("capturing torch")
    assert re.fullmatch(r"\[\s*\d+\.\ds\] capturing torch\n", out.getvalue())


def test_chatter_is_folded_and_stages_still_show(capfd: pytest.CaptureFixture[str]) -> None:
    progress = Progress()
    with folded_output(progress) as say:
        os.write(1, b"Compiling Operators(28/28) used: 3.32s eta: 0s\n")   # what C++ prints, below Python
        os.write(2, b"[i 1203 12:09:42.339550 20 lock.py:85] Create lock file\n")
        warnings.warn("The value of the smallest subnormal for <class 'numpy.float32'> type is zero.", UserWarning)
        say("capturing jittor")
    out, err = capfd.readouterr()
    assert "Compiling" not in out + err and "lock file" not in out + err and "subnormal" not in out + err
    lines = err.splitlines()
    assert re.fullmatch(r"\[\s*\d+\.\ds\] capturing jittor", lines[0])
    assert "2 lines of framework output folded" in lines[1]


def test_verbose_shows_everything(capfd: pytest.CaptureFixture[str]) -> None:
    with folded_output(Progress(), verbose=True):
        os.write(1, b"Compiling Operators(1/1)\n")
    assert "Compiling Operators(1/1)" in capfd.readouterr().out


def test_failure_replays_the_tail(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="boom"), folded_output(Progress()):
        os.write(2, b"jittor: kernel compile failed: some detail\n")
        raise RuntimeError("boom")
    assert "kernel compile failed: some detail" in capfd.readouterr().err
