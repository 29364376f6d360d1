"""Fused float64 reductions over one array or a pair of equally shaped arrays, in cache-sized chunks on a
thread pool.

The metrics of one tensor pair need about fifteen quantities (maxima, sums, dot products, closeness
counts). The compiled kernel (:mod:`aligner.fused_kernel`) gets them all in one pass that reads each
element once and keeps no temporaries; where no C compiler is available the same chunks are reduced by
numpy passes on cache-sized float64 copies (numpy releases the GIL inside its loops). Either way a tensor
is cut into the same 64 Ki-element chunks, blocks of chunks are spread over the cores, and the
per-chunk partials are combined in chunk order, so the numbers do not depend on the thread count or
scheduling, and the two paths agree up to the summation order inside a chunk (~1e-14 relative; maxima
and counts exactly).

Only the all-finite case is handled here: every function returns None when a sum of squares is not
finite (a NaN, an Inf or an overflow), and the caller falls back to its exact masked path.
:func:`array_stats` also takes a positional fingerprint of the bits in the same pass (:func:`fingerprint`).
"""
from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from aligner import fused_kernel

__all__ = ["PairSums", "ErrorSums", "ArrayStats", "pair_sums", "error_sums", "array_stats", "fingerprint",
           "bytes_fingerprint", "CHUNK", "backend", "set_backend"]

log = logging.getLogger(__name__)

# 64 Ki float64 = 512 KiB per scratch buffer: fastest of 16/64/256 Ki on the 2-core machine
# (benchmarks/results/notes.md: 178 M float32 elements, 1.26 s vs 1.88 s and 1.54 s).
CHUNK = 1 << 16
_WORKERS = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()


@dataclass(frozen=True)
class PairSums:
    """Everything :func:`aligner.metrics.compare_arrays` needs, from one fused pass over (ref, port)."""
    n: int
    zeros_ref: int
    zeros_port: int
    ref_absmax: float
    max_abs: float             # max |port - ref|
    sum_abs: float             # sum |port - ref|
    rr: float                  # sum ref^2
    pp: float                  # sum port^2
    rp: float                  # sum ref * port
    dd: float                  # sum (port - ref)^2
    required: float            # max(|d| - rtol |ref|)
    close: int                 # count(|d| <= atol + rtol |ref|)


@dataclass(frozen=True)
class ErrorSums:
    """The two relative errors' ingredients: max |d|, max |ref|, sum d^2, sum ref^2."""
    max_abs: float
    ref_absmax: float
    dd: float
    rr: float


@dataclass(frozen=True)
class ArrayStats:
    """Summary of one all-finite array (float64): what :class:`aligner.records.TensorStats` stores."""
    min: float
    max: float
    mean: float
    std: float
    l2: float
    zeros: int


# ---------------------------------------------------------------------------------------------
# numpy path: per chunk, passes over float64 copies in per-thread scratch buffers


def _scratch() -> tuple[np.ndarray, ...]:
    b = getattr(_local, "buffers", None)
    if b is None:  # per thread: reused for every chunk (fresh large allocations fault their pages in)
        b = _local.buffers = (np.empty(CHUNK), np.empty(CHUNK), np.empty(CHUNK), np.empty(CHUNK),
                              np.empty(CHUNK, dtype=bool))
    return b


def _pair_chunk(r: np.ndarray, p: np.ndarray, rtol: float, atol: float) -> tuple[float, ...]:
    n = r.size
    R, P, D, S, B = (x[:n] for x in _scratch())
    np.copyto(R, r)
    np.copyto(P, p)
    zr, zp = n - np.count_nonzero(R), n - np.count_nonzero(P)
    np.subtract(P, R, out=D)
    np.abs(D, out=D)
    np.abs(R, out=S)
    amax, dmax, dsum = S.max(), D.max(), D.sum()
    rr, pp, rp, dd = R.dot(R), P.dot(P), R.dot(P), D.dot(D)
    np.multiply(S, rtol, out=S)          # slack = rtol |ref|
    np.subtract(D, S, out=R)             # |d| - slack (R is free now)
    req = R.max()
    np.add(S, atol, out=S)
    close = np.count_nonzero(np.less_equal(D, S, out=B))
    return zr, zp, amax, dmax, dsum, rr, pp, rp, dd, req, close


def _stats_chunk(x: np.ndarray) -> tuple[float, ...]:
    n = x.size
    X, T = (b[:n] for b in _scratch()[:2])
    np.copyto(X, x)
    total = X.sum()
    np.subtract(X, total / n, out=T)     # deviations from the chunk mean: a stable variance (Chan et al.)
    return n, X.min(), X.max(), total, T.dot(T), X.dot(X), n - np.count_nonzero(X)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="aligner-reduce")
    return _pool


def _map(fn: Callable[..., tuple[float, ...]], arrays: tuple[np.ndarray, ...], *extra: float
         ) -> list[tuple[float, ...]]:
    flat = [a.reshape(-1) for a in arrays]
    n = flat[0].size
    spans = [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]

    def run(span: tuple[int, int]) -> tuple[float, ...]:
        a, b = span
        with np.errstate(all="ignore"):  # NaN/Inf/overflow are detected from the sums, then redone exactly
            return fn(*(f[a:b] for f in flat), *extra)

    if len(spans) == 1 or _WORKERS == 1:
        return [run(s) for s in spans]
    return list(_get_pool().map(run, spans))


def _numpy_pair(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> Sequence[Sequence[float]]:
    return list(zip(*_map(_pair_chunk, (ref, port), rtol, atol)))


def _error_chunk(r: np.ndarray, p: np.ndarray) -> tuple[float, ...]:
    n = r.size
    R, P, D = (x[:n] for x in _scratch()[:3])
    np.copyto(R, r)
    np.copyto(P, p)
    np.subtract(P, R, out=D)
    np.abs(D, out=D)
    np.abs(R, out=P)
    return D.max(), P.max(), D.dot(D), R.dot(R)


def _numpy_stats(c: np.ndarray) -> Sequence[Sequence[float]]:
    return list(zip(*_map(_stats_chunk, (c,))))


# ---------------------------------------------------------------------------------------------
# compiled path: one call per block range (GIL released), per-chunk partials in a (chunks, fields) array

_KERNEL_TYPES = {np.dtype(np.float32): "f", np.dtype(np.float64): "d"}
# below this many elements one thread runs the whole kernel call (< ~1 ms): waking the pool cost more than it
# saved on the shared 2-core machine (1e5 float32 pairs: 0.76 G/s inline, 0.54 G/s on two threads)
_PARALLEL_MIN = 1 << 19
_backend: str | None = None      # "c" or "numpy"; resolved at first use
_backend_lock = threading.Lock()


def _run_blocks(fn: Any, arrays: tuple[np.ndarray, ...], extra: tuple[float, ...], fields: int,
                base: bool = False) -> np.ndarray:
    """Per-chunk partials transposed to (fields, chunks); large arrays in block ranges on the pool. ``base``:
    the kernel also takes the index of its first element (the fingerprint is positional)."""
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    n = flat[0].size
    chunks = -(-n // CHUNK)
    out = np.empty((chunks, fields))
    # whole chunks per thread: the partials are the same for any thread count
    per = -(-chunks // _WORKERS) if n >= _PARALLEL_MIN else chunks

    def run(k0: int) -> None:
        s, e = k0 * CHUNK, min((k0 + per) * CHUNK, n)
        fn(*(f.ctypes.data + s * f.itemsize for f in flat), e - s, CHUNK, *((s,) if base else ()), *extra,
           out[k0:].ctypes.data)

    if per >= chunks:
        run(0)
        return out.T
    for f in [_get_pool().submit(run, k) for k in range(0, chunks, per)]:
        f.result()
    return out.T


def _kernel_pair(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> Sequence[Sequence[float]] | None:
    tr, tp = _KERNEL_TYPES.get(ref.dtype), _KERNEL_TYPES.get(port.dtype)
    if tr is None or tp is None or backend() != "c":
        return None
    lib = fused_kernel.load()
    return _run_blocks(getattr(lib, f"pair_{tr}{tp}"), (ref, port), (float(rtol), float(atol)),
                       fused_kernel.PAIR_FIELDS)


def _probe_agrees() -> bool:
    """The built kernel against the numpy path on a small array with zeros and a ragged tail: a
    miscompiled or wrongly built library is never used."""
    rng = np.random.default_rng(0)
    r = rng.standard_normal(CHUNK + 37)
    r[::5] = 0.0
    p = r + 1e-3 * rng.standard_normal(r.size)
    lib = fused_kernel.load()
    for a, b in ((r, p), (r.astype(np.float32), p.astype(np.float32)), (r.astype(np.float32), p)):
        fast = _run_blocks(getattr(lib, f"pair_{_KERNEL_TYPES[a.dtype]}{_KERNEL_TYPES[b.dtype]}"), (a, b),
                           (1e-3, 1e-6), fused_kernel.PAIR_FIELDS)
        slow = np.array(_numpy_pair(a, b, 1e-3, 1e-6), dtype=np.float64)
        exact = [0, 1, 2, 3, 9, 10]   # counts and maxima
        if not (np.array_equal(fast[exact], slow[exact]) and np.allclose(fast, slow, rtol=1e-12, atol=0)):
            return False
        fast = _run_blocks(getattr(lib, f"stats_{_KERNEL_TYPES[a.dtype]}"), (a,), (), fused_kernel.STATS_FIELDS,
                           base=True)
        slow = np.array(_numpy_stats(a), dtype=np.float64)
        if not (np.array_equal(fast[[0, 1, 2, 6]], slow[[0, 1, 2, 6]])
                and np.allclose(fast[:7], slow, rtol=1e-12, atol=1e-12 * float(np.abs(slow[3]).max()))
                and _fingerprint_of(fast[7]) == _numpy_fingerprint(a)):
            return False
    return True


def backend() -> str:
    """``"c"`` when the compiled kernel is in use, else ``"numpy"``."""
    global _backend
    resolved = _backend
    if resolved is not None:  # the common case, without the lock (called once per captured tensor)
        return resolved
    with _backend_lock:
        if _backend is None:
            _backend = "numpy"
            if fused_kernel.load() is not None:
                with np.errstate(all="ignore"):
                    ok = _probe_agrees()
                if ok:
                    _backend = "c"
                else:
                    log.warning("aligner: the compiled reduction kernel disagrees with numpy; using numpy")
        return _backend


def set_backend(name: str) -> str:
    """Force ``"numpy"`` or ``"c"`` (only where the kernel loads) or re-resolve with ``"auto"``; returns the
    previous backend. For benchmarks and equivalence tests."""
    global _backend
    previous = backend()
    if name == "c" and fused_kernel.load() is None:
        raise RuntimeError("the compiled reduction kernel is not available on this machine")
    with _backend_lock:
        _backend = None if name == "auto" else name
    return previous


# ---------------------------------------------------------------------------------------------
# combined results


def pair_sums(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> PairSums | None:
    """Fused metrics ingredients of two non-empty, equally shaped arrays; None if not all finite."""
    col = _kernel_pair(ref, port, rtol, atol)
    if col is None:
        col = _numpy_pair(ref, port, rtol, atol)
    out = PairSums(n=int(ref.size), zeros_ref=int(sum(col[0])), zeros_port=int(sum(col[1])),
                   ref_absmax=float(max(col[2])), max_abs=float(max(col[3])), sum_abs=float(math.fsum(col[4])),
                   rr=float(math.fsum(col[5])), pp=float(math.fsum(col[6])), rp=float(math.fsum(col[7])),
                   dd=float(math.fsum(col[8])), required=float(max(col[9])), close=int(sum(col[10])))
    # NaN and Inf propagate into the sums of squares, so do overflows of huge finite values
    if not all(math.isfinite(v) for v in (out.rr, out.pp, out.dd)):
        return None
    return out


def error_sums(ref: np.ndarray, port: np.ndarray) -> ErrorSums | None:
    """max |d|, max |ref|, sum d^2, sum ref^2 of two non-empty, equally shaped arrays; None if not all finite."""
    fast = _kernel_pair(ref, port, 0.0, 0.0)   # the kernel's extra sums cost no extra memory traffic
    if fast is not None:
        col = [fast[3], fast[2], fast[8], fast[5]]
    else:
        col = list(zip(*_map(_error_chunk, (ref, port))))
    out = ErrorSums(float(max(col[0])), float(max(col[1])), float(math.fsum(col[2])), float(math.fsum(col[3])))
    if not (math.isfinite(out.dd) and math.isfinite(out.rr) and math.isfinite(out.max_abs)):
        return None
    return out


def _fp_text(total: int) -> str:
    return f"fp1:{total:016x}"


def _fingerprint_of(bits: np.ndarray) -> str:
    """The fingerprint string from per-chunk sums (uint64 bit patterns held in float64 slots)."""
    return _fp_text(int(np.ascontiguousarray(bits).view(np.uint64).sum(dtype=np.uint64)) if bits.size else 0)


def _numpy_fingerprint(c: np.ndarray) -> str:
    """The kernel's fingerprint (see FINGERPRINT in :mod:`aligner.fused_kernel`) by numpy, for any dtype: each
    element's bits zero-extended to 64, mixed with its position, summed mod 2^64 (uint64 arithmetic wraps)."""
    flat = np.ascontiguousarray(c).reshape(-1)
    words = flat.view(f"u{flat.itemsize}") if flat.itemsize in (1, 2, 4, 8) else flat.view(np.uint8)
    total = np.uint64(0)
    step, mul = np.uint64(fused_kernel.FP_STEP), np.uint64(fused_kernel.FP_MUL)
    with np.errstate(over="ignore"):
        for s in range(0, words.size, CHUNK):
            w = words[s:s + CHUNK].astype(np.uint64)
            x = w + np.arange(s, s + w.size, dtype=np.uint64) * step
            x ^= x >> np.uint64(29)
            x *= mul
            x ^= x >> np.uint64(32)
            total += x.sum(dtype=np.uint64)
    return _fp_text(int(total))


def bytes_fingerprint(data: np.ndarray) -> str:
    """The fingerprint of a byte buffer (a uint8 array, e.g. a memory-mapped file): its 32-bit words as
    :func:`fingerprint` takes them, then the tail bytes and the length (integrity checks of trace files)."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    n = raw.size - raw.size % 4
    words = raw[:n].view(np.uint32)
    if words.size and backend() == "c":
        digest = _fingerprint_of(_run_blocks(fused_kernel.load().fingerprint_u32, (words,), (), 1, base=True)[0])
    else:
        digest = _numpy_fingerprint(words)
    return f"{digest}:{raw[n:].tobytes().hex()}:{raw.size}"


def fingerprint(c: np.ndarray) -> str:
    """A cheap positional fingerprint of an array's bits (bit-exact identity, not a cryptographic hash): equal
    bits give equal fingerprints; one changed or moved element always changes it."""
    t = _KERNEL_TYPES.get(c.dtype)
    if t is not None and c.size and backend() == "c":
        return array_stats(c)[1]
    return _numpy_fingerprint(c)


def array_stats(c: np.ndarray) -> tuple[ArrayStats | None, str]:
    """(stats, fingerprint) of a non-empty C-contiguous numeric array from one pass; stats None if not all
    finite."""
    t = _KERNEL_TYPES.get(c.dtype)
    if t is not None and c.size <= CHUNK and backend() == "c":
        return _one_block_stats(c, t)
    if t is not None and backend() == "c":
        col = _run_blocks(getattr(fused_kernel.load(), f"stats_{t}"), (c,), (), fused_kernel.STATS_FIELDS, base=True)
        digest = _fingerprint_of(col[7])
    else:
        col = _numpy_stats(c)
        digest = _numpy_fingerprint(c)
    n = int(sum(col[0]))
    total = math.fsum(col[3])
    mean = total / n
    m2 = math.fsum(col[4]) + math.fsum(k * (s / k - mean) ** 2 for k, s in zip(col[0], col[3]))
    sq = math.fsum(col[5])
    if not all(math.isfinite(v) for v in (total, m2, sq)):
        return None, digest
    return ArrayStats(float(min(col[1])), float(max(col[2])), mean, math.sqrt(max(m2, 0.0) / n), math.sqrt(sq),
                      int(sum(col[6]))), digest


def _one_block_stats(c: np.ndarray, t: str) -> tuple[ArrayStats | None, str]:
    """:func:`array_stats` of an array of one chunk: one kernel call, no pool, no combining (most captured
    tensors are small, and there the Python around the kernel was most of the cost)."""
    out = np.empty(fused_kernel.STATS_FIELDS)
    getattr(fused_kernel.load(), f"stats_{t}")(c.ctypes.data, c.size, CHUNK, 0, out.ctypes.data)
    digest = _fp_text(int(out[7:].view(np.uint64)[0]))
    n, lo, hi, total, m2, sq, zeros = out[:7].tolist()
    if not (math.isfinite(total) and math.isfinite(m2) and math.isfinite(sq)):
        return None, digest
    return ArrayStats(lo, hi, total / n, math.sqrt(max(m2, 0.0) / n), math.sqrt(sq), int(zeros)), digest
