"""Trace directories on disk: ``manifest.json`` + ``arrays.npz``, written atomically, version-checked.

Layout of one trace (one framework, one model state)::

    DIR/manifest.json   {"trace_format", "meta", "calls", "params", "modules", "stats", "stages", "arrays"}
    DIR/arrays.npz      np.savez of Trace.arrays (keys as in records.py), loaded with allow_pickle=False

A capture of several states writes a *trace set*: ``ROOT/index.json`` (``{"trace_format", "framework",
"states": [...]}``) and one trace directory per state, ``ROOT/<state>/``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TraceFormatError
from .records import CallRecord, FrozenBy, GradStatus, ModuleInfo, ParamInfo, ParamKind, TensorStats, Trace

__all__ = ["TRACE_FORMAT", "MANIFEST", "ARRAYS", "INDEX", "write_trace", "read_trace", "is_trace_dir",
           "write_trace_set", "read_trace_set", "read_weights", "WEIGHTS", "atomic_dir"]

# TRACE_FORMAT changelog:
#   1  first format: manifest (meta, calls, params, modules, stats, stages, array index) + arrays.npz;
#      trace sets as index.json + one directory per state.
#      Compatible additions (older traces still read, the new parts are simply absent there):
#      ``buf/<buffer>`` arrays (buffers after the forward), ``meta["init"]`` (fresh-model summaries for
#      the init check) and ``calls[].requires_grad`` (CallRecord default None).
#   2  an array stored under several keys (an alias record shares its target's array) is written once:
#      the other keys' index entries say ``"same_as": <key written>``. Format 1 traces are still read.
TRACE_FORMAT = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
INDEX = "index.json"
WEIGHTS = "weights.npz"  # optional, in a state directory: the torch weights that state used


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=1, allow_nan=True) + "\n", encoding="utf-8")


class atomic_dir:  # noqa: N801 - used like a function: `with atomic_dir(path) as tmp:`
    """Context manager: build a directory in a temp sibling, then swap it into place on success."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            os.replace(self.path, old / "x")
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_into(trace: Trace, d: Path) -> None:
    # NOTE: not np.ascontiguousarray, which turns 0-d arrays into shape (1,)
    arrays = {k: np.array(v, order="C", copy=False) for k, v in trace.arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"trace array {k!r} has dtype object; only numeric arrays are stored")
    first: dict[int, str] = {}
    same_as: dict[str, str] = {}
    for k, v in trace.arrays.items():  # one object under several keys (aliases): stored once
        same_as[k] = first.setdefault(id(v), k)
    index = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                 **({"same_as": same_as[k]} if same_as[k] != k else {})} for k, v in arrays.items()}
    manifest = {
        "trace_format": TRACE_FORMAT,
        "meta": trace.meta,
        "calls": [asdict(c) for c in trace.calls],
        "params": [asdict(p) for p in trace.params],
        "modules": [asdict(m) for m in trace.modules],
        "stats": {k: asdict(s) for k, s in trace.stats.items()},
        "stages": trace.stages,
        "arrays": index,
    }
    _dump(manifest, d / MANIFEST)
    with open(d / ARRAYS, "wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if same_as[k] == k})


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write ``trace`` as a directory at ``path`` (replacing it atomically). Returns the path."""
    with atomic_dir(path) as tmp:
        _write_into(trace, tmp)
    return Path(path)


def is_trace_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _check_format(doc: dict[str, Any], where: Path, key: str = "trace_format") -> None:
    found = doc.get(key)
    if type(found) is not int or found not in READABLE_FORMATS:
        raise TraceFormatError(f"{where}: trace format {found!r}, this aligner reads only "
                               f"{', '.join(map(str, READABLE_FORMATS))} "
                               "(re-capture with this version)")


def _stats(d: dict[str, Any]) -> TensorStats:
    return TensorStats(**{**d, "shape": tuple(d["shape"])})


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Load a trace directory; raises TraceFormatError on a missing/corrupt/other-version trace."""
    d = Path(path)
    try:
        doc = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TraceFormatError(f"{d}: no {MANIFEST} (not a trace directory)") from exc
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{d / MANIFEST}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise TraceFormatError(f"{d / MANIFEST}: not a trace manifest")
    _check_format(doc, d)
    try:
        calls = [CallRecord(**{**c, "shape": tuple(c["shape"]), "input_keys": tuple(c["input_keys"])})
                 for c in doc["calls"]]
        params = [ParamInfo(**{**p, "shape": tuple(p["shape"]), "kind": ParamKind(p["kind"]),
                               "grad_status": GradStatus(p["grad_status"]),
                               "frozen_by": None if p["frozen_by"] is None else FrozenBy(p["frozen_by"])})
                  for p in doc["params"]]
        modules = [ModuleInfo(**m) for m in doc["modules"]]
        stats = {k: _stats(s) for k, s in doc["stats"].items()}
        index = doc["arrays"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceFormatError(f"{d / MANIFEST}: malformed ({exc!r})") from exc
    arrays: dict[str, np.ndarray] = {}
    if index:
        try:
            with np.load(d / ARRAYS, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"{d / ARRAYS}: unreadable ({exc})") from exc
    try:
        shared = {k: spec["same_as"] for k, spec in index.items() if "same_as" in spec}
    except TypeError as exc:
        raise TraceFormatError(f"{d / MANIFEST}: malformed array index ({exc!r})") from exc
    stored = set(index) - set(shared)
    if set(arrays) != stored:
        raise TraceFormatError(f"{d}: arrays.npz keys differ from the manifest "
                               f"({len(stored ^ set(arrays))} keys differ)")
    for k, target in shared.items():
        if target not in arrays:
            raise TraceFormatError(f"{d / MANIFEST}: array {k!r} is the same as {target!r}, which is not stored")
        arrays[k] = arrays[target]
    for k, spec in index.items():
        if list(arrays[k].shape) != spec["shape"] or str(arrays[k].dtype) != spec["dtype"]:
            raise TraceFormatError(f"{d}: array {k!r} is {arrays[k].dtype}{list(arrays[k].shape)}, "
                                   f"manifest says {spec['dtype']}{spec['shape']}")
    return Trace(meta=doc["meta"], calls=calls, params=params, modules=modules, arrays=arrays,
                 stats=stats, stages=doc.get("stages", {}))


def write_trace_set(traces: dict[str, Trace], root: str | os.PathLike[str],
                    extra: dict[str, Any] | None = None,
                    weights: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    """Write one trace per state under ``root`` plus ``index.json``; atomic as a whole.

    ``weights[state]`` (torch name -> array) goes to ``ROOT/<state>/weights.npz`` so that a capture
    in another process can load exactly these weights (:func:`read_weights`).
    """
    frameworks = {t.meta.get("framework") for t in traces.values()}
    with atomic_dir(root) as tmp:
        for state, trace in traces.items():
            (tmp / state).mkdir()
            _write_into(trace, tmp / state)
            if weights and state in weights:
                with open(tmp / state / WEIGHTS, "wb") as f:
                    np.savez(f, **weights[state])
        _dump({"trace_format": TRACE_FORMAT, "framework": sorted(f for f in frameworks if f),
               "states": list(traces), **(extra or {})}, tmp / INDEX)
    return Path(root)


def read_trace_set(root: str | os.PathLike[str]) -> dict[str, Trace]:
    """``{state: Trace}`` from a trace set, or from a single trace directory."""
    r = Path(root)
    if is_trace_dir(r):
        t = read_trace(r)
        return {t.state or "default": t}
    try:
        doc = json.loads((r / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TraceFormatError(f"{r}: neither a trace ({MANIFEST}) nor a trace set ({INDEX})") from exc
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{r / INDEX}: not valid JSON ({exc})") from exc
    _check_format(doc, r)
    return {state: read_trace(r / state) for state in doc["states"]}


def read_weights(root: str | os.PathLike[str], state: str) -> dict[str, np.ndarray]:
    """The torch weights a trace set stored for ``state``."""
    path = Path(root) / state / WEIGHTS
    if not path.is_file() and (Path(root) / WEIGHTS).is_file():
        path = Path(root) / WEIGHTS
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise TraceFormatError(f"{path}: no stored weights for state {state!r} "
                               "(capture the torch side first)") from exc
