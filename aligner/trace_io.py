"""Trace directories on disk: ``manifest.json`` + ``arrays.npz``, written atomically, version-checked.

Layout of one trace (one framework, one model state)::

    DIR/manifest.json   {"trace_format", "meta", "calls", "params", "modules", "stats", "stages", "arrays",
                         "files", "checksum"}
    DIR/arrays.npz      np.savez of Trace.arrays (keys as in records.py), read back as copy-on-write views of
                        the mapped file (no pickles; a member numpy would not store uncompressed is read normally)
    DIR/.aligner-output marker: the directory was written by the aligner and may be replaced

A capture of several states writes a *trace set*: ``ROOT/index.json`` (``{"trace_format", "framework",
"states": [...], "checksum"}``) and one trace directory per state, ``ROOT/<state>/``.

Integrity: ``files`` maps each array file of the directory to its fingerprint (format 4; sha256 in formats
1-3), checked before the arrays are mapped; ``checksum`` is the sha256 of the document's own canonical JSON without that
key; a trace whose bytes changed is refused, not read.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TraceFormatError
from .fsio import atomic_dir, read_json_bytes
from .reductions import bytes_fingerprint
from .records import CallRecord, FrozenBy, GradStatus, ModuleInfo, ParamInfo, ParamKind, TensorStats, Trace

__all__ = ["TRACE_FORMAT", "MANIFEST", "ARRAYS", "INDEX", "write_trace", "read_trace", "is_trace_dir",
           "write_trace_set", "read_trace_set", "open_trace_set", "read_weights", "WEIGHTS", "atomic_dir"]

# TRACE_FORMAT changelog:
#   1  first format: manifest (meta, calls, params, modules, stats, stages, array index) + arrays.npz;
#      trace sets as index.json + one directory per state.
#      Compatible additions (older traces still read, the new parts are simply absent there):
#      ``buf/<buffer>`` arrays (buffers after the forward), ``meta["init"]`` (fresh-model summaries for
#      the init check) and ``calls[].requires_grad`` (CallRecord default None).
#   2  an array stored under several keys (an alias record shares its target's array) is written once:
#      the other keys' index entries say ``"same_as": <key written>``. Format 1 traces are still read.
#   3  integrity and comparability: ``files`` (sha256 of arrays.npz and weights.npz), ``checksum`` (of the
#      manifest / index itself), ``meta["inputs_sha256"]`` and ``meta["weights_sha256"]`` (see
#      aligner/comparability.py). Formats 1 and 2 are still read, without these checks.
#   4  stats carry ``fingerprint`` (a positional 64-bit fingerprint of the bits, "fp1:<hex>") instead of
#      ``sha1``; an older trace's sha1 reads as fingerprint "sha1:<hex>", equal only to another sha1. ``files``
#      holds each array file's fingerprint ("fp1:<hex>:<tail bytes>:<length>", aligner.reductions.bytes_fingerprint)
#      instead of its sha256 (formats 1-3 are still checked by sha256).
TRACE_FORMAT = 4
READABLE_FORMATS = (1, 2, 3, 4)
_V3_KEYS = ("files", "checksum")
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
INDEX = "index.json"
WEIGHTS = "weights.npz"  # optional, in a state directory: the torch weights that state used


_CHUNK = 1 << 20


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


def _checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=True).encode()).hexdigest()


def _dump(obj: dict[str, Any], path: Path) -> None:
    doc = _jsonable(obj)
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n", encoding="utf-8")


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _file_fingerprint(path: Path) -> str:
    """Format 4's digest of an array file: :func:`aligner.reductions.bytes_fingerprint` of its bytes (the
    compiled kernel reads several GB/s; sha256, formats 1-3, about 1)."""
    if path.stat().st_size == 0:
        return bytes_fingerprint(np.zeros(0, np.uint8))
    return bytes_fingerprint(np.memmap(path, dtype=np.uint8, mode="r"))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> str:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return _file_fingerprint(path)


def _write_into(trace: Trace, d: Path, weights: dict[str, np.ndarray] | None = None) -> None:
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
    files = {ARRAYS: _savez(d / ARRAYS, {k: v for k, v in arrays.items() if same_as[k] == k})}
    if weights is not None:
        files[WEIGHTS] = _savez(d / WEIGHTS, weights)
    manifest = {
        "trace_format": TRACE_FORMAT,
        "meta": trace.meta,
        "calls": [asdict(c) for c in trace.calls],
        "params": [asdict(p) for p in trace.params],
        "modules": [asdict(m) for m in trace.modules],
        "stats": {k: asdict(s) for k, s in trace.stats.items()},
        "stages": trace.stages,
        "arrays": index,
        "files": files,
    }
    _dump(manifest, d / MANIFEST)


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write ``trace`` as a directory at ``path`` (replacing an earlier aligner output atomically)."""
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


def _read_doc(path: Path, what: str) -> dict[str, Any]:
    """A manifest or index: strict UTF-8 JSON object, known format, own checksum verified (format 3)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraceFormatError(f"{path.parent}: no {path.name} (not {what})") from None
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    doc = read_json_bytes(raw, str(path), TraceFormatError, allow_nan=True)
    if not isinstance(doc, dict):
        raise TraceFormatError(f"{path}: not {what}")
    _check_format(doc, path.parent)
    if doc["trace_format"] >= 3:
        if doc.get("checksum") != _checksum(doc):
            raise TraceFormatError(f"{path}: checksum mismatch (the file was changed or damaged)")
    elif any(k in doc for k in _V3_KEYS):
        raise TraceFormatError(f"{path}: claims trace format {doc['trace_format']} but has format-3 fields")
    return doc


def _verify_file(d: Path, doc: dict[str, Any], name: str) -> None:
    """Format 3: the array file's sha256 is the one the manifest recorded."""
    if doc["trace_format"] < 3:
        return
    files = doc.get("files")
    want = files.get(name) if isinstance(files, dict) else None
    if not isinstance(want, str):
        raise TraceFormatError(f"{d / MANIFEST}: no checksum recorded for {name}")
    try:
        got = _file_fingerprint(d / name) if want.startswith("fp1:") else _sha_file(d / name)
    except OSError as exc:
        raise TraceFormatError(f"{d / name}: unreadable ({exc.strerror or exc})") from None
    if got != want:
        raise TraceFormatError(f"{d / name}: checksum mismatch (the file was changed or damaged)")


# an .npy header (magic, length, dict) fits in this many bytes for any array a trace holds
_NPY_HEADER_MAX = 1 << 16
# everything numpy/zipfile raise on a damaged .npz
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, RuntimeError, MemoryError,
               struct.error)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, mapped from the file (copy-on-write: no read until used, no copy unless written);
    a member that cannot be mapped (compressed, or not a plain .npy) is read as numpy reads it."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            mapped = np.memmap(path, dtype=np.uint8, mode="c") if path.stat().st_size else None
            out: dict[str, np.ndarray] = {}
            for info in infos:
                name = info.filename.removesuffix(".npy")
                arr = _mapped_member(mapped, info) if mapped is not None else None
                if arr is None:
                    with zf.open(info) as member:
                        arr = np.lib.format.read_array(member, allow_pickle=False)
                out[name] = arr
            return out
    except _NPZ_ERRORS as exc:
        raise TraceFormatError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def _mapped_member(mapped: np.ndarray, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A stored (uncompressed) .npy member as a view of the mapped file; None when it is not one."""
    if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
        return None
    off = info.header_offset
    local = mapped[off:off + 30].tobytes()
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"member {info.filename}: no local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = off + 30 + name_len + extra_len
    head = io.BytesIO(mapped[start:start + min(info.file_size, _NPY_HEADER_MAX)].tobytes())
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0), (3, 0)):
        return None
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(head)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename}: object arrays are not read")
    data = start + head.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if head.tell() + nbytes != info.file_size or data + nbytes > mapped.size:
        raise ValueError(f"member {info.filename}: {info.file_size} bytes, header says {head.tell() + nbytes}")
    return np.ndarray(shape, dtype=dtype, buffer=mapped, offset=data, order="F" if fortran else "C")


def _stats(d: dict[str, Any]) -> TensorStats:
    d = dict(d)
    if "sha1" in d:  # formats 1-3
        d["fingerprint"] = f"sha1:{d.pop('sha1')}"
    return TensorStats(**{**d, "shape": tuple(d["shape"])})


def _records(doc: dict[str, Any]) -> tuple[list[CallRecord], list[ParamInfo], list[ModuleInfo],
                                           dict[str, TensorStats], dict[str, Any]]:
    calls = [CallRecord(**{**c, "shape": tuple(c["shape"]), "input_keys": tuple(c["input_keys"])})
             for c in doc["calls"]]
    params = [ParamInfo(**{**p, "shape": tuple(p["shape"]), "kind": ParamKind(p["kind"]),
                           "grad_status": GradStatus(p["grad_status"]),
                           "frozen_by": None if p["frozen_by"] is None else FrozenBy(p["frozen_by"])})
              for p in doc["params"]]
    modules = [ModuleInfo(**m) for m in doc["modules"]]
    stats = {k: _stats(s) for k, s in doc["stats"].items()}
    index = doc["arrays"]
    if not isinstance(doc["meta"], dict) or not isinstance(doc.get("stages", {}), dict) or not isinstance(index, dict):
        raise TypeError("meta, stages and arrays must be objects")
    return calls, params, modules, stats, index


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Load a trace directory; raises TraceFormatError on a missing/corrupt/other-version trace."""
    d = Path(path)
    doc = _read_doc(d / MANIFEST, "a trace directory")
    try:
        calls, params, modules, stats, index = _records(doc)
        shared = {k: spec["same_as"] for k, spec in index.items() if "same_as" in spec}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TraceFormatError(f"{d / MANIFEST}: malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
    arrays: dict[str, np.ndarray] = {}
    if index or doc["trace_format"] >= 3:
        _verify_file(d, doc, ARRAYS)
        arrays = _load_npz(d / ARRAYS)
    stored = set(index) - set(shared)
    if set(arrays) != stored:
        raise TraceFormatError(f"{d}: arrays.npz keys differ from the manifest "
                               f"({len(stored ^ set(arrays))} keys differ)")
    for k, target in shared.items():
        if not isinstance(target, str) or target not in arrays:
            raise TraceFormatError(f"{d / MANIFEST}: array {k!r} is the same as {target!r}, which is not stored")
        arrays[k] = arrays[target]
    for k, spec in index.items():
        if list(arrays[k].shape) != spec.get("shape") or str(arrays[k].dtype) != spec.get("dtype"):
            raise TraceFormatError(f"{d}: array {k!r} is {arrays[k].dtype}{list(arrays[k].shape)}, "
                                   f"manifest says {spec.get('dtype')}{spec.get('shape')}")
    return Trace(meta=doc["meta"], calls=calls, params=params, modules=modules, arrays=arrays,
                 stats=stats, stages=doc.get("stages", {}))


def write_trace_set(traces: dict[str, Trace], root: str | os.PathLike[str],
                    extra: dict[str, Any] | None = None,
                    weights: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    """Write one trace per state under ``root`` plus ``index.json``; atomic as a whole.

    ``weights[state]`` (torch name -> array) goes to ``ROOT/<state>/weights.npz`` so that a capture
    in another process can load exactly these weights (:func:`read_weights`).
    """
    for state in traces:
        _check_state_name(state, Path(root))
    frameworks = {t.meta.get("framework") for t in traces.values()}
    with atomic_dir(root) as tmp:
        for state, trace in traces.items():
            (tmp / state).mkdir()
            _write_into(trace, tmp / state, (weights or {}).get(state))
        _dump({"trace_format": TRACE_FORMAT, "framework": sorted(f for f in frameworks if f),
               "states": list(traces), **(extra or {})}, tmp / INDEX)
    return Path(root)


def _check_state_name(state: Any, where: Path) -> None:
    # a state names a sub-directory: a hostile index must not point outside the trace set
    if not isinstance(state, str) or not state or state in (".", "..") or "/" in state or "\\" in state \
            or "\x00" in state:
        raise TraceFormatError(f"{where}: invalid state name {str(state)[:40]!r}")


def _read_index(r: Path) -> dict[str, Any]:
    doc = _read_doc(r / INDEX, "a trace set")
    states, fws = doc.get("states"), doc.get("framework", [])
    if not isinstance(states, list) or len(set(map(str, states))) != len(states):
        raise TraceFormatError(f"{r / INDEX}: 'states' must be a list of distinct names")
    if not isinstance(fws, list) or not all(isinstance(f, str) for f in fws):
        raise TraceFormatError(f"{r / INDEX}: 'framework' must be a list of names")
    for s in states:
        _check_state_name(s, r / INDEX)
    return doc


def open_trace_set(root: str | os.PathLike[str]) -> tuple[str, dict[str, Callable[[], Trace]]]:
    """(framework, state -> loader of that state's trace) for a trace set or a single trace directory;
    the index is checked now, each state's trace when its loader runs (one state in memory at a time)."""
    r = Path(root)
    if is_trace_dir(r):
        t = read_trace(r)
        return str(t.meta.get("framework")), {t.state or "default": lambda: t}
    if not (r / INDEX).is_file():
        raise TraceFormatError(f"{r}: neither a trace ({MANIFEST}) nor a trace set ({INDEX})")
    doc = _read_index(r)
    fws = doc.get("framework") or [""]
    return str(fws[0]), {s: (lambda s=s: read_trace(r / s)) for s in doc["states"]}


def read_trace_set(root: str | os.PathLike[str]) -> dict[str, Trace]:
    """``{state: Trace}`` from a trace set, or from a single trace directory."""
    return {state: load() for state, load in open_trace_set(root)[1].items()}


def read_weights(root: str | os.PathLike[str], state: str) -> dict[str, np.ndarray]:
    """The torch weights a trace set stored for ``state`` (checksum verified)."""
    r = Path(root)
    d = r / state if (r / INDEX).is_file() or (r / state / MANIFEST).is_file() else r
    if d != r:
        _check_state_name(state, r)
    if not (d / WEIGHTS).is_file():
        raise TraceFormatError(f"{d / WEIGHTS}: no stored weights for state {state!r} "
                               "(capture the torch side first)")
    if (d / MANIFEST).is_file():
        _verify_file(d, _read_doc(d / MANIFEST, "a trace directory"), WEIGHTS)
    return _load_npz(d / WEIGHTS)
