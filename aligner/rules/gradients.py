"""Gradient rules of one state: per-parameter gradient status against the reference's own pattern there
(unreachable, different, extra, vanishing, frozen), and the explained sparse pattern both share."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aligner.analysis_records import Comparison, Finding, Kind
from aligner.match import rename
from aligner.records import FindingType, FrozenBy, GradStatus, ParamInfo, Severity, Trace
from aligner.rules.common import listed, place, trainable, where
from aligner.rules.messages import render

__all__ = ["grad_pattern", "gradient_findings", "frozen_finding", "sparsity_finding", "VANISHING_RATIO"]

T, S = FindingType, Severity

# A port gradient this many times smaller than the reference's (both non-zero) is "vanishing".
VANISHING_RATIO = 1e-3


def grad_pattern(torch: Trace, jittor: Trace, rows: list[Comparison] | None = None,
                 mapping: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Counts per gradient status over the reference's trainable tensors, both sides, per top module.

    ``same`` is True when every tensor has the same status on both sides, where a reference
    ``nonzero`` against a port ``zero`` (or the reverse) counts as the same when the value row
    passed (round-off of a mathematically zero gradient).
    """
    mapping = mapping or {}
    jp = {p.name: p for p in jittor.params}
    ok = {r.torch_name: r.ok for r in rows or [] if r.kind == Kind.PARAM_GRAD}
    keys = ("nonzero", "zero", "unreachable", "frozen")
    counts = {"torch": dict.fromkeys(keys, 0), "jittor": dict.fromkeys(keys, 0)}
    per_module: dict[str, dict[str, list[int]]] = {}
    same = True
    for p in trainable(torch):
        q = jp.get(rename(p.name, mapping) or p.name)
        ts = p.grad_status
        js = q.grad_status if q is not None else GradStatus.NONE
        top = p.name.split(".")[0] if "." in p.name else ""
        pm = per_module.setdefault(top, {"torch": [0, 0, 0], "jittor": [0, 0, 0]})
        for side, s in (("torch", ts), ("jittor", js)):
            if s.value in counts[side]:
                counts[side][s.value] += 1
            idx = {"nonzero": 0, "zero": 1, "unreachable": 2}.get(s.value)
            if idx is not None:
                pm[side][idx] += 1
        if ts != js and not ({ts, js} == {GradStatus.NONZERO, GradStatus.ZERO} and ok.get(p.name, False)):
            same = False
    return {"torch": counts["torch"], "jittor": counts["jittor"], "same": same, "per_module": per_module}


def gradient_findings(state: str, torch: Trace, jittor: Trace, rows: list[Comparison],
                      mapping: Mapping[str, str] | None = None) -> list[Finding]:
    """Gradient-pattern findings of one state, judged against the reference's own pattern there."""
    mapping = mapping or {}
    jp = {p.name: p for p in jittor.params}
    ok = {r.torch_name: r for r in rows if r.kind == Kind.PARAM_GRAD}
    groups: dict[tuple[FindingType, str], list[tuple[ParamInfo, ParamInfo]]] = {}
    for p in trainable(torch):
        q = jp.get(rename(p.name, mapping) or p.name)
        if q is None:
            continue  # missing parameter: an inventory finding
        ftype, sub = _classify(p, q, ok.get(p.name))
        if ftype is not None:
            groups.setdefault((ftype, sub), []).append((p, q))
    out = []
    for (ftype, sub), pairs in groups.items():
        if ftype == T.FROZEN_PARAMETER:
            continue  # a trainable-vs-frozen kind difference: reported once by the inventory check
        names = [p.name for p, _ in pairs]
        # a cut graph starves everything before the cut: the latest starved module is nearest to it
        cut = ftype == T.UNREACHABLE_GRADIENT or sub in ("zero_vs_unreachable", "nonzero_vs_zero")
        ts = sorted({p.grad_status.value for p, _ in pairs})
        js = sorted({q.grad_status.value for _, q in pairs})
        out.append(Finding(
            type=ftype, severity=S.ERROR, state=state, location=place((p.module for p, _ in pairs), torch, last=cut),
            evidence={"count": len(pairs), "params": listed(names), "torch_status": ts, "jittor_status": js},
            position=min(torch.params.index(p) for p, _ in pairs),
            **render(ftype, n=len(pairs), ex=", ".join(names[:3]), ts="/".join(ts), js="/".join(js))))
    return out


def _classify(p: ParamInfo, q: ParamInfo, row: Comparison | None) -> tuple[FindingType | None, str]:
    ts, js = p.grad_status, q.grad_status
    if ts == js:
        if ts == GradStatus.NONZERO and row is not None and p.grad_max_abs and q.grad_max_abs is not None \
                and not row.ok and q.grad_max_abs < VANISHING_RATIO * p.grad_max_abs:
            return T.VANISHING_GRADIENT, ""
        return None, ""
    within = row is not None and row.ok
    if js == GradStatus.FROZEN and ts in (GradStatus.NONZERO, GradStatus.ZERO, GradStatus.UNREACHABLE):
        return T.FROZEN_PARAMETER, (q.frozen_by.value if q.frozen_by else "stop_grad")
    if js == GradStatus.UNREACHABLE and ts == GradStatus.NONZERO:
        return T.UNREACHABLE_GRADIENT, ""
    if js == GradStatus.UNREACHABLE and ts == GradStatus.ZERO:
        return T.GRADIENT_PATTERN, "zero_vs_unreachable"
    if js == GradStatus.ZERO and ts == GradStatus.NONZERO:
        return (None, "") if within else (T.GRADIENT_PATTERN, "nonzero_vs_zero")
    if js == GradStatus.NONZERO and ts in (GradStatus.ZERO, GradStatus.UNREACHABLE, GradStatus.FROZEN,
                                           GradStatus.NONE):
        return (None, "") if within else (T.EXTRA_GRADIENT, "")
    if js == GradStatus.ZERO and ts == GradStatus.UNREACHABLE:
        return T.GRADIENT_PATTERN, "unreachable_vs_zero"
    if js == GradStatus.NONE and ts != GradStatus.NONE:
        return T.GRADIENT_PATTERN, "no_grad"
    return None, ""


_FROZEN_CAUSE = {FrozenBy.EVAL.value: "cause_eval", FrozenBy.REQUIRES_GRAD.value: "cause_requires_grad"}


def frozen_finding(state: str | None, loc: str, pairs: list[tuple[ParamInfo, ParamInfo]],
                   ev: dict[str, Any], by: str, position: int | None = None) -> Finding:
    """Parameters the reference trains and the port freezes (``by``: how, a :class:`FrozenBy` value)."""
    w_en, w_zh = where(loc)
    return Finding(type=T.FROZEN_PARAMETER, severity=S.ERROR, state=state, location=loc,
                   evidence={**ev, "frozen_by": by}, position=position,
                   **render(T.FROZEN_PARAMETER, "frozen", n=len(pairs), by=by, where=w_en, where_zh=w_zh,
                            ex=", ".join(p.name for p, _ in pairs[:3])),
                   **render(T.FROZEN_PARAMETER, _FROZEN_CAUSE.get(by, "cause_stop_grad")))


def sparsity_finding(state: str, torch: Trace, pattern: Mapping[str, Any]) -> Finding | None:
    """Info: both frameworks give the same sparse gradient pattern, with the reason when visible.

    The reason looked for: trainable *weights* (not biases: a zero bias blocks nothing) that are all
    zero yet get a gradient, i.e. multiplicative gates that stop every gradient flowing through them.
    """
    if not pattern.get("same"):
        return None
    tc = pattern["torch"]
    total = sum(tc.values())
    nz = tc["nonzero"]
    if total == 0 or nz >= total:
        return None
    params = trainable(torch)
    zero_init = [p.name for p in params if p.grad_status == GradStatus.NONZERO
                 and not p.name.endswith("bias") and _all_zero(torch, p.name)]
    zero_grad = [p.name for p in params if p.grad_status != GradStatus.NONZERO]
    if zero_init:
        why = render(T.GRAD_SPARSITY_EXPLAINED, "why_zero_init", names=", ".join(zero_init[:6]),
                     more=" ..." if len(zero_init) > 6 else "")
    else:
        why = render(T.GRAD_SPARSITY_EXPLAINED, "why_reachable", names=", ".join(zero_grad[:4]))
    kind = "prediction convolutions" if any("pred" in n for n in zero_init) else \
        ("zero-initialised weights" if zero_init else "reachable zero gradients")
    head = render(T.GRAD_SPARSITY_EXPLAINED, "few" if nz * 2 < total else "many", nz=nz, total=total,
                  n_zero=total - nz, why=why["likely_cause"], why_zh=why["likely_cause_zh"])
    return Finding(
        type=T.GRAD_SPARSITY_EXPLAINED, severity=S.INFO, state=state, location="",
        evidence={"nonzero": nz, "total": total, "zero_initialised": zero_init, "zero_gradient": zero_grad[:50],
                  "explained_by": kind},
        **head, **why)


def _all_zero(trace: Trace, name: str) -> bool:
    st = trace.stat(f"param/{name}")
    return st is not None and st.zero_frac == 1.0
