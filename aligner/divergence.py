"""Where the port first leaves tolerance: error accumulation and first divergences of one state.

``introduced_ratio`` is a row's error divided by the largest error of its inputs (forward: the
call's input tensors; backward: the output gradients of the calls consuming it), with the
denominator floored at the dtype's round-off, so ~1 means inherited and >>1 means introduced.
The first forward divergence is the earliest failing output in execution order (everything before
it passed, so its inputs are within tolerance); the first backward divergence is the latest failing
output gradient, blamed on the module that consumed that tensor (whose own output gradient passed)
or, when no module consumed it, on its innermost passing ancestor, or on the loss. When the port's
tensor there is not in the autograd graph at all (it does not require grad), the consumers are not to
blame: the module that produced it without a graph is (a block run under no_grad or requires_grad_(False),
a detach at its output).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from aligner.analysis_records import Comparison, Divergence, Kind, Localisation, StateComparison
from aligner.compare import ROUNDOFF
from aligner.match import Match, MatchResult
from aligner.metrics import relative
from aligner.records import CallRecord
from aligner.rules.common import common_module
from aligner.sides import Side

__all__ = ["locate", "first_divergence"]


def locate(state: str, rows: list[Comparison], matches: MatchResult, sides: tuple[Side, Side],
           dtype: str) -> Localisation:
    """Drop uncaptured gradient rows, add introduced ratios, find the first divergences of one state."""
    t, j = sides
    kept, uncaptured = _drop_uncaptured(rows, matches)
    kept = _with_introduced_ratios(kept, matches, t, j, dtype)
    return Localisation(rows=kept, uncaptured=uncaptured,
                        forward=_forward_divergence(state, kept, matches, t, j),
                        backward=_backward_divergence(state, kept, matches, t, j))


def _drop_uncaptured(rows: list[Comparison], matches: MatchResult) -> tuple[list[Comparison], list[str]]:
    """Output gradients one side failed to record although they must exist: every module whose output
    feeds this call (on that side) has a gradient that agrees with the other framework, so the
    gradient did flow through this call. Not a graph break but a capture gap (e.g. a hook that did
    not fire on an identity-like module); such rows are dropped and listed, not judged."""
    by_torch = {m.torch.order: m for m in matches.matches}
    by_side = {"jittor": {m.jittor.order: m.torch.order for m in matches.matches},
               "torch": {m.torch.order: m.torch.order for m in matches.matches}}
    bwd: dict[int, list[Comparison]] = {}
    for r in rows:
        if r.kind == Kind.BACKWARD:
            bwd.setdefault(r.order, []).append(r)
    good = {o for o, rs in bwd.items() if all(x.ok for x in rs)}
    gaps: set[int] = set()
    changed = True
    while changed:
        changed = False
        for o, rs in bwd.items():
            if o in gaps or o in good or any(x.missing is None or x.ok for x in rs):
                continue
            side = rs[0].missing or "jittor"
            m = by_torch.get(o)
            call = m.jittor if (m and side == "jittor") else (m.torch if m else None)
            if call is None:
                continue
            keys = set(call.input_keys) | {r.alias_of for r in call.outputs if r.alias_of}
            prods = {by_side[side].get(int(k.split("/")[1])) for k in keys if k.startswith("act/")}
            if prods and None not in prods and all(p in good or p in gaps for p in prods):
                gaps.add(o)
                changed = True
    dropped = [f"{by_torch[o].torch.label}" for o in sorted(gaps)]
    return [r for r in rows if not (r.kind == Kind.BACKWARD and r.order in gaps)], dropped


def _consumers(matches: MatchResult, side: Side, port: bool = False) -> dict[str, list[Match]]:
    """Canonical act key of one side -> matches whose call on that side took it as an input."""
    out: dict[str, list[Match]] = {}
    for m in matches.matches:
        call = m.jittor if port else m.torch
        for key in call.input_keys:
            out.setdefault(side.canon.get(key, key), []).append(m)
    return out


def _with_introduced_ratios(rows: list[Comparison], matches: MatchResult, t: Side, j: Side,
                            dtype: str) -> list[Comparison]:
    floor = ROUNDOFF.get(dtype, ROUNDOFF["float32"])
    by_order = {m.torch.order: m for m in matches.matches}
    worst: dict[tuple[Kind, int], float] = {}
    for r in rows:
        if r.kind in (Kind.FORWARD, Kind.BACKWARD):
            key = (r.kind, r.order)
            worst[key] = max(worst.get(key, 0.0), r.metrics.rel)
    consumers = _consumers(matches, t)
    rows = list(rows)
    # an input of one call is the output of another: its error is that row's (same arrays, same metric)
    known = {(r.torch_key, r.jittor_key): r.metrics.rel for r in rows
             if r.kind == Kind.FORWARD and r.missing is None and r.torch_key and r.jittor_key}
    for i, r in enumerate(rows):
        denom = None
        m = by_order.get(r.order)
        if r.kind == Kind.FORWARD and m is not None:
            tk, jk = m.torch.input_keys, m.jittor.input_keys
            if tk and len(tk) == len(jk):
                errs = []
                for a, b in zip(tk, jk):
                    if (a, b) in known:
                        errs.append(known[(a, b)])
                        continue
                    ra, rb = t.input_(a), j.input_(b)
                    if ra is not None and rb is not None:
                        errs.append(relative(ra, rb))
                denom = max(errs) if errs else None
        elif r.kind == Kind.BACKWARD and m is not None:
            keys = {t.canon.get(rec.key, rec.key) for rec in m.torch.outputs}
            cons = {c.torch.order for k in keys for c in consumers.get(k, [])}
            errs = [worst[(Kind.BACKWARD, o)] for o in cons if (Kind.BACKWARD, o) in worst]
            denom = max(errs) if errs else None
        if denom is not None and math.isfinite(r.metrics.rel):
            ratio = r.metrics.rel / max(denom, floor) if math.isfinite(denom) else 0.0
            rows[i] = replace(r, introduced_ratio=ratio)
    return rows


def _forward_divergence(state: str, rows: list[Comparison], matches: MatchResult, t: Side,
                        j: Side) -> Divergence | None:
    fails = sorted((r for r in rows if r.kind == Kind.FORWARD and not r.ok), key=lambda r: (r.order, r.sub))
    if not fails:
        return None
    r = fails[0]
    m = matches.by_torch_order()[r.order]
    location = r.torch_name
    # model inputs that already differ: the port was fed something else
    for a, b in zip(m.torch.input_keys, m.jittor.input_keys):
        if a.startswith("input/"):
            ra, rb = t.input_(a), j.input_(b)
            if ra is not None and rb is not None and relative(ra, rb) > r.judgement.bound:
                location = "inputs"
    how = "introduced here" if (r.introduced_ratio is None or r.introduced_ratio > 10) else \
        "inherited from its inputs (error ratio ~1)"
    msg = (f"forward output of {r.torch_name}{'[' + r.sub + ']' if r.sub else ''} is the first to leave "
           f"tolerance ({r.judgement.metric} {r.judgement.value:.3g} > {r.judgement.bound:.3g}); {how}")
    return Divergence(state=state, direction="forward", location=location, torch_name=r.torch_name,
                      jittor_name=r.jittor_name, metric=r.judgement.metric, value=r.judgement.value,
                      tol=r.judgement.bound, message=msg, order=r.order, sub=r.sub,
                      introduced_ratio=r.introduced_ratio)


def _backward_divergence(state: str, rows: list[Comparison], matches: MatchResult, t: Side,
                         j: Side) -> Divergence | None:
    bwd = [r for r in rows if r.kind == Kind.BACKWARD]
    # An alias row (a container returning its child's tensor, the model returning the head's) holds
    # the same tensor as its target: scan the target, at the position where the tensor was produced.
    own = {r.torch_key for r in bwd}

    def is_alias(r: Comparison) -> bool:
        key = "act/" + r.torch_key.partition("/")[2]
        target = t.canon.get(key, key)
        return target != key and ("g" + target) in own

    fails = sorted((r for r in bwd if not r.ok and not is_alias(r)), key=lambda r: (-r.order, r.sub))
    if not fails:
        return None
    r = fails[0]
    ok_orders = {x.order for x in bwd} - {x.order for x in bwd if not x.ok}
    m = matches.by_torch_order()[r.order]
    # Follow the port's own dataflow: the bug is in its graph (a detach makes a new tensor there,
    # so the port's consumers of this output differ from the reference's). Fall back to the
    # reference's dataflow when the port recorded no input keys at all.
    use_port = any(x.jittor.input_keys for x in matches.matches)
    side, call = (j, m.jittor) if use_port else (t, m.torch)
    # only the failing output leaf: the other leaves of a tuple output may feed other modules
    keys = {side.canon.get(rec.key, rec.key) for rec in call.outputs if _is_leaf(rec, r, use_port)} or \
        {side.canon.get(rec.key, rec.key) for rec in call.outputs}
    cons = {x.torch.order: x.torch for k in keys for x in _consumers(matches, side, use_port).get(k, [])}
    passing = [c for o, c in sorted(cons.items(), reverse=True) if o in ok_orders]
    candidates = tuple(c.module for c in passing)
    if len(passing) == 1:
        location = passing[0].module
    elif passing:
        location = common_module([c.module for c in passing]) or passing[0].module
    else:
        ancestors = [x.torch for x in matches.matches
                     if x.torch.order > r.order and x.torch.order in ok_orders
                     and _is_ancestor(x.torch.module, r.torch_name)]
        ancestors.sort(key=lambda c: (-c.module.count("."), c.order))
        # the innermost passing ancestor ("" = the top-level model's own forward); none: the loss
        location = ancestors[0].module if ancestors else "loss"
        candidates = (location,)
    producer = _graphless_producer(r, m, matches, j) if r.missing == "jittor" else None
    if producer is not None:
        # the port's tensor is not in the autograd graph at all: its consumers cannot be blamed, the module
        # that made it without a graph (no_grad / requires_grad_(False) block, detach at its output) can
        location, candidates = producer, (producer,)
    where = {"loss": "the loss", "": "the top-level model's own forward"}.get(location, location)
    output = f"the output of {r.torch_name}" if r.torch_name else f"the model's output [{r.sub}]"
    msg = (f"gradient w.r.t. {output} is the first (from the loss backwards) to leave "
           f"tolerance ({r.judgement.metric} {r.judgement.value:.3g} > {r.judgement.bound:.3g}) while "
           f"the gradients flowing into it are within: ")
    if producer is not None:
        msg += (f"the port's tensor there does not require grad at all, although the inputs of {where} do: "
                f"{where} computes its output outside the autograd graph (graph broken)")
    else:
        msg += f"the error enters in the backward of {where}"
        if r.missing == "jittor":
            msg += "; the port has no gradient there at all (graph broken)"
    return Divergence(state=state, direction="backward", location=location, torch_name=r.torch_name,
                      jittor_name=r.jittor_name, metric=r.judgement.metric, value=r.judgement.value,
                      tol=r.judgement.bound, message=msg, order=r.order, sub=r.sub,
                      introduced_ratio=r.introduced_ratio, candidates=candidates)


def _is_leaf(rec: CallRecord, r: Comparison, port: bool) -> bool:
    """``rec`` is the output leaf row ``r`` compares: on the port's side by the row's port key (the two
    sides' output structures may differ, leaves paired by shape), on the reference's by sub-path."""
    if port and r.jittor_key:
        return r.jittor_key in (rec.key, rec.gkey)
    return rec.sub == r.sub


def _graphless_producer(r: Comparison, m: Match, matches: MatchResult, j: Side) -> str | None:
    """The module that made the port's tensor of row ``r`` outside the autograd graph, or None.

    Only when the port recorded that this output does not require grad (traces before
    ``CallRecord.requires_grad`` give None). The tensor may be the output of several nested calls
    (a container returning its last child's tensor): the innermost of them whose own inputs do require
    grad is where the graph stops, e.g. the block run under ``no_grad`` rather than its last layer
    (whose input came from inside the block, also without a graph). Named with the torch name.
    """
    recs = [rec for rec in m.jittor.outputs if _is_leaf(rec, r, True)] or list(m.jittor.outputs)
    if not recs or any(rec.requires_grad is not False for rec in recs):
        return None
    wants = {rec.key: rec.requires_grad for rec in j.trace.calls}
    target = j.canon.get(recs[0].key, recs[0].key)
    chain = sorted((rec for rec in j.trace.calls if j.canon.get(rec.key, rec.key) == target),
                   key=lambda rec: rec.order)
    torch_name = {x.jittor.module: x.torch.module for x in matches.matches}
    for rec in chain:
        # model inputs are captured with requires_grad (floats); act keys: as their producer recorded
        if any(k.startswith("input/") or wants.get(k, wants.get(j.canon.get(k, k))) is True
               for k in rec.input_keys):
            return torch_name.get(rec.module, rec.module)
    return None


def _is_ancestor(a: str, b: str) -> bool:
    return a != b and (a == "" or b.startswith(a + "."))


def first_divergence(states: Sequence[StateComparison]) -> Divergence | None:
    """Forward before backward (a forward error explains the backward one), states in run order."""
    for sc in states:
        if sc.forward is not None:
            return sc.forward
    for sc in states:
        if sc.backward is not None:
            return sc.backward
    return None
