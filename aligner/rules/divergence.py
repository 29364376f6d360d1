"""Rules on one state's rows: first divergences, buffers, parameter gradients, NaN/Inf, output shapes,
optimizer steps; and the stand-in first divergence when no module output left tolerance."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from aligner.analysis_records import Comparison, Divergence, Finding, Kind, StateComparison
from aligner.records import FindingType, Severity
from aligner.rules.common import fmt, listed, where
from aligner.rules.messages import phrase, render

__all__ = ["divergence_findings", "nan_inf_findings", "shape_findings", "step_findings", "port_rounding_finding",
           "divergence_from_findings", "ForwardCause"]

T, S = FindingType, Severity
# a pair's module-name hint for a forward divergence (aligner.rules.pair.PairRules.forward_cause)
ForwardCause = Callable[[str, Mapping[str, Any]], "tuple[str, str] | None"]


def _under(location: str, modules: Any) -> bool:
    return any(m and (location == m or location.startswith(m + ".")) for m in modules)


def _forward_cause(div: Divergence, row: Comparison | None, ctx: Mapping[str, Any],
                   pair_cause: ForwardCause | None) -> dict[str, str]:
    name = (div.location + " " + (row.module_type if row else "")).lower()
    if div.location == "inputs":
        return render(T.FORWARD_DIVERGENCE, "cause_inputs")
    if _under(div.location, ctx.get("mode_locations", set())):
        return render(T.FORWARD_DIVERGENCE, "cause_mode")
    hint = pair_cause(name, ctx) if pair_cause is not None else None
    if hint is not None:
        return {"likely_cause": hint[0], "likely_cause_zh": hint[1]}
    if "bn" in name.split(".")[-1] or "batchnorm" in name:
        return render(T.FORWARD_DIVERGENCE, "cause_bn")
    if any(k in name for k in ("upsample", "interp", "resize")):
        return render(T.FORWARD_DIVERGENCE, "cause_interpolation")
    if any(k in name for k in ("attn", "attention")):
        return render(T.FORWARD_DIVERGENCE, "cause_attention")
    return render(T.FORWARD_DIVERGENCE, "cause_module", module_type=row.module_type if row else "module")


def _backward_cause(sc: StateComparison, d: Divergence, broken: bool, where_en: str, where_zh: str
                    ) -> dict[str, str]:
    if sc.forward is not None:
        return render(T.BACKWARD_DIVERGENCE, "cause_consequence")
    if d.location == "loss":
        return render(T.BACKWARD_DIVERGENCE, "cause_loss")
    variant = "cause_broken" if broken else "cause_differs"
    return render(T.BACKWARD_DIVERGENCE, variant, where=where_en, where_zh=where_zh)


def divergence_findings(sc: StateComparison, ctx: Mapping[str, Any] | None = None,
                        pair_cause: ForwardCause | None = None) -> list[Finding]:
    """Forward and backward first divergences of one state, with counts of failing rows.

    ``ctx``: ``first_call`` and ``param_module`` of the reference, ``mode_locations`` (modules with a mode
    mismatch), ``img_size``."""
    ctx = ctx or {}
    out = []
    rows_by = {(r.kind, r.order, r.sub): r for r in sc.rows}
    if sc.forward is not None:
        d = sc.forward
        row = rows_by.get((Kind.FORWARD, d.order, d.sub))
        n_fail = sum(1 for r in sc.rows if r.kind == Kind.FORWARD and not r.ok)
        w_en, w_zh = where(d.location)
        out.append(Finding(
            type=T.FORWARD_DIVERGENCE, severity=S.ERROR, state=sc.state, location=d.location,
            evidence=_div_evidence(d, row, n_fail), position=d.order,
            **render(T.FORWARD_DIVERGENCE, "first", where=w_en, where_zh=w_zh, detail=d.message, n_fail=n_fail,
                     metric=d.metric, value=fmt(d.value), tol=fmt(d.tol)),
            **_forward_cause(d, row, ctx, pair_cause)))
    if sc.backward is not None:
        d = sc.backward
        w_en, w_zh = where(d.location, "top_forward")
        row = rows_by.get((Kind.BACKWARD, d.order, d.sub))
        n_fail = sum(1 for r in sc.rows if r.kind == Kind.BACKWARD and not r.ok)
        broken = row is not None and (row.missing == "jittor" or row.metrics.zero_frac_port == 1.0)
        out.append(Finding(
            type=T.BACKWARD_DIVERGENCE, severity=S.ERROR, state=sc.state, location=d.location,
            evidence={**_div_evidence(d, row, n_fail), "candidates": list(d.candidates), "graph_broken": broken},
            position=d.order,
            **render(T.BACKWARD_DIVERGENCE, "first", where=w_en, where_zh=w_zh, detail=d.message, n_fail=n_fail,
                     name=d.torch_name, metric=d.metric, value=fmt(d.value), tol=fmt(d.tol)),
            **_backward_cause(sc, d, broken, w_en, w_zh)))
    elif sc.forward is None and any(r.kind == Kind.PARAM_GRAD and not r.ok and r.missing is None
                                    for r in sc.rows):
        out.append(_param_grad_finding(sc, ctx))
    buf = _buffer_finding(sc, ctx)
    if buf is not None:
        out.append(buf)
    return out


def _module_of(name: str, param_module: Mapping[str, str]) -> str:
    return param_module.get(name, name.rsplit(".", 1)[0] if "." in name else "")


def _buffer_finding(sc: StateComparison, ctx: Mapping[str, Any]) -> Finding | None:
    """Buffers (BN running statistics) that leave tolerance after the captured train-mode forward, in
    modules that ran before the first forward divergence (so their inputs agree): the update rule
    itself differs. Buffers of later modules may inherit a diverged input (a BN normalises a scale
    error away in its output, not in its running_var) and are only counted."""
    bad = [r for r in sc.rows if r.kind == Kind.PARAM and not r.ok and r.torch_key.startswith("buf/")]
    if not bad:
        return None
    first_call = ctx.get("first_call") or {}
    pmod = ctx.get("param_module") or {}

    def call_of(r: Comparison) -> float:
        return first_call.get(_module_of(r.torch_name, pmod), math.inf)  # never called: after everything

    limit = sc.forward.order if sc.forward is not None else None
    own = [r for r in bad if limit is None or call_of(r) < limit]
    if not own:
        return None
    r = min(own, key=lambda x: (call_of(x), x.order))
    mod, jd = _module_of(r.torch_name, pmod), r.judgement
    w_en, w_zh = where(mod)
    cause = "buffer_mode" if _under(mod, ctx.get("mode_locations", set())) else "buffer_update"
    return Finding(
        type=T.FORWARD_DIVERGENCE, severity=S.ERROR, state=sc.state, location=r.torch_name,
        evidence={"torch_name": r.torch_name, "jittor_name": r.jittor_name, "module": mod, "metric": jd.metric,
                  "value": jd.value, "tol": jd.bound, "rel": r.metrics.rel, "max_abs": r.metrics.max_abs,
                  "noise_floor": jd.noise_floor, "count": len(own), "failing_buffers": len(bad),
                  "buffers": listed([x.torch_name for x in own])},
        position=first_call.get(mod, r.order),
        **render(T.FORWARD_DIVERGENCE, "buffer", name=r.torch_name, metric=jd.metric, value=fmt(jd.value),
                 tol=fmt(jd.bound), where=w_en, where_zh=w_zh, count=len(own), failing=len(bad)),
        **render(T.FORWARD_DIVERGENCE, cause))


def _param_grad_finding(sc: StateComparison, ctx: Mapping[str, Any]) -> Finding:
    """Parameter gradients out of tolerance while every module-output gradient is within: the
    weight-gradient computation itself differs. Blamed on the failing parameter closest to the loss."""
    # rows where one side has no gradient at all are gradient-pattern findings, not value divergences
    bad = [r for r in sc.rows if r.kind == Kind.PARAM_GRAD and not r.ok and r.missing is None]
    first_call = ctx.get("first_call") or {}
    pmod = ctx.get("param_module") or {}

    def pos(r: Comparison) -> int:
        mod = pmod.get(r.torch_name, r.torch_name.rsplit(".", 1)[0])
        return first_call.get(mod, r.order)

    r = max(bad, key=pos)
    loc = pmod.get(r.torch_name, r.torch_name.rsplit(".", 1)[0])
    jd = r.judgement
    return Finding(
        type=T.BACKWARD_DIVERGENCE, severity=S.ERROR, state=sc.state, location=loc,
        evidence={"count": len(bad), "params": listed([x.torch_name for x in bad]), "metric": jd.metric,
                  "value": jd.value, "tol": jd.bound, "noise_floor": jd.noise_floor, "missing": r.missing},
        **render(T.BACKWARD_DIVERGENCE, "param_grad", count=len(bad), name=r.torch_name, metric=jd.metric,
                 value=fmt(jd.value), tol=fmt(jd.bound)))


def _div_evidence(d: Divergence, row: Comparison | None, n_fail: int) -> dict[str, Any]:
    ev: dict[str, Any] = {"torch_name": d.torch_name, "jittor_name": d.jittor_name, "sub": d.sub,
                          "metric": d.metric, "value": d.value, "tol": d.tol,
                          "introduced_ratio": d.introduced_ratio, "failing_rows": n_fail}
    if row is not None:
        m = row.metrics
        ev.update({"rel": m.rel, "max_abs": m.max_abs, "cosine": m.cosine, "noise_floor": row.judgement.noise_floor,
                   "shape_torch": list(m.shape_ref), "shape_jittor": list(m.shape_port),
                   "module_type": row.module_type, "missing": row.missing})
    return ev


def nan_inf_findings(sc: StateComparison) -> list[Finding]:
    """The first tensor (execution order) per kind where the port has NaN/Inf the reference lacks."""
    out = []
    for kind in (Kind.FORWARD, Kind.BACKWARD, Kind.PARAM_GRAD):
        rows = sorted((r for r in sc.rows if r.kind == kind and (r.metrics.nan_port or r.metrics.inf_port
                                                                 or r.metrics.nan_ref or r.metrics.inf_ref)),
                      key=lambda r: r.order if kind != Kind.BACKWARD else -r.order)
        if not rows:
            continue
        r = rows[0]
        m = r.metrics
        port_only = (m.nan_port > m.nan_ref) or (m.inf_port > m.inf_ref)
        out.append(Finding(
            type=T.NAN_INF, severity=S.ERROR if port_only else S.WARNING, state=sc.state, location=r.torch_name,
            evidence={"kind": kind.value, "nan_torch": m.nan_ref, "nan_jittor": m.nan_port, "inf_torch": m.inf_ref,
                      "inf_jittor": m.inf_port, "affected": len(rows), "sub": r.sub},
            position=r.order,
            **render(T.NAN_INF, "first", kind=kind.value, name=r.torch_name,
                     who=phrase("port_only" if port_only else "both")[0], nan_torch=m.nan_ref,
                     inf_torch=m.inf_ref, nan_jittor=m.nan_port, inf_jittor=m.inf_port, affected=len(rows))))
    return out


def shape_findings(sc: StateComparison) -> list[Finding]:
    """Module outputs whose shapes differ (first few, in execution order)."""
    rows = sorted((r for r in sc.rows if r.kind == Kind.FORWARD and not r.metrics.shape_ok),
                  key=lambda r: r.order)
    out = []
    for r in rows[:5]:
        st, sj = list(r.metrics.shape_ref), list(r.metrics.shape_port)
        out.append(Finding(
            type=T.SHAPE_MISMATCH, severity=S.ERROR, state=sc.state, location=r.torch_name,
            evidence={"sub": r.sub, "shape_torch": st, "shape_jittor": sj, "affected": len(rows)},
            position=r.order,
            **render(T.SHAPE_MISMATCH, "output", sub=f"[{r.sub}]" if r.sub else "", name=r.torch_name,
                     shape_torch=st, shape_jittor=sj)))
    return out


def step_findings(rows: list[Comparison], block: list[dict[str, Any]]) -> list[Finding]:
    """After each optimiser step: parameters whose values or gradients left tolerance."""
    out = []
    for b in block:
        state = f"{b['state']}/step{b['step']}"
        bad = [r for r in rows if r.state == state and not r.ok]
        if not bad:
            continue
        by_kind = {k: [r for r in bad if r.kind == k] for k in (Kind.PARAM, Kind.PARAM_GRAD)}
        for kind, rs in by_kind.items():
            if not rs:
                continue
            worst = max(rs, key=lambda r: r.metrics.rel if math.isfinite(r.metrics.rel) else math.inf)
            what, what_zh = phrase("values" if kind == Kind.PARAM else "gradients")
            out.append(Finding(
                type=T.BACKWARD_DIVERGENCE, severity=S.ERROR, state=state, location=worst.torch_name,
                evidence={"kind": kind.value, "count": len(rs), "params": [r.torch_name for r in rs[:20]],
                          "loss_torch": b.get("loss_torch"), "loss_jittor": b.get("loss_jittor")},
                position=worst.order,
                **render(T.BACKWARD_DIVERGENCE, "steps", step=b["step"], count=len(rs), what=what,
                         what_zh=what_zh, name=worst.torch_name, metric=worst.judgement.metric,
                         value=worst.judgement.value, tol=worst.judgement.bound)))
    return out


def port_rounding_finding(state: str, rescued: list[Comparison]) -> Finding | None:
    """Info: tensors that failed the reference's noise bound in float32 but agree in the port's float64 run
    (:func:`aligner.compare.confirm_with_port64`), with the first one's numbers."""
    if not rescued:
        return None
    first = min(rescued, key=lambda r: (r.state != state, r.order, r.kind.value))
    jd = first.judgement
    f32 = first.rel_fp64 if first.rel_fp64 is not None else math.nan
    ratio = f32 / jd.noise_floor if jd.noise_floor else math.inf
    kind_zh = {Kind.FORWARD: "输出", Kind.BACKWARD: "输出梯度", Kind.PARAM_GRAD: "参数梯度", Kind.PARAM: "参数"}
    return Finding(
        type=T.PORT_ROUNDING, severity=S.INFO, state=state, location=first.torch_name, position=first.order,
        evidence={"count": len(rescued), "torch_name": first.torch_name, "kind": first.kind.value,
                  "metric": jd.metric, "value": jd.value, "tol": jd.bound, "value_float32": f32,
                  "noise_floor": jd.noise_floor, "tensors": [f"{r.state}:{r.kind.value}:{r.torch_name}"
                                                             for r in rescued[:50]]},
        **render(T.PORT_ROUNDING, count=len(rescued), name=first.torch_name, kind=first.kind.value,
                 kind_zh=kind_zh[first.kind], value=f32, tol=jd.bound, value64=jd.value, ratio=ratio))


_BACKWARD_TYPES = {T.BACKWARD_DIVERGENCE, T.FROZEN_PARAMETER, T.UNREACHABLE_GRADIENT, T.GRADIENT_PATTERN,
                   T.EXTRA_GRADIENT, T.VANISHING_GRADIENT}


def divergence_from_findings(findings: list[Finding]) -> Divergence | None:
    """No module output left tolerance, yet something is wrong (frozen parameters, a count drift,
    a loss item): the first error finding stands in as the first divergence."""
    f = next((x for x in findings if x.severity == S.ERROR), None)
    if f is None:
        return None
    ev = f.evidence
    value = ev.get("value", ev.get("rel", ev.get("count")))
    tol = ev.get("tol")
    return Divergence(state=f.state, direction="backward" if f.type in _BACKWARD_TYPES else "forward",
                      location=f.location, torch_name=f.location, jittor_name=f.location,
                      metric=str(ev.get("metric", f.type.value)),
                      value=float(value) if isinstance(value, (int, float)) else math.nan,
                      tol=float(tol) if isinstance(tol, (int, float)) else math.nan,
                      message=f.message, order=f.position if f.position is not None else -1)
