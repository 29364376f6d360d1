"""Frozen records of the analysis: what a comparison, a localisation and a finding rule produce.

The trace side (what a capture produced) is in :mod:`aligner.records`; these are built from it by
:mod:`aligner.compare` (rows), :mod:`aligner.divergence` (where the port first leaves tolerance) and the
rules in :mod:`aligner.rules` (findings). Numpy only, no framework import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum, unique
from typing import Any

from aligner.match import MatchResult
from aligner.metrics import TensorMetrics
from aligner.records import FindingType, Severity, Trace

__all__ = ["Kind", "Judgement", "StateTraces", "NoiseReference", "Comparison", "Divergence", "Localisation",
           "StateComparison", "Finding"]


@unique
class Kind(StrEnum):
    """What a compared tensor is (the ``kind`` of a results.json layer row)."""
    FORWARD = "forward"        # module output
    BACKWARD = "backward"      # gradient of the loss w.r.t. a module output
    PARAM_GRAD = "param_grad"  # gradient of the loss w.r.t. a parameter
    PARAM = "param"            # parameter value (after weight transfer or an optimiser step)


@dataclass(frozen=True)
class Judgement:
    """Outcome of judging one comparison."""
    ok: bool
    # "rel" | "rel_l2" (no float64 reference), "rel_fp64" | "rel_l2_fp64" (noise floor), "rel_port64" |
    # "rel_l2_port64" (the port's float64 run agrees), "noise" (not checkable), "max_abs", "shape", "nan_inf"
    metric: str
    value: float         # the judged number
    bound: float         # what it was judged against ("tol" in results.json)
    noise_floor: float | None = None  # err(ref32, ref64) when used


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

    @property
    def other(self) -> Trace | None:
        """The reference at the other precision, the one that measures the noise (float64 first)."""
        return self.torch64 if self.torch64 is not None else self.torch32

    @property
    def other_is_lower(self) -> bool:
        """The other-precision reference is the float32 one (a float64 run)."""
        return self.torch64 is None and self.torch32 is not None


@dataclass(frozen=True)
class NoiseReference:
    """The other-precision reference of one state as the comparison uses it
    (:func:`aligner.compare.noise_reference`)."""
    trace: Trace | None          # None: no noise floor for this state's tensors
    lower: bool                  # it is the float32 reference of a float64 run
    mismatch: list[str]          # parameters whose values differ from the reference's (then ``trace`` is None)


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
                "value": self.judgement.value,
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


@dataclass(frozen=True)
class Localisation:
    """What :func:`aligner.divergence.locate` derives from one state's rows."""
    rows: list[Comparison]                 # with introduced ratios, uncaptured gradient rows dropped
    uncaptured: list[str]                  # output gradients one side failed to record
    forward: Divergence | None
    backward: Divergence | None


@dataclass(frozen=True)
class StateComparison:
    """One compared model state: its rows and where they first leave tolerance."""
    state: str
    matches: MatchResult
    rows: list[Comparison]
    forward: Divergence | None
    backward: Divergence | None
    noise_floor_used: bool
    reference_mismatch: list[str] = field(default_factory=list)  # params differing in the noise reference
    uncaptured: list[str] = field(default_factory=list)  # output gradients one side failed to record


@dataclass(frozen=True)
class Finding:
    """One typed finding (an entry of results.json ``findings``; the id is given at output time)."""
    type: FindingType
    severity: Severity
    state: str | None          # model state it comes from; None when state-independent
    location: str              # module path (torch name), parameter name, "anchors", "loss", ...
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    likely_cause: str = ""
    message_zh: str = ""
    likely_cause_zh: str = ""
    # execution order / inventory index / position in the loss, the tie-break of the finding order
    # (aligner.rules.order); None: not tied to a position (sorted after the positioned ones)
    position: int | None = None

    def to_dict(self, fid: str) -> dict[str, Any]:
        return {"id": fid, "type": self.type.value, "severity": self.severity.value,
                "state": self.state, "location": self.location, "message": self.message,
                "message_zh": self.message_zh or self.message, "evidence": self.evidence,
                "likely_cause": self.likely_cause, "likely_cause_zh": self.likely_cause_zh or self.likely_cause}
