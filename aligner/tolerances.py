"""Tolerances: defaults per dtype and direction, per-layer overrides, and the float64 noise floor.

A bound is a relative error (``max|port-ref| / max|ref|``, see :mod:`aligner.metrics`). Overrides
follow Polygraphy: a float, or a dict from layer name to float where ``""`` is the default. A key
matches a layer by exact name or by dotted prefix (``"neck"`` covers ``neck.Rep_p4.block.0``); the
longest matching key wins.

The noise floor (TorchDynamo's accuracy checker, ``torch._dynamo.utils.same``): when the reference
also ran in float64, the port passes a tensor iff
``err(port32, ref64) <= max(multiplier * err(ref32, ref64), floor)``, i.e. it may be as wrong as
the reference itself is in float32, times a safety factor. This matters for gradients: near GOLD-YOLO's
initial state the official float32 gradients are up to ~3% away from float64 (train-mode BN backward
cancels most of the incoming gradient), so any fixed float32 gradient tolerance either misses bugs or
raises false alarms.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aligner.analysis_records import Judgement, Kind
from aligner.metrics import TensorMetrics

__all__ = ["Tolerances", "judge", "lookup", "noise_dominated", "NOISE"]


# Relative bounds, and the floor under the noise-floor bound. float32 forward (max-norm): conv/BN/
# activation chains agree to ~1e-6 per layer (docs/jittor-notes.md, "Numerics against PyTorch"), deep GOLD-YOLO stacks to ~1e-5.
# float32 gradients (L2-norm, see ``norms``): near a BN-dominated state the official code's own
# float32 gradients are 1e-4..3e-2 off float64, and two float32 implementations are independent
# samples of that noise (measured on the correct GOLD-YOLO-N port: Jittor's backbone gradients
# 2.3e-3 off float64 where torch's are 8e-5 at 160; up to 7.5e-3 at 500), so the floor is 2e-2 and
# the noise floor raises it where the reference itself is noisier; graph breaks and wrong ops give
# O(1). float64: Jittor computes bilinear sampling coordinates in float32 even for float64 tensors
# (~1e-7, amplified by BN; 6.6e-4 in neck gradients at 500), which the float32 reference bounds.
_DEFAULT_RTOL: dict[str, dict[Kind, float]] = {
    "float32": {Kind.FORWARD: 1e-4, Kind.BACKWARD: 2e-2, Kind.PARAM_GRAD: 2e-2, Kind.PARAM: 1e-6},
    "float64": {Kind.FORWARD: 1e-5, Kind.BACKWARD: 1e-5, Kind.PARAM_GRAD: 1e-5, Kind.PARAM: 1e-12},
}
# Absolute floor as a fraction of the largest |reference| of the same kind and state: a tensor whose
# whole error is below it passes. It exists for tensors that are mathematically zero but hold float
# round-off (e.g. a conv bias in front of a train-mode BN: gradient ~1e-9 of pure noise).
_DEFAULT_ATOL_SCALE: dict[str, dict[Kind, float]] = {
    "float32": {Kind.FORWARD: 1e-7, Kind.BACKWARD: 1e-6, Kind.PARAM_GRAD: 1e-6, Kind.PARAM: 0.0},
    "float64": {Kind.FORWARD: 1e-12, Kind.BACKWARD: 1e-11, Kind.PARAM_GRAD: 1e-11, Kind.PARAM: 0.0},
}
# Loss scalars and stage summaries (relative).
_DEFAULT_LOSS_RTOL = {"float32": 1e-4, "float64": 1e-7}
# Without a reference at the other precision there is no noise floor, and the bounds above would
# raise false alarms on a correct port (measured on GOLD-YOLO-N, float32 port vs float32 torch:
# perturbed-state forward outputs up to 5.2e-4 apart at 160, output gradients 3.5e-2 (L2), and the
# attention q/k/v weight gradients 0.17 (L2: softmax-dominated, ill-conditioned); float64 neck
# gradients 6.6e-4 at 500, from Jittor's float32 bilinear coordinates): widen them by these factors
# then. Gradient checks without a noise floor only catch gross errors (graph breaks give 1.0); a
# noise-floor run is the default and the recommended check.
_DEFAULT_NO_FLOOR = {
    "float32": {Kind.FORWARD: 10.0, Kind.BACKWARD: 5.0, Kind.PARAM_GRAD: 25.0, Kind.PARAM: 1.0},
    "float64": {Kind.FORWARD: 1.0, Kind.BACKWARD: 200.0, Kind.PARAM_GRAD: 200.0, Kind.PARAM: 1.0},
}

Bound = float | Mapping[str, float]


def lookup(bound: Bound, name: str) -> float:
    """Resolve a float-or-dict bound for layer ``name`` (exact, then longest dotted prefix, then "")."""
    if not isinstance(bound, Mapping):
        return float(bound)
    if name in bound:
        return float(bound[name])
    best, best_len = None, -1
    for key, value in bound.items():
        if key and (name.startswith(key + ".") or name.startswith(key + "/")) and len(key) > best_len:
            best, best_len = value, len(key)
    if best is not None:
        return float(best)
    if "" not in bound:
        raise KeyError(f"no tolerance for {name!r} and no default key '' in {dict(bound)!r}")
    return float(bound[""])


@dataclass(frozen=True)
class Tolerances:
    """Every bound the comparison uses; build with :meth:`defaults` and override fields."""
    dtype: str = "float32"
    forward: Bound = 1e-4
    backward: Bound = 1e-3
    param_grad: Bound = 1e-3
    param: Bound = 1e-6
    atol_scale: Mapping[str, float] = field(default_factory=dict)  # Kind value -> fraction
    loss: float = 1e-4
    noise_floor: bool = True      # use the float64 reference when it was captured
    # the port may be this many times as wrong as the reference's own float32 (TorchDynamo uses 2-3
    # for the same framework; a port has other kernels and summation orders: measured up to 2.8x on
    # the correct GOLD-YOLO-N port, forward, at 500)
    multiplier: float = 5.0
    # rows whose matched tensor has fewer elements use a larger multiplier (max-norm statistics of a
    # handful of values are noisy; TorchDynamo does the same for tensors under 1000 elements)
    small_numel: int = 1000
    small_multiplier: float = 10.0
    # which relative error judges each kind: "max" (max|a-b|/max|ref|) or "l2" (||a-b||/||ref||).
    # Gradients use L2: a float32 near-tie in a max-pool sends a gradient to another position in one
    # framework (an argmax flip), which moves the max-norm error by O(1) but the L2 error very little.
    norms: Mapping[str, str] = field(default_factory=lambda: {
        "forward": "max", "backward": "l2", "param_grad": "l2", "param": "max"})
    # kind -> factor on the bound when no other-precision reference exists for a tensor (no noise floor)
    no_floor_factor: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def defaults(cls, dtype: str = "float32", **overrides: Any) -> Tolerances:
        """Defaults for ``dtype`` ("float32" or "float64"), then ``overrides`` field by field."""
        if dtype not in _DEFAULT_RTOL:
            raise ValueError(f"no default tolerances for dtype {dtype!r}; use float32 or float64")
        rt = _DEFAULT_RTOL[dtype]
        base = cls(dtype=dtype, forward=rt[Kind.FORWARD], backward=rt[Kind.BACKWARD],
                   param_grad=rt[Kind.PARAM_GRAD], param=rt[Kind.PARAM],
                   atol_scale={k.value: v for k, v in _DEFAULT_ATOL_SCALE[dtype].items()},
                   loss=_DEFAULT_LOSS_RTOL[dtype],
                   no_floor_factor={k.value: v for k, v in _DEFAULT_NO_FLOOR[dtype].items()})
        return replace(base, **overrides) if overrides else base

    @classmethod
    def coerce(cls, value: Tolerances | Mapping[str, Any] | None, dtype: str) -> Tolerances:
        """Accept None (defaults), a Tolerances, or a dict of field overrides."""
        if value is None:
            return cls.defaults(dtype)
        if isinstance(value, Tolerances):
            return value
        return cls.defaults(dtype, **dict(value))

    def rtol(self, kind: Kind | str, name: str) -> float:
        """Relative bound for a tensor of ``kind`` at layer (or parameter) ``name``."""
        return lookup(getattr(self, Kind(kind).value), name)

    def atol(self, kind: Kind | str, scale: float) -> float:
        """Absolute floor for ``kind`` given the largest |reference| of that kind and state."""
        return float(self.atol_scale.get(Kind(kind).value, 0.0)) * max(scale, 0.0)

    def widen(self, kind: Kind | str) -> float:
        """Factor on ``kind``'s bound when the tensor has no noise floor."""
        return float(self.no_floor_factor.get(Kind(kind).value, 1.0))

    def norm(self, kind: Kind | str) -> str:
        return str(self.norms.get(Kind(kind).value, "max"))

    def factor(self, numel: int) -> float:
        return self.small_multiplier if numel < self.small_numel else self.multiplier

    def summary(self) -> dict[str, Any]:
        """The ``run.tolerances`` block of results.json."""
        def plain(b: Bound) -> float | dict[str, float]:
            return dict(b) if isinstance(b, Mapping) else float(b)
        return {"forward_rel": plain(self.forward), "backward_rel": plain(self.backward),
                "param_grad_rel": plain(self.param_grad), "param_rel": plain(self.param),
                "loss_rel": self.loss, "atol_scale": dict(self.atol_scale),
                "noise_floor": self.noise_floor, "multiplier": self.multiplier,
                "small_multiplier": self.small_multiplier, "small_numel": self.small_numel,
                "norms": dict(self.norms), "no_floor_factor": dict(self.no_floor_factor)}


# Judgement metric of a tensor whose reference value is dominated by its own float32 rounding.
NOISE = "noise"


def noise_dominated(noise_floor: float, multiplier: float) -> bool:
    """True when the noise-floor bound (``multiplier`` x the reference's own error) reaches 1: it would
    accept any port value, zero included, so the tensor is not checkable at this precision."""
    return not math.isfinite(noise_floor) or multiplier * noise_floor >= 1.0


def judge(m: TensorMetrics, rtol: float, atol: float = 0.0, *, noise_floor: float | None = None,
          rel_fp64: float | None = None, multiplier: float = 3.0, norm: str = "max") -> Judgement:
    """Pass/fail of one tensor comparison.

    Order: shape mismatch fails; NaN anywhere or an Inf-count disagreement fails; a tensor the reference
    cannot resolve at float32 (:func:`noise_dominated`) passes as metric ``noise``; with a noise floor
    (both ``noise_floor`` = err(ref32, ref64) and ``rel_fp64`` = err(port, ref64) given) the port
    passes iff ``rel_fp64 <= max(multiplier*noise_floor, rtol)``, otherwise iff ``rel <= rtol``; a
    tensor failing that still passes when its whole error is within ``atol`` (then the judged
    metric is ``max_abs`` and the bound ``atol``). ``norm`` "l2" judges ``rel_l2`` instead of the
    max-norm ``rel`` (then ``noise_floor``/``rel_fp64`` must be L2 errors too).
    """
    if not m.shape_ok:
        return Judgement(ok=False, metric="shape", value=math.inf, bound=0.0, noise_floor=noise_floor)
    if not m.nan_inf_ok:
        return Judgement(ok=False, metric="nan_inf", value=float(m.nan_port + m.inf_port + m.nan_ref + m.inf_ref),
                         bound=0.0, noise_floor=noise_floor)
    l2 = norm == "l2" and m.rel_l2 is not None
    name = "rel_l2" if l2 else "rel"
    if noise_floor is not None and rel_fp64 is not None and noise_dominated(noise_floor, multiplier):
        # the reference's own float32 value is mostly rounding (a mathematically zero tensor such as the
        # gradient of a conv bias in front of a train-mode BN): any bound would pass a port value of zero
        return Judgement(ok=True, metric=NOISE, value=noise_floor, bound=1.0 / multiplier, noise_floor=noise_floor)
    if noise_floor is not None and rel_fp64 is not None and math.isfinite(noise_floor):
        bound = max(multiplier * noise_floor, rtol)
        result = Judgement(ok=rel_fp64 <= bound, metric=name + "_fp64", value=rel_fp64, bound=bound,
                           noise_floor=noise_floor)
    else:
        value = float(m.rel_l2) if l2 else m.rel  # type: ignore[arg-type]
        result = Judgement(ok=value <= rtol, metric=name, value=value, bound=rtol, noise_floor=noise_floor)
    if not result.ok and m.max_abs <= atol:
        return Judgement(ok=True, metric="max_abs", value=m.max_abs, bound=atol, noise_floor=noise_floor)
    return result
