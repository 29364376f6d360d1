"""Fused float64 reductions over one array or a pair of equally shaped arrays, in cache-sized chunks on a
thread pool.

The metrics of one tensor pair need about fifteen passes (casts, difference, maxima, sums, dot
products, closeness counts). Done on whole float64 copies each pass streams the tensor through memory
again; done on 64 Ki-element chunks the casts and temporaries stay in cache, and the chunks of a large
tensor are spread over the cores (numpy releases the GIL inside its loops). Partial results are
combined in chunk order, so the numbers do not depend on the thread count or scheduling.

Only the all-finite case is handled here: every function returns None when a sum of squares is not
finite (a NaN, an Inf or an overflow), and the caller falls back to its exact masked path.
:func:`array_stats` also hashes the bytes (sha1) on another core while the chunks are reduced.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["PairSums", "ErrorSums", "ArrayStats", "pair_sums", "error_sums", "array_stats", "sha1_of", "CHUNK"]

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


def _error_chunk(r: np.ndarray, p: np.ndarray) -> tuple[float, ...]:
    n = r.size
    R, P, D = (x[:n] for x in _scratch()[:3])
    np.copyto(R, r)
    np.copyto(P, p)
    np.subtract(P, R, out=D)
    np.abs(D, out=D)
    np.abs(R, out=P)
    return D.max(), P.max(), D.dot(D), R.dot(R)


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


def pair_sums(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> PairSums | None:
    """Fused metrics ingredients of two non-empty, equally shaped arrays; None if not all finite."""
    parts = _map(_pair_chunk, (ref, port), rtol, atol)
    col = list(zip(*parts))
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
    col = list(zip(*_map(_error_chunk, (ref, port))))
    out = ErrorSums(float(max(col[0])), float(max(col[1])), float(math.fsum(col[2])), float(math.fsum(col[3])))
    if not (math.isfinite(out.dd) and math.isfinite(out.rr) and math.isfinite(out.max_abs)):
        return None
    return out


def sha1_of(c: np.ndarray) -> str:
    """sha1 of a C-contiguous array's bytes, hashed in place."""
    return hashlib.sha1(memoryview(c).cast("B") if c.size else c.tobytes()).hexdigest()


# below this many bytes the hash is computed inline: handing it to another thread costs more
_HASH_ASYNC_BYTES = 1 << 20


def array_stats(c: np.ndarray) -> tuple[ArrayStats | None, str]:
    """(stats, sha1) of a non-empty C-contiguous numeric array; stats None if not all finite.

    hashlib releases the GIL on large buffers, so the hash runs on a pool thread beside the chunks."""
    pending = _get_pool().submit(sha1_of, c) if (c.nbytes >= _HASH_ASYNC_BYTES and _WORKERS > 1) else None
    col = list(zip(*_map(_stats_chunk, (c,))))
    digest = pending.result() if pending is not None else sha1_of(c)
    n = int(sum(col[0]))
    total = math.fsum(col[3])
    mean = total / n
    m2 = math.fsum(col[4]) + math.fsum(k * (s / k - mean) ** 2 for k, s in zip(col[0], col[3]))
    sq = math.fsum(col[5])
    if not all(math.isfinite(v) for v in (total, m2, sq)):
        return None, digest
    return ArrayStats(float(min(col[1])), float(max(col[2])), mean, math.sqrt(max(m2, 0.0) / n), math.sqrt(sq),
                      int(sum(col[6]))), digest
