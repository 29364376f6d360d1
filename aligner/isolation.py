"""Module isolation, the framework-free half: judge what one port module computes on the reference's own inputs.

End to end, a module's error is its own plus everything it inherited; once an early module diverges, every
later one is "inherited" and its own deviation is invisible. Isolation removes the inheritance: the runner
(:mod:`aligner.adapters.isolation`) feeds each matched call's *reference* inputs into the reference module
(float32 and float64) and into the port's module alone, pushes the same probe gradient back through both, and
hands over one :class:`IsolatedCall` per call. Here each tensor of it (outputs, gradients w.r.t. the inputs,
parameter gradients) is judged like a row of the end-to-end comparison: against the reference's own float32
error on the same inputs (the noise floor), and a tensor that fails only by the port's float32 rounding is
re-judged on the port module's float64 run (as :func:`aligner.compare.confirm_with_port64` does end to end).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from aligner.analysis_records import Judgement, Kind
from aligner.compare import PORT64_SUFFIX, judge_pair
from aligner.metrics import relative, relative_l2
from aligner.tolerances import Tolerances

__all__ = ["CallPair", "IsolatedTensor", "IsolatedCall", "IsolationRow", "IsolatedModule", "judge_isolated",
           "Isolate"]


@dataclass(frozen=True)
class CallPair:
    """One matched module call, by name on each side (what the runner replays)."""
    order: int              # torch execution index of the call
    torch_name: str
    torch_call: int         # k-th call of the torch module
    jittor_name: str
    jittor_call: int
    module_type: str


@dataclass(frozen=True)
class IsolatedTensor:
    """One tensor of an isolated call: reference (float32 / float64) and port values on the same inputs."""
    kind: Kind              # FORWARD: an output leaf; BACKWARD: gradient w.r.t. an input; PARAM_GRAD
    name: str               # output sub-path, ``input <i>``, or the parameter's name under the module
    ref: np.ndarray
    ref64: np.ndarray | None
    port: np.ndarray


@dataclass(frozen=True)
class IsolatedCall:
    """What the runner produced for one call: its tensors, or why it could not be replayed."""
    call: CallPair
    tensors: list[IsolatedTensor] = field(default_factory=list)
    # the port module's float64 run on the same inputs: {(kind, name): array}; asked for only when a
    # tensor fails the reference's noise bound
    port64: Callable[[], Mapping[tuple[Kind, str], np.ndarray]] | None = None
    skipped: str | None = None
    # the reference module's float64 run, when the tensors do not carry it: asked for only when a tensor is
    # not already within half its bound of the float32 reference (see :func:`judge_isolated`)
    ref64: Callable[[], Mapping[tuple[Kind, str], np.ndarray]] | None = None


# The runner's signature as the analysis calls it: replay these calls, hand each result to the sink.
Isolate = Callable[[list[CallPair], Callable[[IsolatedCall], None]], None]


@dataclass(frozen=True)
class IsolationRow:
    """One judged tensor of an isolated call."""
    kind: Kind
    name: str
    judgement: Judgement

    @property
    def ok(self) -> bool:
        return self.judgement.ok


@dataclass(frozen=True)
class IsolatedModule:
    """One isolated call, judged (what the analysis keeps; no arrays)."""
    call: CallPair
    rows: list[IsolationRow]
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is not None or all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[IsolationRow]:
        return [r for r in self.rows if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        c = self.call
        return {"order": c.order, "torch_name": c.torch_name, "call": c.torch_call, "jittor_name": c.jittor_name,
                "module_type": c.module_type, "ok": self.ok, "skipped": self.skipped,
                "rows": [{"kind": r.kind.value, "name": r.name, "ok": r.ok, "metric": r.judgement.metric,
                          "value": r.judgement.value, "tol": r.judgement.bound,
                          "noise_floor": r.judgement.noise_floor} for r in self.rows]}


def _near(t: IsolatedTensor, tol: Tolerances, name: str) -> Judgement | None:
    """A pass without the float64 reference: the port within half the bound of the float32 reference.

    With the noise floor ``nf = err(ref32, ref64)`` the verdict is ``err(port, ref64) <= max(k*nf, rtol)``, and
    ``err(port, ref64) <= nf + err(port, ref32)`` (the norms of the two references agree to float32 rounding).
    So ``err(port, ref32) <= rtol/2`` passes for any k >= 2: if nf <= rtol/2 the sum is <= rtol, else it is
    < 2*nf. The float64 replay is then not needed."""
    if min(tol.multiplier, tol.small_multiplier) < 2 or t.ref.shape != t.port.shape:
        return None
    l2 = tol.norm(t.kind) == "l2"
    err = relative_l2(t.ref, t.port) if l2 else relative(t.ref, t.port)
    half = tol.rtol(t.kind, name) / 2
    if not (np.isfinite(err) and err <= half and np.isfinite(t.ref).all() and np.isfinite(t.port).all()):
        return None
    return Judgement(ok=True, metric="rel_l2" if l2 else "rel", value=float(err), bound=half)


def judge_isolated(ic: IsolatedCall, tol: Tolerances, scales: Mapping[str, float]) -> IsolatedModule:
    """Judge every tensor of one isolated call; a tensor failing the noise bound is re-judged on the port's
    float64 run (fetched once per call, only then)."""
    if ic.skipped is not None:
        return IsolatedModule(ic.call, [], ic.skipped)
    rows: list[IsolationRow] = []
    port64: Mapping[tuple[Kind, str], np.ndarray] | None = None
    ref64: Mapping[tuple[Kind, str], np.ndarray] | None = None
    for t in ic.tensors:
        if t.ref64 is None and ic.ref64 is not None:
            near = _near(t, tol, ic.call.torch_name)
            if near is not None:
                rows.append(IsolationRow(t.kind, t.name, near))
                continue
            if ref64 is None:
                ref64 = ic.ref64()
            t = replace(t, ref64=ref64.get((t.kind, t.name)))
        res = judge_pair(t.kind, ic.call.torch_name, t.ref, t.port, t.ref64, False, tol, dict(scales))
        if res is None:
            continue
        jd = res[1]
        if not jd.ok and jd.metric.endswith("_fp64") and ic.port64 is not None and t.ref64 is not None:
            if port64 is None:
                port64 = ic.port64()
            p = port64.get((t.kind, t.name))
            if p is not None and p.shape == t.ref64.shape:
                err = relative_l2(t.ref64, p) if jd.metric.startswith("rel_l2") else relative(t.ref64, p)
                if err <= jd.bound:
                    jd = Judgement(ok=True, metric=jd.metric.removesuffix("_fp64") + PORT64_SUFFIX, value=err,
                                   bound=jd.bound, noise_floor=jd.noise_floor)
        rows.append(IsolationRow(t.kind, t.name, jd))
    return IsolatedModule(ic.call, rows)
