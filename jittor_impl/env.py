"""Jittor's process environment, set once before ``import jittor`` (import this module first).

Every file of the port that imports jittor imports this module before it, so nothing has to be exported
by hand (docs/jittor-notes.md, "Setting up Jittor on a CPU machine"):

* ``nvcc_path=""``: without a CUDA runtime Jittor crashes at import when an nvcc is on the PATH.
* oneDNN: Jittor's installer downloads oneDNN (fails offline). Debian's ``libdnnl-dev`` works when
  linked into the folder Jittor looks in; :func:`link_system_onednn` makes that link.
* ``use_mkl=0`` only when no oneDNN can be found, with a loud warning (convolutions ~50x slower).
* ``log_silent=1``: Jittor's INFO lines on every import would bury the caller's own output.
"""
from __future__ import annotations

import glob
import os
import sys
import warnings
from pathlib import Path

__all__ = ["ONEDNN_DIR", "SLOW_WARNING", "system_onednn_library", "onednn_linked", "link_system_onednn",
           "configure"]

# Jittor 1.3.11 looks for oneDNN exactly here (compile_extern.install_mkl).
ONEDNN_DIR = Path.home() / ".cache" / "jittor" / "mkl" / "dnnl_lnx_2.2.0_cpu_gomp"
_SYSTEM_DNNL_GLOBS = ("/usr/lib/*-linux-gnu/libdnnl.so.2", "/usr/lib/libdnnl.so.2", "/usr/lib64/libdnnl.so.2")
SLOW_WARNING = (
    "aligner: oneDNN (Debian package libdnnl-dev) was not found; Jittor falls back to use_mkl=0 and its "
    "CPU convolutions run about 50x slower (a GOLD-YOLO alignment takes minutes instead of seconds). "
    "Fix: run `make setup` as root (it installs libdnnl-dev) or `apt-get install libdnnl-dev`."
)


def system_onednn_library() -> Path | None:
    """Path of the system libdnnl.so.2, or None."""
    for pattern in _SYSTEM_DNNL_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[0])
    return None


def onednn_linked() -> bool:
    """True when Jittor's oneDNN folder has a loadable library and headers."""
    lib = ONEDNN_DIR / "lib" / "libmkldnn.so"
    return lib.exists() and (ONEDNN_DIR / "include" / "dnnl.h").exists()


def link_system_onednn() -> bool:
    """Link Debian's oneDNN into Jittor's folder. Returns True when oneDNN is usable."""
    if onednn_linked():
        return True
    lib = system_onednn_library()
    if lib is None or not Path("/usr/include/dnnl.h").exists():
        return False
    (ONEDNN_DIR / "lib").mkdir(parents=True, exist_ok=True)
    include = ONEDNN_DIR / "include"
    if include.is_symlink():
        include.unlink()
    if not include.exists():
        include.symlink_to("/usr/include")
    target = ONEDNN_DIR / "lib" / "libmkldnn.so"
    if target.is_symlink():
        target.unlink()
    if not target.exists():
        target.symlink_to(lib)
    return onednn_linked()


def configure() -> dict[str, str]:
    """Set the process environment for Jittor; idempotent. Returns what was set."""
    settings: dict[str, str] = {}
    if "jittor" in sys.modules:
        return settings  # too late to change anything; the importer already configured it
    os.environ.setdefault("nvcc_path", "")
    settings["nvcc_path"] = os.environ["nvcc_path"]
    if "use_mkl" not in os.environ:
        if link_system_onednn():
            os.environ["use_mkl"] = "1"
        else:
            os.environ["use_mkl"] = "0"
            warnings.warn(SLOW_WARNING, RuntimeWarning, stacklevel=2)
    settings["use_mkl"] = os.environ["use_mkl"]
    os.environ.setdefault("log_silent", "1")
    return settings


configure()
