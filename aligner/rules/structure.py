"""State-independent structure rules: parameter inventory (missing, extra, reshaped, re-kinded tensors),
per-module count drift, weight transfer, unmatched module calls, and a noise reference with other weights.

Counts come from :mod:`aligner.inventory` (each tensor object once, ``num_batches_tracked`` left out).
"""
from __future__ import annotations

from collections.abc import Mapping

from aligner.analysis_records import Comparison, Finding, Kind, StateComparison
from aligner.inventory import EMPTY_COUNTS, counted, param_counts, params_of
from aligner.match import MatchResult, rename
from aligner.records import CallRecord, FindingType, ParamInfo, ParamKind, Severity, Trace
from aligner.rules.common import common_module, listed, place, where
from aligner.rules.gradients import frozen_finding
from aligner.rules.init import init_findings
from aligner.rules.messages import render

__all__ = ["inventory_findings", "count_drift_findings", "transfer_findings", "unmatched_findings",
           "noise_reference_findings"]

T, S = FindingType, Severity


def _group(names: list[str]) -> dict[str, list[str]]:
    """Group dotted names by top-level module."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(n.split(".")[0] if "." in n else "", []).append(n)
    return out


def inventory_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[Finding]:
    """Missing, extra, shape-mismatched and kind-mismatched parameters/buffers, and tensors whose fresh
    initial values differ from the reference's deterministic init (:mod:`aligner.rules.init`)."""
    jp = {p.name: p for p in jittor.params if counted(p)}
    seen: set[str] = set()
    missing, shape, kind = [], [], []
    for p in torch.params:
        if not counted(p) or p.kind == ParamKind.CONSTANT:
            continue
        jn = rename(p.name, mapping) or p.name
        q = jp.get(jn)
        if q is None:
            missing.append(p)
            continue
        seen.add(jn)
        if tuple(p.shape) != tuple(q.shape):
            shape.append((p, q))
        elif p.kind != q.kind and not (p.kind == ParamKind.BUFFER and q.kind == ParamKind.FROZEN):
            kind.append((p, q))
    extra = [q for q in jittor.params if counted(q) and q.name not in seen and q.kind != ParamKind.CONSTANT
             and not (q.kind == ParamKind.BUFFER and any(rename(p.name, mapping) == q.name for p in torch.params))]
    out = []
    for group in _group([p.name for p in missing]).values():
        ps = [p for p in missing if p.name in set(group)]
        loc = place((p.module for p in ps), torch)
        w_en, w_zh = where(loc, "model")
        n = sum(p.numel for p in ps)
        out.append(Finding(type=T.MISSING_PARAMETER, severity=S.ERROR, state=None, location=loc,
                           evidence={"count": len(ps), "numel": n, "names": listed([p.name for p in ps])},
                           position=torch.params.index(ps[0]),
                           **render(T.MISSING_PARAMETER, count=len(ps), numel=n, where=w_en, where_zh=w_zh,
                                    ex=", ".join(p.name for p in ps[:3]))))
    for group in _group([q.name for q in extra]).values():
        qs = [q for q in extra if q.name in set(group)]
        loc = place((q.module for q in qs), jittor)
        w_en, w_zh = where(loc, "model")
        n = sum(q.numel for q in qs)
        trainable = sum(1 for q in qs if q.kind == ParamKind.TRAINABLE)
        # tensors only the port has: after the re-kinded ones (which have a reference position)
        out.append(Finding(type=T.EXTRA_PARAMETER, severity=S.ERROR if trainable else S.WARNING, state=None,
                           location=loc,
                           evidence={"count": len(qs), "numel": n, "trainable": trainable,
                                     "names": listed([q.name for q in qs])},
                           **render(T.EXTRA_PARAMETER, count=len(qs), numel=n, trainable=trainable, where=w_en,
                                    where_zh=w_zh, ex=", ".join(q.name for q in qs[:3]))))
    if shape:
        loc = place((p.module for p, _ in shape), torch)
        w_en, w_zh = where(loc, "model")
        p0, q0 = shape[0]
        out.append(Finding(type=T.SHAPE_MISMATCH, severity=S.ERROR, state=None, location=loc,
                           evidence={"count": len(shape), "params": listed([p.name for p, _ in shape]),
                                     "first": {"name": p0.name, "torch": list(p0.shape), "jittor": list(q0.shape)}},
                           position=torch.params.index(p0),
                           **render(T.SHAPE_MISMATCH, "params", count=len(shape), where=w_en, where_zh=w_zh,
                                    name=p0.name, shape_torch=list(p0.shape), shape_jittor=list(q0.shape))))
    out += _kind_findings(torch, kind)
    # the port's own initial values (before the transfer overwrote them) belong to its inventory too
    return out + init_findings(torch, jittor, mapping)


def _kind_findings(torch: Trace, kind: list[tuple[ParamInfo, ParamInfo]]) -> list[Finding]:
    """Tensors of another kind in the port (trainable vs frozen vs buffer), grouped by the two kinds."""
    groups: dict[tuple[str, str, str], list[tuple[ParamInfo, ParamInfo]]] = {}
    for p, q in kind:
        by = q.frozen_by.value if (q.kind == ParamKind.FROZEN and q.frozen_by) else ""
        groups.setdefault((p.kind.value, q.kind.value, by), []).append((p, q))
    out = []
    for (tk, jk, by), pairs in groups.items():
        loc = place((p.module for p, _ in pairs), torch) if len(pairs) > 1 else pairs[0][0].name
        position = torch.params.index(pairs[0][0])
        names = [p.name for p, _ in pairs]
        if tk == ParamKind.TRAINABLE and jk == ParamKind.FROZEN:
            out.append(frozen_finding(None, loc, pairs, {"count": len(pairs), "params": listed(names),
                                                         "torch_kind": tk, "jittor_kind": jk},
                                      by or "stop_grad", position))
            continue
        ftype = T.EXTRA_PARAMETER if jk == ParamKind.TRAINABLE else T.FROZEN_PARAMETER
        out.append(Finding(type=ftype, severity=S.ERROR if ParamKind.TRAINABLE in (tk, jk) else S.WARNING,
                           state=None, location=loc,
                           evidence={"torch_kind": tk, "jittor_kind": jk, "count": len(pairs),
                                     "params": listed(names), "numel": sum(p.numel for p, _ in pairs)},
                           position=position,
                           **render(T.EXTRA_PARAMETER, "kind", count=len(pairs), torch_kind=tk, jittor_kind=jk,
                                    ex=", ".join(names[:3]))))
    return out


def count_drift_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[Finding]:
    """Per-module trainable/buffer count drift, reported where it originates (grouped per top module)."""
    ct, cj = param_counts(torch), param_counts(jittor)
    jnames = {m.name for m in jittor.modules} | set(cj)
    children: dict[str, list[str]] = {}
    for name in ct:
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            children.setdefault(parent, []).append(name)

    def drift(name: str) -> tuple[int, int] | None:
        jn = rename(name, mapping) or name
        if jn not in jnames:
            return None
        a, b = ct[name], cj.get(jn, EMPTY_COUNTS)
        return params_of(b) - params_of(a), b["buffers"] - a["buffers"]

    origins = []
    for name in ct:
        d = drift(name)
        if d is None or d == (0, 0):
            continue
        kids = [drift(c) for c in children.get(name, [])]
        explained = tuple(sum(k[i] for k in kids if k is not None) for i in range(2))
        if explained != d or any(k is None for k in kids):
            origins.append(name)
    out = []
    order = {m.name: i for i, m in enumerate(torch.modules)}
    for names in _group(origins).values():
        scope = common_module(names)
        loc = place(names, torch)
        w_en, w_zh = where(loc, "model")
        d = drift(scope) or (0, 0)
        a = ct.get(scope, EMPTY_COUNTS)
        b = cj.get(rename(scope, mapping) or scope, EMPTY_COUNTS)
        out.append(Finding(
            type=T.PARAM_COUNT_DRIFT, severity=S.ERROR, state=None, location=loc,
            evidence={"torch": {"params": params_of(a), "trainable": a["trainable"], "buffers": a["buffers"]},
                      "jittor": {"params": params_of(b), "trainable": b["trainable"], "buffers": b["buffers"]},
                      "drift_params": d[0], "drift_trainable": b["trainable"] - a["trainable"],
                      "drift_buffers": d[1], "scope": scope,
                      "origins": listed(sorted(names, key=lambda n: order.get(n, 0)))},
            position=order.get(loc, 0),
            **render(T.PARAM_COUNT_DRIFT, scope=where(scope, "model")[0], port_params=params_of(b),
                     port_buffers=b["buffers"], ref_params=params_of(a), ref_buffers=a["buffers"],
                     drift_params=d[0], drift_buffers=d[1], n_origins=len(names), where=w_en, where_zh=w_zh)))
    return out


def transfer_findings(rows: list[Comparison], torch: Trace, jittor: Trace) -> list[Finding]:
    """Weights whose values differ between the frameworks after the transfer: failing parameter value
    rows, plus the value/dtype problems the capture recorded in ``meta["weight_transfer"]`` (its
    missing/extra/shape problems are reported more precisely by :func:`inventory_findings`), and the Jittor
    modules none of whose tensors received torch values (``meta["weight_untransferred"]``): they run on the
    port's own initialisation. Those alone are a warning, their cause is an extra/shape finding."""
    # buffer rows (``buf/``: values after the forward) are forward-side findings, not transfer problems
    bad = [r for r in rows if r.kind == Kind.PARAM and not r.ok and r.metrics.shape_ok
           and not r.torch_key.startswith("buf/")]
    recorded = list(jittor.meta.get("weight_transfer") or []) + list(torch.meta.get("weight_transfer") or [])
    problems = [w for w in recorded if isinstance(w, Mapping) and str(w.get("kind")) in ("value", "dtype")]
    names = list(dict.fromkeys([r.torch_name for r in bad] + [str(w.get("name")) for w in problems]))
    untransferred = [str(m) for m in jittor.meta.get("weight_untransferred") or []]
    if not names and not untransferred:
        return []
    state = rows[0].state if rows else (jittor.state or None)
    shown = ", ".join(listed(untransferred, 5))  # the message names a few, the evidence up to MAX_LISTED
    evidence_untransferred = {"untransferred": listed(untransferred), "untransferred_count": len(untransferred)}
    if not names:
        return [Finding(
            type=T.WEIGHT_TRANSFER, severity=S.WARNING, state=state, location=place(untransferred, jittor),
            evidence={"count": 0, "params": [], "worst_rel": 0.0, "capture_problems": [], **evidence_untransferred},
            **render(T.WEIGHT_TRANSFER, "untransferred", n=len(untransferred), modules=shown))]
    pmod = {p.name: p.module for p in torch.params}
    worst = max((r.metrics.rel for r in bad), default=0.0)
    first = problems[0].get("message") if problems else None
    left = render(T.WEIGHT_TRANSFER, "untransferred_suffix", n=len(untransferred), modules=shown) \
        if untransferred else {}
    return [Finding(
        type=T.WEIGHT_TRANSFER, severity=S.ERROR, state=state,
        location=place((pmod.get(n, n) for n in names), torch),
        evidence={"count": len(names), "params": listed(names), "worst_rel": worst, "capture_problems": problems[:20],
                  **evidence_untransferred},
        **render(T.WEIGHT_TRANSFER, count=len(names), worst=worst,
                 reported=f"; capture reported: {first}" if first else "",
                 untransferred=left.get("message", ""), untransferred_zh=left.get("message_zh", "")))]


def unmatched_findings(result: MatchResult) -> list[Finding]:
    """Module calls of one side with no partner in the other (per side)."""
    out = []
    for side, calls in (("torch", result.unmatched_torch), ("jittor", result.unmatched_jittor)):
        if not calls:
            continue
        labels = [c.label for c in calls]
        out.append(Finding(
            type=T.UNMATCHED_MODULE, severity=S.WARNING, state=None, location=common_module(c.module for c in calls),
            evidence={"side": side, "count": len(calls), "modules": listed(labels)},
            **render(T.UNMATCHED_MODULE, count=len(calls), side=side, ex=", ".join(labels[:3]))))
    return out


def unreturned_output_findings(torch_only: list[CallRecord], port_only: list[CallRecord]) -> list[Finding]:
    """Output leaves of the whole model that only one side returns (:func:`aligner.compare.unreturned_outputs`)."""
    out = []
    for side, recs in (("torch", torch_only), ("jittor", port_only)):
        if not recs:
            continue
        ex = ", ".join(f"[{r.sub}] {list(r.shape)}" for r in recs[:3])
        out.append(Finding(
            type=T.UNMATCHED_MODULE, severity=S.WARNING, state=None, location="",
            evidence={"side": side, "count": len(recs), "outputs": listed([f"{r.sub} {list(r.shape)}" for r in recs])},
            **render(T.UNMATCHED_MODULE, "outputs", count=len(recs), side=side, ex=ex)))
    return out


def noise_reference_findings(sc: StateComparison) -> list[Finding]:
    """The other-precision reference of this state holds other weights: its noise floor is not used."""
    if not sc.reference_mismatch:
        return []
    names = sc.reference_mismatch
    return [Finding(type=T.WEIGHT_TRANSFER, severity=S.WARNING, state=sc.state, location="noise reference",
                    evidence={"count": len(names), "params": names[:20]},
                    **render(T.WEIGHT_TRANSFER, "noise_reference", count=len(names), ex=", ".join(names[:3])))]
