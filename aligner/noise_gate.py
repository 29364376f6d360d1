"""Whether a float32 state needs its float64 reference at all.

With the noise floor ``nf = err(ref32, ref64)`` a tensor passes iff ``err(port, ref64) <= max(k*nf, rtol)``, and
``err(port, ref64) <= nf + err(port, ref32)`` (the two references' norms agree to float32 rounding). So a port
tensor within ``rtol/2`` of the float32 reference passes whatever the floor is, for any multiplier k >= 2: if
``nf <= rtol/2`` the sum is at most rtol, else it is below ``2*nf``. A tensor within the absolute floor passes
either way, and the loss and assigner bounds only widen with the floor. When every tensor of a state is that
close, the float64 reference cannot change a verdict and is not captured. (A model with conv biases in front of
train-mode BatchNorm always needs it: those biases' gradients are mathematically zero, and only the noise floor
tells their rounding from a bug.)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aligner.analysis_records import Comparison, Judgement, Kind, NoiseReference, StateTraces
from aligner.compare import compare_rows, scales_of
from aligner.match import MatchResult
from aligner.records import Severity
from aligner.rules.loss import loss_findings
from aligner.rules.pair import PairRules
from aligner.sides import Side
from aligner.tolerances import Tolerances

__all__ = ["floor_not_needed"]


def floor_not_needed(st: StateTraces, tol: Tolerances, matches: MatchResult, sides: tuple[Side, Side],
                     mapping: Mapping[str, str], rules: PairRules, *, memo: dict[tuple[Any, ...], Any] | None = None,
                     scales: dict[str, float] | None = None) -> list[Comparison] | None:
    """The state's rows judged without the float64 reference when none of its verdicts can depend on it (each
    passing row says why: within half its bound, or within the absolute floor); None when the reference is
    needed (or when this cannot be shown: statistics only, optimizer steps, multipliers below 2). ``memo`` and
    ``scales`` as in :func:`aligner.compare.compare_rows`: a pass with the floor that follows reuses the metrics."""
    none = NoiseReference(trace=None, lower=False, mismatch=[])
    scales = scales if scales is not None else scales_of(st.torch)
    meta_t, meta_j = st.torch.meta, st.jittor.meta
    if (not tol.noise_floor or str(meta_t.get("dtype") or "float32") != "float32" or not meta_t.get("full", True)
            or not meta_j.get("full", True) or meta_t.get("steps") or meta_j.get("steps")
            or min(tol.multiplier, tol.small_multiplier) < 2):
        return None
    rows = compare_rows(st, tol, none, matches, sides, dict(mapping), memo=memo, scales=scales, strict=True)
    out: list[Comparison] = []
    for r in rows:
        if r.missing is not None:  # one side has no value: judged without the floor in any case
            out.append(r)
            continue
        m = r.metrics
        if not (m.shape_ok and m.nan_inf_ok):
            return None
        bk = Kind.FORWARD if r.torch_key.startswith("buf/") else r.kind
        l2 = tol.norm(bk) == "l2"
        err = m.rel_l2 if l2 else m.rel
        half = tol.rtol(bk, r.torch_name) / 2
        atol = tol.atol(bk, scales.get(r.kind.value, 0.0))
        if err is not None and math.isfinite(err) and err <= half:
            jd = Judgement(ok=True, metric="rel_l2" if l2 else "rel", value=float(err), bound=half)
        elif m.max_abs <= atol:
            jd = Judgement(ok=True, metric="max_abs", value=m.max_abs, bound=atol)
        else:
            return None
        out.append(_rejudged(r, jd))
    # the loss and assigner bounds are max(own bound, k * the reference's own error): stricter without it
    if any(f.severity == Severity.ERROR for f in loss_findings(st, tol)[0]):
        return None
    if rules.assigner and any(f.severity == Severity.ERROR for f in rules.assigner(st, tol)[0]):
        return None
    return out


def _rejudged(row: Comparison, jd: Judgement) -> Comparison:
    return replace(row, judgement=jd, rel_fp64=None)
