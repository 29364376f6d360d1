"""Terminal output of long commands: one progress line per stage, third-party chatter folded.

Progress lines carry the elapsed time and are printed whether or not stderr is a terminal (a CI log
shows every stage as one line). While a run is in progress, what the frameworks print themselves
(Jittor's kernel compile lines, numpy's "smallest subnormal" warnings) is captured at the file
descriptor level and folded into one line, unless ``verbose``; if the run fails, the captured tail is
printed so nothing that explains the failure is lost.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from typing import IO, Iterator

__all__ = ["Progress", "folded_output"]

# numpy warns about float types whose smallest subnormal is zero once Jittor sets flush-to-zero.
_NUMPY_SUBNORMAL = r"The value of the smallest subnormal"
_TAIL_LINES = 40


class Progress:
    """``progress("stage")`` prints ``[  12.3s] stage`` on stderr (or the stream given)."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        out = self.stream or sys.stderr
        out.write(f"[{time.perf_counter() - self.t0:6.1f}s] {message}\n")
        out.flush()


@contextlib.contextmanager
def folded_output(progress: Progress, *, verbose: bool = False) -> Iterator[Progress]:
    """Capture fd 1 and 2 (C++ and Python output alike) during the block; progress still reaches the terminal.

    On success the captured lines are reported as one count; on an exception their tail is replayed.
    """
    if verbose:
        yield progress
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    previous_stream = progress.stream
    progress.stream = terminal
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NUMPY_SUBNORMAL)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield progress
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            progress.stream = previous_stream
            sink.seek(0)
            lines = [ln for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            if lines and failed:
                terminal.write("".join(f"  | {ln}\n" for ln in lines[-_TAIL_LINES:]))
            elif lines:
                terminal.write(f"[{time.perf_counter() - progress.t0:6.1f}s] ({len(lines)} lines of framework "
                               "output folded; --verbose shows them)\n")
            terminal.close()
