"""Error metrics for one pair of tensors (reference vs port), no framework import.

Numerical care as Polygraphy does it: both sides are cast up to float64 before subtracting, an
epsilon stands in where the reference is all zero, NaN never compares equal, and a shape mismatch
fails instead of being broadcast. Every sum accumulates in float64. The all-finite case (almost every
tensor) takes one fused pass over the pair (:mod:`aligner.reductions`: a compiled kernel where a C
compiler exists, else chunked numpy); NaN, Inf and overflow take the exact masked path below. When
only :class:`~aligner.records.TensorStats` exist (stats-only capture), :func:`compare_stats` gives
lower bounds from the summaries.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from aligner.reductions import ErrorSums, error_sums, pair_sums
from aligner.records import TensorStats

__all__ = ["EPS", "Tensor", "TensorMetrics", "compare_arrays", "compare_stats", "rel_error", "rel_l2_error",
           "measure", "relative", "relative_l2", "absmax"]

# A compared tensor: the array itself, or only its summary (stats-only capture).
Tensor = np.ndarray | TensorStats

# Stands in for max|ref| when the reference is exactly zero, so rel stays finite and a non-zero
# port against an all-zero reference reads as a huge relative error instead of a division by zero.
EPS = 1e-30


@dataclass(frozen=True)
class TensorMetrics:
    """How far ``port`` is from ``ref``; every error is in float64.

    ``rel`` is ``max|port-ref| / max|ref|`` (max-norm relative). ``frac_close`` and ``required_atol``
    are elementwise with the ``rtol``/``atol`` the comparison was asked about. In stats-only mode
    ``max_abs``/``rel`` are lower bounds and ``cosine``/``frac_close`` are None.
    """
    shape_ref: tuple[int, ...]
    shape_port: tuple[int, ...]
    max_abs: float
    rel: float
    mean_abs: float | None
    cosine: float | None
    frac_close: float | None
    required_atol: float | None          # smallest atol for which every element passes with rtol
    ref_absmax: float                    # max |ref| over finite elements (the scale of rel)
    nan_ref: int
    nan_port: int
    inf_ref: int
    inf_port: int
    zero_frac_ref: float
    zero_frac_port: float
    rtol: float
    atol: float
    stats_only: bool = False
    exact: bool = False                  # bit-identical (stats-only: same fingerprint)
    # ||port-ref||_2 / ||ref||_2: robust to a few displaced elements (float32 max-pool argmax flips at
    # near-ties move a gradient to another position); what the gradient noise floor is judged on
    rel_l2: float | None = None

    @property
    def shape_ok(self) -> bool:
        return self.shape_ref == self.shape_port

    @property
    def nan_inf_ok(self) -> bool:
        """No NaN anywhere, and Inf only where the reference has the same count."""
        return self.nan_ref == 0 and self.nan_port == 0 and self.inf_ref == self.inf_port

    @property
    def finite(self) -> bool:
        return math.isfinite(self.max_abs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape_ref"], d["shape_port"] = list(self.shape_ref), list(self.shape_port)
        return d


def _numeric(*arrays: np.ndarray) -> bool:
    """Arrays the fused reductions take (float, int, unsigned, bool)."""
    return all(a.dtype.kind in "fiub" for a in arrays)


def _relative(ref: np.ndarray, port: np.ndarray, from_sums: Callable[[ErrorSums], float],
              exact: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """A relative error of two arrays: inf on shape mismatch, 0 when empty, from the fused sums when all
    finite, else ``exact`` on float64 copies."""
    r, p = np.asarray(ref), np.asarray(port)
    if r.shape != p.shape:
        return math.inf
    if r.size == 0:
        return 0.0
    s = error_sums(r, p) if _numeric(r, p) else None
    if s is not None:
        return from_sums(s)
    return exact(r.astype(np.float64, copy=False), p.astype(np.float64, copy=False))


def rel_error(ref: np.ndarray, port: np.ndarray) -> float:
    """``max|port-ref| / max|ref|`` in float64; inf on shape mismatch, NaN or Inf disagreement."""
    return _relative(ref, port, lambda s: s.max_abs / (s.ref_absmax if s.ref_absmax > 0 else EPS), _rel_exact)


def _rel_exact(r: np.ndarray, p: np.ndarray) -> float:
    diff = _abs_diff(r, p)
    if not np.all(np.isfinite(diff)):
        return math.inf
    scale = absmax(r)
    return float(diff.max()) / (scale if scale > 0 else EPS)


def _abs_diff(r: np.ndarray, p: np.ndarray) -> np.ndarray:
    """|p-r| with matching infinities counted as 0 and any NaN as inf (NaN never passes)."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(p - r)
    same_inf = np.isinf(r) & (r == p)
    if same_inf.any():
        diff = np.where(same_inf, 0.0, diff)
    nan = np.isnan(diff)
    if nan.any():
        diff = np.where(nan, np.inf, diff)
    return diff


def compare_arrays(ref: np.ndarray, port: np.ndarray, *, rtol: float = 0.0,
                   atol: float = 0.0) -> TensorMetrics:
    """All metrics of ``port`` against ``ref``; elementwise closeness is ``|d| <= atol + rtol*|ref|``."""
    r0, p0 = np.asarray(ref), np.asarray(port)
    if r0.shape == p0.shape and r0.size and _numeric(r0, p0):
        # the common case, all finite: one fused pass (aligner.reductions; benchmarks/results/
        # compare_throughput.md); the whole-array passes below remain for NaN/Inf/overflow (same numbers
        # up to summation order)
        s = pair_sums(r0, p0, rtol, atol)
        if s is not None:
            shape = tuple(int(x) for x in r0.shape)
            nr, np_ = math.sqrt(s.rr), math.sqrt(s.pp)
            cosine = 1.0 if (nr == 0.0 and np_ == 0.0) else (0.0 if (nr == 0.0 or np_ == 0.0)
                                                              else s.rp / nr / np_)
            return TensorMetrics(shape, shape, s.max_abs, s.max_abs / (s.ref_absmax if s.ref_absmax > 0 else EPS),
                                 s.sum_abs / s.n, cosine, s.close / s.n, max(s.required, 0.0), s.ref_absmax,
                                 nan_ref=0, nan_port=0, inf_ref=0, inf_port=0,
                                 zero_frac_ref=s.zeros_ref / s.n, zero_frac_port=s.zeros_port / s.n,
                                 rtol=rtol, atol=atol, exact=s.max_abs == 0.0,
                                 rel_l2=math.sqrt(s.dd) / (nr if nr > 0 else EPS))
    return _compare_masked(r0, p0, rtol, atol)


def _compare_masked(r0: np.ndarray, p0: np.ndarray, rtol: float, atol: float) -> TensorMetrics:
    """compare_arrays on whole float64 copies, with NaN/Inf masks where needed (and shape/size edge cases)."""
    r = r0.astype(np.float64, copy=False)
    p = p0.astype(np.float64, copy=False)
    # Almost every tensor is all-finite: then the NaN/Inf masks, counts and copies are skipped (about 40%
    # less time for a GOLD-YOLO comparison, same numbers: benchmarks/results/bench.md).
    finite_r = bool(np.isfinite(r).all())
    finite = finite_r and bool(np.isfinite(p).all())
    if finite:
        counts = dict(nan_ref=0, nan_port=0, inf_ref=0, inf_port=0)
    else:
        counts = dict(nan_ref=int(np.isnan(r).sum()), nan_port=int(np.isnan(p).sum()),
                      inf_ref=int(np.isinf(r).sum()), inf_port=int(np.isinf(p).sum()))
    counts.update(zero_frac_ref=float(np.count_nonzero(r == 0) / r.size) if r.size else 0.0,
                  zero_frac_port=float(np.count_nonzero(p == 0) / p.size) if p.size else 0.0)
    shape_r, shape_p = tuple(int(s) for s in r.shape), tuple(int(s) for s in p.shape)
    abs_r = np.abs(r) if finite_r else np.abs(np.where(np.isfinite(r), r, 0.0))
    scale = float(abs_r.max()) if r.size else 0.0
    if shape_r != shape_p:
        return TensorMetrics(shape_r, shape_p, math.inf, math.inf, None, None, 0.0, math.inf, scale,
                             rtol=rtol, atol=atol, rel_l2=math.inf, **counts)
    if r.size == 0:
        return TensorMetrics(shape_r, shape_p, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, rtol=rtol, atol=atol,
                             exact=True, rel_l2=0.0, **counts)
    if finite:
        diff = np.subtract(p, r)
        np.abs(diff, out=diff)
    else:
        diff = _abs_diff(r, p)
    max_abs = float(diff.max())
    rel = max_abs / (scale if scale > 0 else EPS)
    mean_abs = float(diff.mean())
    slack = rtol * abs_r
    frac_close = float(np.count_nonzero(diff <= atol + slack) / diff.size)
    required = float(np.max(diff - slack))
    exact = bool(np.array_equal(r0, p0, equal_nan=False)) if r0.dtype == p0.dtype else max_abs == 0.0
    return TensorMetrics(shape_r, shape_p, max_abs, rel, mean_abs, _cosine(r, p, finite), frac_close,
                         max(required, 0.0), scale, rtol=rtol, atol=atol, exact=exact,
                         rel_l2=_rel_l2(r, diff, finite), **counts)


def _rel_l2(r: np.ndarray, diff: np.ndarray, finite: bool) -> float:
    if not finite and not np.all(np.isfinite(diff)):
        return math.inf
    rr = r if finite else np.where(np.isfinite(r), r, 0.0)
    nr = float(np.sqrt(np.vdot(rr, rr)))
    nd = float(np.sqrt(np.vdot(diff, diff)))
    return nd / (nr if nr > 0 else EPS)


def rel_l2_error(ref: np.ndarray, port: np.ndarray) -> float:
    """``||port-ref||_2 / ||ref||_2`` in float64; inf on shape mismatch or non-finite difference."""
    return _relative(ref, port, lambda s: math.sqrt(s.dd) / (math.sqrt(s.rr) if s.rr > 0 else EPS),
                     lambda r, p: _rel_l2(r, _abs_diff(r, p), False))


def _cosine(r: np.ndarray, p: np.ndarray, finite: bool = False) -> float | None:
    """Cosine similarity over finite elements; 1.0 when both are zero, 0.0 when only one is.
    ``finite``: the caller knows both are all-finite (no mask, no copy)."""
    if finite:
        a, b = r.ravel(), p.ravel()
    else:
        ok = np.isfinite(r) & np.isfinite(p)
        a, b = r[ok].ravel(), p[ok].ravel()
    if a.size == 0:
        return None
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a / na, b / nb))


def compare_stats(ref: TensorStats, port: TensorStats, *, rtol: float = 0.0,
                  atol: float = 0.0) -> TensorMetrics:
    """Stats-only comparison: lower bounds on the error from the summaries of both tensors.

    ``|max a - max b|``, ``|min a - min b|`` and ``|mean a - mean b|`` are each <= ``max|a-b|``, and
    ``|l2 a - l2 b| / sqrt(n)`` too, so their maximum is a true lower bound on ``max_abs``: a
    stats-only row that fails would also fail with full tensors (the reverse is not guaranteed).
    """
    shape_r, shape_p = tuple(ref.shape), tuple(port.shape)
    counts = dict(nan_ref=ref.nan, nan_port=port.nan, inf_ref=ref.inf, inf_port=port.inf,
                  zero_frac_ref=ref.zero_frac, zero_frac_port=port.zero_frac)
    scale = max(abs(ref.min), abs(ref.max)) if math.isfinite(ref.min) else 0.0
    if shape_r != shape_p:
        return TensorMetrics(shape_r, shape_p, math.inf, math.inf, None, None, None, None, scale,
                             rtol=rtol, atol=atol, stats_only=True, rel_l2=math.inf, **counts)
    if ref.fingerprint == port.fingerprint and ref.dtype == port.dtype:
        return TensorMetrics(shape_r, shape_p, 0.0, 0.0, 0.0, None, None, 0.0, scale, rtol=rtol,
                             atol=atol, stats_only=True, exact=True, rel_l2=0.0, **counts)
    n = max(int(np.prod(shape_r)) if shape_r else 1, 1)
    bounds = [abs(ref.max - port.max), abs(ref.min - port.min), abs(ref.mean - port.mean),
              abs(ref.l2 - port.l2) / math.sqrt(n)]
    if ref.nan or port.nan or ref.inf != port.inf or not all(math.isfinite(b) for b in bounds):
        max_abs = math.inf
    else:
        max_abs = float(max(bounds))
    rel = max_abs / (scale if scale > 0 else EPS)
    required = max(max_abs - rtol * scale, 0.0) if math.isfinite(max_abs) else math.inf
    rel_l2 = abs(ref.l2 - port.l2) / (ref.l2 if ref.l2 > 0 else EPS) if math.isfinite(max_abs) else math.inf
    return TensorMetrics(shape_r, shape_p, max_abs, rel, None, None, None, required, scale,
                         rtol=rtol, atol=atol, stats_only=True, rel_l2=rel_l2, **counts)


# ---------------------------------------------------------------------------------------------
# either form of a tensor (array or stats-only summary)


def measure(ref: Tensor, port: Tensor, rtol: float, atol: float) -> TensorMetrics:
    """:func:`compare_arrays` when both are arrays, else :func:`compare_stats` on their summaries."""
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return compare_arrays(ref, port, rtol=rtol, atol=atol)
    rs = ref if isinstance(ref, TensorStats) else TensorStats.of(ref)
    ps = port if isinstance(port, TensorStats) else TensorStats.of(port)
    return compare_stats(rs, ps, rtol=rtol, atol=atol)


def relative(ref: Tensor, port: Tensor) -> float:
    """Max-norm relative error of either form (a lower bound from stats)."""
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return rel_error(ref, port)
    return measure(ref, port, 0.0, 0.0).rel


def relative_l2(ref: Tensor, port: Tensor) -> float:
    """L2 relative error of either form."""
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return rel_l2_error(ref, port)
    return float(measure(ref, port, 0.0, 0.0).rel_l2 or 0.0)


def absmax(t: Tensor | None) -> float:
    """Largest finite |value| of either form (0 for None or empty)."""
    if t is None:
        return 0.0
    if isinstance(t, TensorStats):
        vals = [abs(t.min), abs(t.max)]
        return max(v for v in vals if math.isfinite(v)) if any(math.isfinite(v) for v in vals) else 0.0
    a = np.asarray(t)
    if a.size == 0:
        return 0.0
    if a.dtype.kind in "fiub":
        lo, hi = float(a.min()), float(a.max())  # two passes in the stored dtype, no float64 copy
        if math.isfinite(lo) and math.isfinite(hi):
            return max(abs(lo), abs(hi))
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0
