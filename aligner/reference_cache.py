"""An on-disk, size-bounded cache of the torch reference's traces.

The reference does not change while a user edits the port, so a rerun can load its traces instead of
capturing them again. Each entry is one trace (one key, one state, the reference or the other-precision
run) under ``ROOT/<sha256 of the key>/``: ``key.json`` (the whole key, compared on load, so a hash
collision or a stale entry is a miss) and ``trace/`` (written by :mod:`aligner.trace_io`, checksummed).

What makes up the key is the caller's business (:class:`aligner.reference.Reference`); this module
only stores, finds and evicts. Every failure is a miss, never an error: a damaged or partial entry is
removed, a write that fails or loses a race with another run is dropped. Entries are built in a
staging directory and renamed into place, so a reader sees a whole entry or none. After each write the
least recently used entries are removed until the directory holds at most ``max_bytes``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .records import Trace

__all__ = ["ReferenceCache", "ENV_DIR", "DEFAULT_MAX_BYTES", "default_dir", "digest_arrays", "digest_tree",
           "digest_files"]

ENV_DIR = "ALIGNER_CACHE_DIR"
DEFAULT_MAX_BYTES = 4 * 1024 ** 3
KEY_FILE = "key.json"
TRACE_DIR = "trace"
_STAGING, _TRASH = ".staging-", ".trash-"
_STALE_SECONDS = 3600.0  # a staging directory this old belongs to a run that died


def default_dir() -> Path:
    """``$ALIGNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/aligner/reference`` (``~/.cache/aligner/reference``)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aligner" / "reference"


# ---- digests of what a key is made of ------------------------------------------------------------

def _update_array(h: Any, name: str, value: Any) -> None:
    a = np.asarray(value)
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and exact bytes (no cast: float32 and float64 weights differ)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        _update_array(h, name, arrays[name])
    return h.hexdigest()


def digest_tree(obj: Any) -> str:
    """sha256 of a nested structure of arrays and plain values (a pair's inputs and targets)."""
    h = hashlib.sha256()

    def walk(x: Any, path: str) -> None:
        if isinstance(x, (np.ndarray, np.generic)):
            _update_array(h, path, x)
        elif isinstance(x, Mapping):
            h.update(f"{path}|dict{len(x)}|".encode())
            for k in sorted(x, key=str):
                walk(x[k], f"{path}/{k}")
        elif isinstance(x, (list, tuple)):
            h.update(f"{path}|{type(x).__name__}{len(x)}|".encode())
            for i, v in enumerate(x):
                walk(v, f"{path}/{i}")
        else:
            h.update(f"{path}|{type(x).__name__}|{x!r}|".encode())

    walk(obj, "")
    return h.hexdigest()


def digest_files(files: Iterable[Path], root: Path) -> str:
    """sha256 over each file's path relative to ``root`` and its bytes (a missing file counts as such)."""
    h = hashlib.sha256()
    for f in sorted({Path(p).resolve() for p in files}):
        try:
            rel = f.relative_to(root)
        except ValueError:
            rel = f
        h.update(f"{rel.as_posix()}|".encode())
        try:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        except OSError:
            h.update(b"<missing>")
    return h.hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, ensure_ascii=True, default=repr, separators=(",", ":"))


# ---- the cache ------------------------------------------------------------------------------------

class ReferenceCache:
    """The cache directory ``root`` (default :func:`default_dir`), holding at most ``max_bytes``.

    ``hits`` / ``misses`` / ``stores`` count this object's lookups and writes.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root).expanduser() if root is not None else default_dir()
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = self.stores = 0

    @classmethod
    def of(cls, option: bool | str | os.PathLike[str] | None) -> ReferenceCache | None:
        """The cache a run option asks for: False/None none, True the default directory, a path that one."""
        if option is None or option is False or option == "":  # "" would be the working directory
            return None
        return cls() if option is True else cls(option)

    def entry(self, key: Mapping[str, Any]) -> Path:
        """The directory of ``key``'s entry (present or not)."""
        return self.root / hashlib.sha256(_canonical(key).encode()).hexdigest()

    def load(self, key: Mapping[str, Any]) -> Trace | None:
        """The trace stored under ``key``, or None (a damaged entry is removed)."""
        from .trace_io import read_trace  # noqa: PLC0415 - keeps this module light to import

        d = self.entry(key)
        if not d.is_dir():
            self.misses += 1
            return None
        try:
            if (d / KEY_FILE).read_text(encoding="utf-8") != _canonical(key):
                raise ValueError("another key")
            trace = read_trace(d / TRACE_DIR)
        except Exception:  # noqa: BLE001 - whatever is wrong with an entry, it is only a miss
            self._remove(d)
            self.misses += 1
            return None
        try:
            os.utime(d)  # its last use, for the eviction order
        except OSError:
            pass
        self.hits += 1
        return trace

    def store(self, key: Mapping[str, Any], trace: Trace) -> bool:
        """Write ``trace`` under ``key`` (True when this call wrote it). An entry larger than the whole
        bound, a full disk or another run that wrote the same entry first: nothing stored, no error."""
        from .trace_io import write_trace  # noqa: PLC0415

        d = self.entry(key)
        staging: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.root))
            write_trace(trace, staging / TRACE_DIR)
            (staging / KEY_FILE).write_text(_canonical(key), encoding="utf-8")
            if _size(staging) > self.max_bytes:
                return False
            os.rename(staging, d)  # fails when another run stored this entry meanwhile: keep theirs
            staging = None
        except Exception:  # noqa: BLE001 - a cache that cannot be written is only slower
            return False
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        self.stores += 1
        self.evict(keep=d)
        return True

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries until the directory holds at most ``max_bytes`` (the
        entry ``keep`` goes last), and leftovers of runs that died."""
        now = time.time()
        entries: list[tuple[float, int, Path]] = []
        try:
            children = list(self.root.iterdir())
        except OSError:
            return
        for p in children:
            try:
                mtime = p.stat().st_mtime
            except OSError:
                continue  # removed by another run meanwhile
            if p.name.startswith(_TRASH) or (p.name.startswith(_STAGING) and now - mtime > _STALE_SECONDS):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_dir() and not p.name.startswith("."):
                entries.append((float("inf") if p == keep else mtime, _size(p), p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            self._remove(p)
            total -= size

    def size(self) -> int:
        """Bytes the cache directory holds."""
        return _size(self.root)

    def _remove(self, d: Path) -> None:
        # renamed away first: another run sees the whole entry or none, never half of it
        try:
            trash = Path(tempfile.mkdtemp(prefix=_TRASH, dir=self.root))
            os.rename(d, trash / "x")
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
