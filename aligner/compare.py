"""Matched calls + tolerances -> one :class:`Comparison` per compared tensor (no I/O, no logging).

Rows: forward outputs and the loss gradient w.r.t. them for every matched module call (one row
per output leaf), every parameter's gradient and value, every buffer's value after the captured
forward (and, in multi-step mode, parameters after each optimizer step). Each row is judged with the per-layer tolerance, the noise floor when the
reference was also captured at the other precision, and an absolute floor scaled by the largest
reference value of the same kind and state. Localisation (introduced error, first divergences)
lives in :mod:`aligner.divergence`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from aligner.analysis_records import Comparison, Judgement, Kind, NoiseReference, StateTraces
from aligner.match import Match, MatchResult, rename
from aligner.metrics import Tensor, TensorMetrics, absmax, measure, rel_error, relative, relative_l2
from aligner.records import CallRecord, ParamKind, TensorStats, Trace, buffer_key, param_key, pgrad_key
from aligner.sides import Side, fetch
from aligner.tolerances import Tolerances, judge

__all__ = ["compare_rows", "compare_steps", "noise_reference", "reference_mismatch", "ROUNDOFF", "judge_pair",
           "scales_of", "pair_leaves", "unreturned_outputs", "needs_port_sample", "confirm_with_port64", "PORT64_SUFFIX"]

# Floor of the input error in introduced_ratio: one unit of round-off of the compared dtype.
ROUNDOFF = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}


def _zeros_like(t: Tensor) -> Tensor:
    if isinstance(t, np.ndarray):
        return np.zeros_like(t)
    n = int(np.prod(t.shape)) if t.shape else 1
    return TensorStats(tuple(t.shape), t.dtype, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 1.0 if n else 0.0, "")


def noise_reference(st: StateTraces, tolerances: Tolerances) -> NoiseReference:
    """The reference that measures the noise of this state's tensors: the other-precision one
    (:attr:`StateTraces.other`), unless it holds other weights or the noise floor is off."""
    other = st.other
    mismatch = reference_mismatch(st.torch, other) if other is not None else []
    # a reference with other weights measures nothing: no noise floor in this state
    usable = other is not None and not mismatch and tolerances.noise_floor
    return NoiseReference(trace=other if usable else None, lower=st.other_is_lower, mismatch=mismatch)


def compare_rows(st: StateTraces, tolerances: Tolerances, noise: NoiseReference, matches: MatchResult,
                 sides: tuple[Side, Side], mapping: dict[str, str] | None = None, *,
                 memo: dict[tuple[Any, ...], Any] | None = None, scales: dict[str, float] | None = None,
                 strict: bool = False) -> list[Comparison]:
    """Every row of one state: each matched call's outputs and output gradients, then every parameter
    (see :mod:`aligner.divergence` for where the rows first leave tolerance). ``memo`` shares the metrics of
    tensor pairs between passes over the same traces, ``scales`` is :func:`scales_of` the reference when
    already known; ``strict``: rows with both sides are judged with the bounds of the noise floor, unwidened,
    also without one (so their metrics are those a pass with the floor computes)."""
    t, j = sides
    r64 = Side(noise.trace) if noise.trace is not None else None
    scales = scales if scales is not None else scales_of(st.torch)
    rows: list[Comparison] = []
    memo = memo if memo is not None else {}
    for m in matches.matches:
        rows += _call_rows(st.state, m, t, j, r64, noise.lower, tolerances, scales, memo, strict)
    rows += _param_rows(st.state, st.torch, st.jittor, noise.trace, noise.lower, tolerances, scales, mapping or {},
                        memo, strict)
    return rows


# Parameter values of the two precision references may differ by float32 rounding only.
_SAME_WEIGHTS_RTOL = 1e-6


def reference_mismatch(ref: Trace, other: Trace) -> list[str]:
    """Parameters whose values differ between the reference and its other-precision twin by more
    than float32 rounding (the twin was not built from the same weights, e.g. a perturbation drawn
    with ``normal_`` in float64 gives other numbers than in float32)."""
    bad = []
    for key in ref.arrays:
        if key.startswith("param/") and key in other.arrays:
            a, b = ref.arrays[key], other.arrays[key]
            if a.shape != b.shape or rel_error(a, b) > _SAME_WEIGHTS_RTOL:
                bad.append(key.partition("/")[2])
    return bad


def scales_of(torch: Trace) -> dict[str, float]:
    """Largest |reference| per kind in this state (scale of the absolute floor)."""
    out = {k.value: 0.0 for k in Kind}
    prefix = {"act": Kind.FORWARD, "gact": Kind.BACKWARD, "pgrad": Kind.PARAM_GRAD, "param": Kind.PARAM}
    for key in list(torch.arrays) + list(torch.stats):
        kind = prefix.get(key.partition("/")[0])
        if kind is not None:
            out[kind.value] = max(out[kind.value], absmax(fetch(torch, key)))
    return out


def _memoised(memo: dict[tuple[Any, ...], Any] | None, objs: tuple[Any, ...], params: tuple[Any, ...],
              compute: Callable[[], Any]) -> Any:
    """``compute()`` once per identity of ``objs`` (and ``params``): an alias row holds the very arrays of
    its target row (the adapters share one handle per value), so its numbers are the target's. The
    objects are kept in the memo, so their ids cannot be reused by a later temporary."""
    if memo is None:
        return compute()
    key = tuple(id(o) for o in objs) + params
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (objs, compute())
    return hit[1]


def judge_pair(kind: Kind, name: str, ref: Tensor | None, port: Tensor | None, ref64: Tensor | None,
                low: bool, tol: Tolerances, scales: dict[str, float], tol_kind: Kind | None = None,
                memo: dict[tuple[Any, ...], Any] | None = None, strict: bool = False
                ) -> tuple[TensorMetrics, Judgement, float | None, str | None] | None:
    """Metrics + judgement of one pair; a missing side counts as zeros (no gradient reached it).
    ``tol_kind`` picks the bounds of another kind (parameters after optimizer steps carry gradient
    error: a zero-initialised bias after one step *is* -lr * its gradient)."""
    if ref is None and port is None:
        return None
    missing = "torch" if ref is None else ("jittor" if port is None else None)
    if ref is None:
        ref = _zeros_like(port)  # type: ignore[arg-type]
    if port is None:
        port = _zeros_like(ref)
    bk = tol_kind or kind
    has_floor = ref64 is not None and missing is None
    rtol = tol.rtol(bk, name) * (1.0 if has_floor or (strict and missing is None) else tol.widen(bk))
    atol = tol.atol(bk, scales.get(kind.value, 0.0))
    m = _memoised(memo, (ref, port), ("metrics", rtol, atol), lambda: measure(ref, port, rtol, atol))
    nf = e64 = None
    norm = tol.norm(bk)
    if has_floor:
        # ``ref64`` is the other-precision reference: float64 for a float32 run, float32 (``low``) for
        # a float64 run, where the reference itself is the float64 oracle
        err = relative_l2 if norm == "l2" else relative
        own = m.rel_l2 if norm == "l2" else m.rel

        def rel(a: Tensor, b: Tensor) -> float:
            return _memoised(memo, (a, b), (norm,), lambda: err(a, b))
        nf, e64 = (rel(ref, ref64), own) if low else (rel(ref64, ref), rel(ref64, port))
    numel = int(np.prod(m.shape_ref)) if m.shape_ref else 1
    j = judge(m, rtol, atol, noise_floor=nf, rel_fp64=e64, multiplier=tol.factor(numel), norm=norm)
    return m, j, e64, missing


def _sub_order(sub: str) -> tuple[tuple[int, int | str], ...]:
    """Traversal order of an output sub-path: numeric components compare as numbers ("2" < "10")."""
    return tuple((0, int(c)) if c.isdigit() else (1, c) for c in sub.split(".")) if sub else ()


def _tail_of(a: str, b: str) -> bool:
    """One sub-path is the other with leading components dropped (one side wraps the output in more
    containers, e.g. ``[(feats, scores), featmaps]`` vs ``(feats, scores)``: ``0.1`` vs ``1``)."""
    pa, pb = a.split(".") if a else [], b.split(".") if b else []
    short, long_ = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
    return long_[len(long_) - len(short):] == short


def pair_leaves(torch_out: Iterable[CallRecord], jittor_out: Iterable[CallRecord]
                 ) -> list[tuple[CallRecord | None, CallRecord | None]]:
    """The output leaves of one matched call, paired torch -> Jittor; a leaf without a partner is paired
    with None. In torch traversal order, then the Jittor-only leaves.

    Equal sub-path sets pair by sub-path (a leaf of another shape there is a shape mismatch). Otherwise the
    two structures differ (a bare tuple vs a nested list, an extra output) and sub-paths say nothing:
    leaves are grouped by shape, and a shape that occurs equally often on both sides pairs in order. A
    shape that occurs more often on one side is ambiguous by order; there a leaf pairs only with the one
    leaf whose sub-path is a tail of its own (or equal), when that is unique both ways. Leftovers that share
    a sub-path are still paired (a shape mismatch, as with equal structures); the rest have no partner.
    """
    ts = sorted(torch_out, key=lambda r: _sub_order(r.sub))
    js = sorted(jittor_out, key=lambda r: _sub_order(r.sub))
    if {r.sub for r in ts} == {r.sub for r in js}:
        by_sub = {r.sub: r for r in js}
        return [(r, by_sub[r.sub]) for r in sorted(ts, key=lambda r: r.sub)]
    partner: dict[int, CallRecord] = {}  # id(torch record) -> Jittor record
    shapes = {r.shape for r in ts} | {r.shape for r in js}
    for shape in shapes:
        tg = [r for r in ts if r.shape == shape]
        jg = [r for r in js if r.shape == shape]
        if len(tg) == len(jg):
            partner.update((id(a), b) for a, b in zip(tg, jg))
            continue
        for a in tg:
            cand = [b for b in jg if _tail_of(a.sub, b.sub)]
            if len(cand) == 1 and sum(_tail_of(x.sub, cand[0].sub) for x in tg) == 1:
                partner[id(a)] = cand[0]
    used = {id(b) for b in partner.values()}
    free_j = {r.sub: r for r in js if id(r) not in used}
    for a in ts:
        if id(a) not in partner and a.sub in free_j:
            partner[id(a)] = free_j.pop(a.sub)
    used = {id(b) for b in partner.values()}
    return [(a, partner.get(id(a))) for a in ts] + [(None, b) for b in js if id(b) not in used]


def unreturned_outputs(matches: MatchResult) -> tuple[list[CallRecord], list[CallRecord]]:
    """Output leaves of the whole model (the root call) that only one side returns: (torch's, the port's).

    A model may return more than its loss reads (GOLD-YOLO's reference also returns the neck's maps); such a
    leaf is not compared at the model's output (the module producing it is compared where it is made) and is
    reported as a warning, not as a shape mismatch of the whole model."""
    root = next((m for m in matches.matches if not m.torch.module and not m.jittor.module), None)
    if root is None:
        return [], []
    pairs = pair_leaves(root.torch.outputs, root.jittor.outputs)
    return [t for t, j in pairs if j is None and t is not None], [j for t, j in pairs if t is None and j is not None]


def _call_rows(state: str, m: Match, t: Side, j: Side, r64: Side | None, low: bool, tol: Tolerances,
               scales: dict[str, float], memo: dict[tuple[Any, ...], Any] | None = None,
               strict: bool = False) -> list[Comparison]:
    rows = []
    pairs = pair_leaves(m.torch.outputs, m.jittor.outputs)
    t_subs = {tr.sub for tr, _ in pairs if tr is not None}
    for tr, jr in pairs:
        if not m.torch.module and (tr is None or jr is None):
            continue  # the model returns it on one side only: see unreturned_outputs
        # ``sub`` is the torch leaf's path; a Jittor-only leaf keeps its own unless a torch leaf has it
        # (rows are looked up by (kind, order, sub)); which leaves are compared is in the row's keys
        sub = tr.sub if tr is not None else (jr.sub if jr.sub not in t_subs else f"jittor:{jr.sub}")
        rec64 = r64.by_id.get((tr.module, tr.call_index, tr.sub)) if (r64 and tr) else None
        for kind in (Kind.FORWARD, Kind.BACKWARD):
            get = (lambda side, rec: side.act(rec)) if kind == Kind.FORWARD else \
                  (lambda side, rec: side.gact(rec))
            if kind == Kind.BACKWARD and ((tr and tr.key in t.stale) or (jr and jr.key in j.stale)):
                continue  # gradient of an in-place-modified alias: w.r.t. another value (see aligner.sides.Side)
            ref = get(t, tr) if tr else None
            port = get(j, jr) if jr else None
            if kind == Kind.FORWARD and (tr is None or jr is None):
                # an output leaf only one side has: a structural mismatch, judged as a shape failure
                ref = ref if ref is not None else np.zeros((0,))
                port = port if port is not None else np.zeros((0,))
            ref64 = get(r64, rec64) if (r64 and rec64) else None
            res = judge_pair(kind, m.torch.module, ref, port, ref64, low, tol, scales, memo=memo, strict=strict)
            if res is None:
                continue
            metrics, jd, e64, missing = res
            rows.append(Comparison(
                state=state, kind=kind, order=m.torch.order, torch_name=m.torch.module,
                jittor_name=m.jittor.module, sub=sub, call=m.torch.call_index, module_type=m.torch.module_type,
                match=m.method.value, metrics=metrics, judgement=jd, rel_fp64=e64, missing=missing,
                jittor_order=m.jittor.order,
                torch_key=(tr.key if kind == Kind.FORWARD else tr.gkey) if tr else "",
                jittor_key=(jr.key if kind == Kind.FORWARD else jr.gkey) if jr else ""))
    return rows


def _param_rows(state: str, torch: Trace, jittor: Trace, torch64: Trace | None, low: bool, tol: Tolerances,
                scales: dict[str, float], mapping: dict[str, str], memo: dict[tuple[Any, ...], Any] | None = None,
                strict: bool = False) -> list[Comparison]:
    rows = []
    j_params = {p.name: p for p in jittor.params}
    types = {mi.name: mi.type for mi in torch.modules}
    for idx, p in enumerate(torch.params):
        if p.shared_with:
            continue  # tied tensors are compared once, under their first name
        jname = rename(p.name, mapping) or p.name
        jp = j_params.get(jname)
        if jp is None:
            continue  # a missing parameter is a finding, not a row
        method = "map" if jname != p.name else "name"
        # A buffer's value before the forward is the transferred one (verified at load); what is compared
        # is its value right after the captured forward (``buf/``): train-mode BN running statistics are a
        # deterministic function of the batch statistics, judged with the forward bounds and noise floor.
        if p.kind == ParamKind.BUFFER:
            pairs = [(Kind.PARAM, buffer_key(p.name), buffer_key(jname))]
        else:
            pairs = [(Kind.PARAM, param_key(p.name), param_key(jname))]
        if p.kind == ParamKind.TRAINABLE or jp.kind == ParamKind.TRAINABLE:
            pairs.append((Kind.PARAM_GRAD, pgrad_key(p.name), pgrad_key(jname)))
        for kind, tk, jk in pairs:
            ref, port = fetch(torch, tk), fetch(jittor, jk)
            ref64 = fetch(torch64, tk) if torch64 is not None else None
            if kind == Kind.PARAM and (ref is None or port is None):
                continue  # values not captured on one side (buffers: traces without ``buf/`` keys)
            tol_kind = Kind.FORWARD if tk.startswith("buf/") else None
            res = judge_pair(kind, p.name, ref, port, ref64, low, tol, scales, tol_kind, memo=memo, strict=strict)
            if res is None:
                continue
            metrics, jd, e64, missing = res
            rows.append(Comparison(state=state, kind=kind, order=idx, torch_name=p.name, jittor_name=jname,
                                   sub="", call=0, module_type=types.get(p.module, ""), match=method,
                                   metrics=metrics, judgement=jd, rel_fp64=e64, missing=missing,
                                   torch_key=tk, jittor_key=jk))
    return rows


def compare_steps(st: StateTraces, tolerances: Tolerances, noise: NoiseReference,
                  mapping: dict[str, str] | None = None) -> tuple[list[Comparison], list[dict[str, Any]]]:
    """Multi-step mode: parameter values and gradients after each optimiser step (state "<state>/step<k>"),
    and the ``steps`` block (per-step loss, weight drift = worst parameter rel, grad drift = worst
    gradient rel)."""
    mapping = mapping or {}
    t_steps = {int(s["step"]): s for s in st.torch.meta.get("steps") or []}
    j_steps = {int(s["step"]): s for s in st.jittor.meta.get("steps") or []}
    ks = sorted(set(t_steps) | set(j_steps) | _step_numbers(st.torch))
    r64, low = noise.trace, noise.lower
    rows: list[Comparison] = []
    block = []
    types = {mi.name: mi.type for mi in st.torch.modules}
    for k in ks:
        state = f"{st.state}/step{k}"
        scales = {Kind.PARAM.value: 0.0, Kind.PARAM_GRAD.value: max(
            (absmax(fetch(st.torch, key)) for key in st.torch.arrays if key.startswith(f"step/{k}/pgrad/")),
            default=0.0)}
        krows = []
        for idx, p in enumerate(st.torch.params):
            if p.shared_with:
                continue
            jname = rename(p.name, mapping) or p.name
            for kind, sub in ((Kind.PARAM, "param"), (Kind.PARAM_GRAD, "pgrad")):
                tk, jk = f"step/{k}/{sub}/{p.name}", f"step/{k}/{sub}/{jname}"
                ref, port = fetch(st.torch, tk), fetch(st.jittor, jk)
                if ref is None and port is None:
                    continue
                ref64 = fetch(r64, tk) if r64 is not None else None
                res = judge_pair(kind, p.name, ref, port, ref64, low, tolerances, scales, Kind.PARAM_GRAD)
                if res is None:
                    continue
                metrics, jd, e64, missing = res
                krows.append(Comparison(state=state, kind=kind, order=idx, torch_name=p.name, jittor_name=jname,
                                        sub="", call=0, module_type=types.get(p.module, ""),
                                        match="map" if jname != p.name else "name", metrics=metrics,
                                        judgement=jd, rel_fp64=e64, missing=missing, torch_key=tk,
                                        jittor_key=jk))
        rows += krows
        lt, lj = t_steps.get(k, {}).get("loss"), j_steps.get(k, {}).get("loss")
        block.append({"state": st.state, "step": k, "loss_torch": lt, "loss_jittor": lj,
                      "weight_drift": max((r.metrics.rel for r in krows if r.kind == Kind.PARAM), default=None),
                      "grad_drift": max((r.metrics.rel for r in krows if r.kind == Kind.PARAM_GRAD), default=None),
                      "failed": sum(1 for r in krows if not r.ok)})
    return rows, block


def _step_numbers(trace: Trace) -> set[int]:
    out = set()
    for key in list(trace.arrays) + list(trace.stats):
        if key.startswith("step/"):
            part = key.split("/", 2)[1]
            if part.isdigit():
                out.add(int(part))
    return out


# Judgement metric suffix of a row that failed on the float32 port but whose float64 port run agrees.
PORT64_SUFFIX = "_port64"


def needs_port_sample(rows: list[Comparison]) -> bool:
    """True when some row failed its noise-floor bound (``rel_fp64`` / ``rel_l2_fp64``): only then can the
    port's own float64 run tell its float32 rounding from a real difference."""
    return any(not r.ok and r.judgement.metric.endswith("_fp64") for r in rows)


def confirm_with_port64(rows: list[Comparison], noise: NoiseReference, port64: Trace) -> list[Comparison]:
    """Re-judge every row that failed its noise-floor bound on the port's own float64 run.

    The noise floor bounds the port's float32 error by the *reference's* float32 error; a port whose
    kernels round worse (Jittor's one-pass BatchNorm variance: 12-300x the reference's error, measured
    on the zoo) or flip a ReLU/max-pool/top-k tie elsewhere fails it while computing the same function.
    Its float64 run removes its own rounding: if ``err(port64, ref64)`` is within the same bound, the
    float32 difference was the port's rounding, and the row passes with metric ``<metric>_port64`` (the
    float32 error stays in ``rel_fp64``). A real difference (a wrong eps, a missing residual) is there in
    float64 too and keeps failing.
    """
    if noise.trace is None or noise.lower:
        return rows
    ref64, p64 = Side(noise.trace), Side(port64)
    out = []
    for r in rows:
        base = r.judgement.metric
        if r.ok or not base.endswith("_fp64") or not r.torch_key or not r.jittor_key:
            out.append(r)
            continue
        a, b = ref64.tensor(r.torch_key), p64.tensor(r.jittor_key)
        if a is None or b is None or tuple(a.shape) != tuple(b.shape):
            out.append(r)
            continue
        err = relative_l2(a, b) if base.startswith("rel_l2") else relative(a, b)
        if err <= r.judgement.bound:
            jd = Judgement(ok=True, metric=base.removesuffix("_fp64") + PORT64_SUFFIX, value=err,
                           bound=r.judgement.bound, noise_floor=r.judgement.noise_floor)
            r = replace(r, judgement=jd)
        out.append(r)
    return out
