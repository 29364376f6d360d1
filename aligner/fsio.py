"""Safe file I/O: atomic writes that respect the umask, output directories the aligner may touch, and
strict reading of JSON files that come from elsewhere.

Every file the aligner writes goes through :func:`atomic_write` (temp file next to the target, then a
rename: a reader never sees half a file, an interrupted write leaves the old file). Directories are
written through :func:`atomic_dir` (built in a staging sibling, then swapped in). An existing directory
is only ever replaced or written into when the aligner created it (it holds the marker file
:data:`MARKER`) or when it is empty: a user's folder is never deleted or overwritten.
:func:`read_json_bytes` turns every way a file can be damaged into the caller's one-line error.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from aligner.errors import AlignerError, UsageError

__all__ = ["MARKER", "OutputDirError", "atomic_write", "atomic_write_files", "atomic_dir", "check_output_dir",
           "prepare_output_dir", "check_writable", "file_mode", "dir_mode", "mark", "is_marked", "read_json_bytes"]

# Present in every directory the aligner creates; its presence is what allows later runs to replace it.
MARKER = ".aligner-output"
_MARKER_TEXT = "written by the aligner; this directory may be replaced by the next run\n"
_umask_lock = threading.Lock()
_MAX_DEPTH = 64  # deeper JSON is no file of ours (and would strain every recursive consumer)


class OutputDirError(UsageError):
    """An output path the aligner must not write (a user's folder, a file, an unwritable place)."""
    slug = "output-dir"


def _umask() -> int:
    with _umask_lock:  # reading the umask means setting it; keep the window closed to other threads
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode of a new directory under the current umask (0755 under umask 022)."""
    return 0o777 & ~_umask()


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` via a temp file in the same directory and a rename."""
    p = Path(path)
    if not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_files(directory: str | os.PathLike[str], files: dict[str, str | bytes]) -> list[Path]:
    """Write several files of one directory all or nothing: every temp file first, then the renames."""
    d = Path(directory)
    temps: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=d)
            temps.append((Path(tmp), d / name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.chmod(tmp, file_mode())
        for tmp, final in temps:
            os.replace(tmp, final)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)  # no-op for the renamed ones
    return [final for _, final in temps]


def mark(directory: str | os.PathLike[str]) -> None:
    """Put the marker file into a directory the aligner created."""
    m = Path(directory) / MARKER
    if not m.exists():
        m.write_text(_MARKER_TEXT, encoding="utf-8")
        os.chmod(m, file_mode())


def is_marked(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / MARKER).is_file()


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def check_writable(path: str | os.PathLike[str], *, replace: bool = True) -> None:
    """Raise :class:`OutputDirError` unless ``path`` can be written by the aligner, before any work starts.

    ``replace``: the whole directory will be swapped for a new one (trace sets), so an existing one
    must be empty or carry the marker.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{p} exists and is not a directory")
    if p.exists() and replace and not (is_marked(p) or _is_empty_dir(p)):
        raise OutputDirError(f"{p} is a directory the aligner did not create (no {MARKER} file) and it is not "
                             "empty; choose a new directory")
    parent = p if p.exists() else next((q for q in p.parents if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot write {p}: {parent} is not a writable directory")
    if p.exists() and replace and not os.access(p.parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot replace {p}: {p.parent} is not writable")


def check_output_dir(path: str | os.PathLike[str], names: Iterable[str] = (),
                     may_replace: Iterable[str] = ()) -> None:
    """Raise :class:`OutputDirError` unless the aligner may write ``names`` into directory ``path``.

    Accepted: a path that does not exist yet (and can be created), an empty directory, a directory with
    the marker, or one that holds none of ``names`` (nothing of the user's is overwritten);
    ``may_replace`` lists names that may be overwritten anyway (e.g. the results.json a report is
    rendered from).
    """
    p = Path(path)
    check_writable(p, replace=False)
    if not p.exists() or is_marked(p) or _is_empty_dir(p):
        return
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot write into {p}: permission denied")
    keep = set(may_replace)
    clash = [n for n in names if n not in keep and (p / n).exists()]
    if clash:
        raise OutputDirError(f"{p} was not created by the aligner (no {MARKER} file) and already holds "
                             f"{', '.join(clash)}; choose a new directory")


def prepare_output_dir(path: str | os.PathLike[str], names: Iterable[str] = (),
                       may_replace: Iterable[str] = ()) -> Path:
    """:func:`check_output_dir`, then create ``path`` (marked) when it does not exist or is empty."""
    p = Path(path)
    names = tuple(names)
    check_output_dir(p, names, may_replace)
    if not p.exists():
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, dir_mode())
        mark(p)
    elif _is_empty_dir(p):  # nothing of the user's in it: the aligner takes it over
        mark(p)
    return p


class atomic_dir:  # noqa: N801 - used like a function: `with atomic_dir(path) as tmp:`
    """Build a directory in a staging sibling, then swap it into place on success (marked).

    Refuses (before anything is built) to replace a directory the aligner did not create; the staging
    folder is removed on any failure, Ctrl-C included.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        check_writable(self.path, replace=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        os.chmod(self.tmp, dir_mode())
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            mark(self.tmp)
            old = None
            if self.path.exists():
                check_writable(self.path, replace=True)  # still ours (or empty) at the moment of the swap
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
                os.replace(self.path, old / "x")
            os.replace(self.tmp, self.path)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---- reading files the aligner did not necessarily write ------------------------------------------

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e400 parses to inf
        raise ValueError(f"{text[:20]} is out of the range of a float")
    return x


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


def read_json_bytes(raw: bytes, source: str, error: Callable[[str], AlignerError], *,
                    allow_nan: bool = False) -> Any:
    """JSON from bytes read off disk: UTF-8, bounded nesting, NaN/Infinity only with ``allow_nan``; any
    problem (bad bytes, bad syntax, an integer too long to parse) raises ``error`` with one line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None
    try:
        if allow_nan:
            doc = json.loads(text)
        else:
            doc = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {_MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError; so are integers too long to convert
        raise error(f"{source}: not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    if _too_deep(doc, _MAX_DEPTH):
        raise error(f"{source}: JSON nested deeper than {_MAX_DEPTH} levels")
    return doc
