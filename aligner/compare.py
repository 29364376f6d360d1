"""Matched calls + tolerances -> one :class:`Comparison` per compared tensor (no I/O, no logging).

Rows: forward outputs and the loss gradient w.r.t. them for every matched module call (one row
per output leaf), every parameter's gradient and value, every buffer's value after the captured
forward (and, in multi-step mode, parameters after each optimizer step). Each row is judged with the per-layer tolerance, the noise floor when the
reference was also captured at the other precision, and an absolute floor scaled by the largest
reference value of the same kind and state. Localisation (introduced error, first divergences)
lives in :mod:`aligner.divergence`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from aligner.match import Match, MatchResult, match_traces, rename
from aligner.metrics import TensorMetrics, compare_arrays, compare_stats, rel_error, rel_l2_error
from aligner.records import CallRecord, ParamKind, TensorStats, Trace, buffer_key, param_key, pgrad_key
from aligner.tolerances import Judgement, Kind, Tolerances, judge

__all__ = ["StateTraces", "Comparison", "Divergence", "StateComparison", "compare_state", "compare_steps",
           "fetch", "reference_mismatch", "ROUNDOFF"]

# Floor of the input error in introduced_ratio: one unit of round-off of the compared dtype.
ROUNDOFF = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}

Tensor = np.ndarray | TensorStats


@dataclass(frozen=True)
class StateTraces:
    """The traces of one model state: torch (reference), jittor (port), optional float64 torch."""
    state: str
    torch: Trace
    jittor: Trace
    torch64: Trace | None = None
    # float64 runs: the reference in float32. Its error against the float64 reference measures how
    # much each tensor amplifies float32-level perturbations (Jittor computes some float64 ops, e.g.
    # bilinear sampling coordinates, in float32), and bounds the float64 port's error the same way.
    torch32: Trace | None = None


@dataclass(frozen=True)
class Comparison:
    """One compared tensor (a ``layers`` row of results.json)."""
    state: str
    kind: Kind
    order: int                   # torch execution index (param rows: inventory index)
    torch_name: str
    jittor_name: str
    sub: str
    call: int
    module_type: str
    match: str
    metrics: TensorMetrics
    judgement: Judgement
    rel_fp64: float | None = None          # err(port, ref64) when a float64 reference exists
    introduced_ratio: float | None = None
    missing: str | None = None             # "torch" | "jittor": that side had no tensor (zeros used)
    jittor_order: int = -1
    torch_key: str = ""
    jittor_key: str = ""

    @property
    def ok(self) -> bool:
        return self.judgement.ok

    def to_row(self) -> dict[str, Any]:
        m = self.metrics
        return {"state": self.state, "kind": self.kind.value, "order": self.order,
                "torch_name": self.torch_name, "jittor_name": self.jittor_name, "sub": self.sub,
                "call": self.call, "module_type": self.module_type, "match": self.match,
                "shape_torch": list(m.shape_ref), "shape_jittor": list(m.shape_port),
                "max_abs": m.max_abs, "rel": m.rel, "mean_abs": m.mean_abs, "cosine": m.cosine,
                "frac_close": m.frac_close, "required_atol": m.required_atol,
                "nan_torch": m.nan_ref, "nan_jittor": m.nan_port,
                "inf_torch": m.inf_ref, "inf_jittor": m.inf_port,
                "zero_frac_torch": m.zero_frac_ref, "zero_frac_jittor": m.zero_frac_port,
                "tol": self.judgement.bound, "noise_floor": self.judgement.noise_floor,
                "introduced_ratio": self.introduced_ratio, "ok": self.ok,
                "rel_fp64": self.rel_fp64, "rel_l2": m.rel_l2, "metric": self.judgement.metric,
                "missing": self.missing, "stats_only": m.stats_only}


@dataclass(frozen=True)
class Divergence:
    """Where the port first leaves tolerance in one direction of one state."""
    state: str | None            # None: derived from a state-independent finding
    direction: str               # "forward" | "backward"
    location: str                # module blamed (torch name), or "loss" / "inputs"
    torch_name: str              # the first failing row's names (may differ from location)
    jittor_name: str
    metric: str
    value: float
    tol: float
    message: str
    order: int
    sub: str = ""
    introduced_ratio: float | None = None
    candidates: tuple[str, ...] = ()        # backward: every module that consumed the tensor

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "direction": self.direction, "location": self.location,
                "torch_name": self.torch_name, "jittor_name": self.jittor_name,
                "metric": self.metric, "value": self.value, "tol": self.tol, "message": self.message}


@dataclass
class StateComparison:
    state: str
    matches: MatchResult
    rows: list[Comparison]
    forward: Divergence | None
    backward: Divergence | None
    noise_floor_used: bool
    scales: dict[str, float] = field(default_factory=dict)
    reference_mismatch: list[str] = field(default_factory=list)  # params differing in the noise reference
    uncaptured: list[str] = field(default_factory=list)  # output gradients one side failed to record
    # key resolution of (torch, jittor), kept for aligner.divergence.locate, which drops it (it holds the traces)
    sides: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)


def fetch(trace: Trace, key: str, alias: str | None = None) -> Tensor | None:
    """The array (or stats) stored under ``key``, following an alias when ``key`` itself is absent."""
    for k in (key, alias):
        if k is None:
            continue
        if k in trace.arrays:
            return trace.arrays[k]
        if k in trace.stats:
            return trace.stats[k]
    return None


def _same_value(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None or a is b:
        return True  # nothing recorded separately (or one shared handle): trust the alias
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    sa = a if isinstance(a, TensorStats) else TensorStats.of(a)
    sb = b if isinstance(b, TensorStats) else TensorStats.of(b)
    return sa.sha1 == sb.sha1


def _metrics(ref: Tensor, port: Tensor, rtol: float, atol: float) -> TensorMetrics:
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return compare_arrays(ref, port, rtol=rtol, atol=atol)
    rs = ref if isinstance(ref, TensorStats) else TensorStats.of(ref)
    ps = port if isinstance(port, TensorStats) else TensorStats.of(port)
    return compare_stats(rs, ps, rtol=rtol, atol=atol)


def _rel(ref: Tensor, port: Tensor) -> float:
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return rel_error(ref, port)
    return _metrics(ref, port, 0.0, 0.0).rel


def _rel_l2(ref: Tensor, port: Tensor) -> float:
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return rel_l2_error(ref, port)
    return float(_metrics(ref, port, 0.0, 0.0).rel_l2 or 0.0)


def _absmax(t: Tensor | None) -> float:
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


def _zeros_like(t: Tensor) -> Tensor:
    if isinstance(t, np.ndarray):
        return np.zeros_like(t)
    n = int(np.prod(t.shape)) if t.shape else 1
    return TensorStats(tuple(t.shape), t.dtype, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 1.0 if n else 0.0, "")


class _Side:
    """Key resolution for one trace: aliases and output records by (module, call, sub)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.canon: dict[str, str] = {}
        self.by_id: dict[tuple[str, int, str], CallRecord] = {}
        for rec in trace.calls:
            self.by_id[(rec.module, rec.call_index, rec.sub)] = rec
        recs = {r.key: r for r in trace.calls}
        for rec in trace.calls:
            key, seen = rec.key, set()
            while key in recs and recs[key].alias_of and key not in seen:
                seen.add(key)
                key = recs[key].alias_of  # type: ignore[assignment]
            self.canon[rec.key] = key
        # An alias whose recorded value differs from its target was modified in place after the
        # target was recorded (torch's inplace ReLU/SiLU return the same tensor object). Its gradient,
        # captured on the target, is w.r.t. the value before the in-place op: not comparable.
        self.stale: set[str] = set()
        for rec in trace.calls:
            if rec.alias_of and not _same_value(fetch(trace, rec.key), fetch(trace, rec.alias_of)):
                self.stale.add(rec.key)

    def act(self, rec: CallRecord) -> Tensor | None:
        return fetch(self.trace, rec.key, rec.alias_of)

    def gact(self, rec: CallRecord) -> Tensor | None:
        alias = "g" + rec.alias_of if rec.alias_of else None
        return fetch(self.trace, rec.gkey, alias)

    def input_(self, key: str) -> Tensor | None:
        return fetch(self.trace, key, self.canon.get(key))


def compare_state(st: StateTraces, tolerances: Tolerances, mapping: dict[str, str] | None = None,
                  matches: MatchResult | None = None) -> StateComparison:
    """Compare one state: match calls (unless given) and build every row (see :mod:`aligner.divergence`
    for where the rows first leave tolerance)."""
    matches = matches if matches is not None else match_traces(st.torch, st.jittor, mapping)
    t, j = _Side(st.torch), _Side(st.jittor)
    other = st.torch64 if st.torch64 is not None else st.torch32
    low = st.torch64 is None and st.torch32 is not None
    mismatch = reference_mismatch(st.torch, other) if other is not None else []
    if mismatch:
        other = None  # a reference with other weights measures nothing: no noise floor in this state
    r64 = _Side(other) if (other is not None and tolerances.noise_floor) else None
    scales = _scales(st.torch)
    rows: list[Comparison] = []
    memo: dict[tuple[Any, ...], Any] = {}
    for m in matches.matches:
        rows += _call_rows(st.state, m, t, j, r64, low, tolerances, scales, memo)
    rows += _param_rows(st.state, st.torch, st.jittor, other if r64 else None, low, tolerances,
                        scales, mapping or {})
    return StateComparison(st.state, matches, rows, None, None, r64 is not None, scales, mismatch, sides=(t, j))


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


def _scales(torch: Trace) -> dict[str, float]:
    """Largest |reference| per kind in this state (scale of the absolute floor)."""
    out = {k.value: 0.0 for k in Kind}
    prefix = {"act": Kind.FORWARD, "gact": Kind.BACKWARD, "pgrad": Kind.PARAM_GRAD, "param": Kind.PARAM}
    for key in list(torch.arrays) + list(torch.stats):
        kind = prefix.get(key.partition("/")[0])
        if kind is not None:
            out[kind.value] = max(out[kind.value], _absmax(fetch(torch, key)))
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


def _judge_pair(kind: Kind, name: str, ref: Tensor | None, port: Tensor | None, ref64: Tensor | None,
                low: bool, tol: Tolerances, scales: dict[str, float], tol_kind: Kind | None = None,
                memo: dict[tuple[Any, ...], Any] | None = None
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
    rtol = tol.rtol(bk, name) * (1.0 if has_floor else tol.widen(bk))
    atol = tol.atol(bk, scales.get(kind.value, 0.0))
    m = _memoised(memo, (ref, port), ("metrics", rtol, atol), lambda: _metrics(ref, port, rtol, atol))
    nf = e64 = None
    norm = tol.norm(bk)
    if has_floor:
        # ``ref64`` is the other-precision reference: float64 for a float32 run, float32 (``low``) for
        # a float64 run, where the reference itself is the float64 oracle
        err = _rel_l2 if norm == "l2" else _rel
        own = m.rel_l2 if norm == "l2" else m.rel

        def rel(a: Tensor, b: Tensor) -> float:
            return _memoised(memo, (a, b), (norm,), lambda: err(a, b))
        nf, e64 = (rel(ref, ref64), own) if low else (rel(ref64, ref), rel(ref64, port))
    numel = int(np.prod(m.shape_ref)) if m.shape_ref else 1
    j = judge(m, rtol, atol, noise_floor=nf, rel_fp64=e64, multiplier=tol.factor(numel), norm=norm)
    return m, j, e64, missing


def _call_rows(state: str, m: Match, t: _Side, j: _Side, r64: _Side | None, low: bool, tol: Tolerances,
               scales: dict[str, float], memo: dict[tuple[Any, ...], Any] | None = None) -> list[Comparison]:
    rows = []
    j_subs = {r.sub: r for r in m.jittor.outputs}
    t_subs = {r.sub: r for r in m.torch.outputs}
    for sub in sorted(set(t_subs) | set(j_subs)):
        tr, jr = t_subs.get(sub), j_subs.get(sub)
        rec64 = r64.by_id.get((tr.module, tr.call_index, tr.sub)) if (r64 and tr) else None
        for kind in (Kind.FORWARD, Kind.BACKWARD):
            get = (lambda side, rec: side.act(rec)) if kind == Kind.FORWARD else \
                  (lambda side, rec: side.gact(rec))
            if kind == Kind.BACKWARD and ((tr and tr.key in t.stale) or (jr and jr.key in j.stale)):
                continue  # gradient of an in-place-modified alias: w.r.t. another value (see _Side)
            ref = get(t, tr) if tr else None
            port = get(j, jr) if jr else None
            if kind == Kind.FORWARD and (tr is None or jr is None):
                # an output leaf only one side has: a structural mismatch, judged as a shape failure
                ref = ref if ref is not None else np.zeros((0,))
                port = port if port is not None else np.zeros((0,))
            ref64 = get(r64, rec64) if (r64 and rec64) else None
            res = _judge_pair(kind, m.torch.module, ref, port, ref64, low, tol, scales, memo=memo)
            if res is None:
                continue
            metrics, jd, e64, missing = res
            rows.append(Comparison(
                state, kind, m.torch.order, m.torch.module, m.jittor.module, sub, m.torch.call_index,
                m.torch.module_type, m.method.value, metrics, jd, e64, None, missing, m.jittor.order,
                (tr.key if kind == Kind.FORWARD else tr.gkey) if tr else "",
                (jr.key if kind == Kind.FORWARD else jr.gkey) if jr else ""))
    return rows


def _param_rows(state: str, torch: Trace, jittor: Trace, torch64: Trace | None, low: bool, tol: Tolerances,
                scales: dict[str, float], mapping: dict[str, str]) -> list[Comparison]:
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
            res = _judge_pair(kind, p.name, ref, port, ref64, low, tol, scales, tol_kind)
            if res is None:
                continue
            metrics, jd, e64, missing = res
            rows.append(Comparison(state, kind, idx, p.name, jname, "", 0, types.get(p.module, ""),
                                   method, metrics, jd, e64, None, missing, -1, tk, jk))
    return rows


def compare_steps(st: StateTraces, tolerances: Tolerances, mapping: dict[str, str] | None = None
                  ) -> tuple[list[Comparison], list[dict[str, Any]]]:
    """Multi-step mode: parameter values and gradients after each optimiser step (state "<state>/step<k>"),
    and the ``steps`` block (per-step loss, weight drift = worst parameter rel, grad drift = worst
    gradient rel)."""
    mapping = mapping or {}
    t_steps = {int(s["step"]): s for s in st.torch.meta.get("steps") or []}
    j_steps = {int(s["step"]): s for s in st.jittor.meta.get("steps") or []}
    ks = sorted(set(t_steps) | set(j_steps) | _step_numbers(st.torch))
    other = st.torch64 if st.torch64 is not None else st.torch32
    low = st.torch64 is None and st.torch32 is not None
    if other is not None and reference_mismatch(st.torch, other):
        other = None
    r64 = other if tolerances.noise_floor else None
    rows: list[Comparison] = []
    block = []
    types = {mi.name: mi.type for mi in st.torch.modules}
    for k in ks:
        state = f"{st.state}/step{k}"
        scales = {Kind.PARAM.value: 0.0, Kind.PARAM_GRAD.value: max(
            (_absmax(fetch(st.torch, key)) for key in st.torch.arrays if key.startswith(f"step/{k}/pgrad/")),
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
                res = _judge_pair(kind, p.name, ref, port, ref64, low, tolerances, scales, Kind.PARAM_GRAD)
                if res is None:
                    continue
                metrics, jd, e64, missing = res
                krows.append(Comparison(state, kind, idx, p.name, jname, "", 0, types.get(p.module, ""),
                                        "map" if jname != p.name else "name", metrics, jd, e64, None,
                                        missing, -1, tk, jk))
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
