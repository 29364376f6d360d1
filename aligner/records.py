"""Plain records of what a capture produced, shared by capture and analysis (numpy only, no framework).
What the analysis derives from them (rows, divergences, findings) is in :mod:`aligner.analysis_records`.

A :class:`Trace` is what one framework's capture of one model state produced. Arrays and their
statistics are keyed by strings with these conventions (``<order>`` is the execution index of a
module call, ``<sub>`` the path inside a tuple/list/dict output, ``""`` for a plain tensor, e.g.
``"0"``, ``"1.2"``, ``"cls"``):

* ``act/<order>/<sub>``   forward output of module call ``<order>`` (see ``Trace.calls``).
* ``gact/<order>/<sub>``  gradient of the loss w.r.t. that output (absent when the output does not
  need grad or no loss was run). A container and its last child return the same tensor object in
  Jittor; both calls are recorded, the later one carries ``CallRecord.alias_of``.
* ``input/<i>``           the i-th model input tensor (``input/<i>/<sub>`` for nested inputs);
  ``ginput/<i>`` its gradient when the input took part in the backward pass.
* ``pgrad/<param>``       gradient of the loss w.r.t. parameter ``<param>`` (state-dict name).
  Present only for params whose :class:`GradStatus` is ``nonzero`` or ``zero``.
* ``param/<param>``       the parameter / buffer value the forward pass used.
* ``buf/<buffer>``        a buffer's value right after the captured forward (train-mode BN updates its
  running statistics there; the model is restored afterwards).
* ``stage/<name>``        named pair stages beyond modules: ``stage/anchors``,
  ``stage/anchor_points``, ``stage/fg_mask``, ``stage/target_scores``, ``stage/loss_items``, ...
  Their scalar summaries (JSON-able) are in ``Trace.stages``.
* ``step/<k>/param/<param>``, ``step/<k>/pgrad/<param>``  multi-step mode: trainable tensor value
  after optimiser step ``k`` (1-based) and the gradient that step used; ``meta["steps"] =
  [{"step": k, "loss": float}, ...]`` where the loss is the one step k's forward computed (weights
  after k-1 steps), ``meta["steps_final_loss"]`` the loss after the last step, and
  ``meta["steps_optimizer"]`` the hyper-parameters (SGD, framework's own optimiser).

``meta["init"]`` (optional, :mod:`aligner.initcheck`): summaries of the freshly built model's tensors,
before any weight transfer, so the port's own initialisation can be checked.

In stats-only mode ``Trace.arrays`` is empty (or holds only ``stage/`` arrays) and
``Trace.stats`` holds a :class:`TensorStats` for every key that would have been an array.
Names (modules, params) are the framework's own dotted names; for a correct port they are equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum, unique
from typing import Any

import numpy as np

from aligner.reductions import array_stats, fingerprint

__all__ = [
    "Framework", "ParamKind", "GradStatus", "FrozenBy", "FindingType", "Severity",
    "WeightProblemKind", "TensorStats", "ParamInfo", "ModuleInfo", "CallRecord", "Trace", "WeightProblem",
    "act_key", "gact_key", "pgrad_key", "param_key", "buffer_key", "stage_key", "input_key", "ginput_key",
    "TORCH_ONLY", "torch_only",
]

# torch-only bookkeeping tensors Jittor has no counterpart for: never transferred, counted or compared
TORCH_ONLY: tuple[str, ...] = ("num_batches_tracked",)


@unique
class Framework(StrEnum):
    TORCH = "torch"
    JITTOR = "jittor"


@unique
class ParamKind(StrEnum):
    """What a named tensor of a module is."""
    TRAINABLE = "trainable"  # receives gradients (torch requires_grad, jittor not stop_grad)
    FROZEN = "frozen"        # a parameter that does not receive gradients (requires_grad False / stop_grad)
    BUFFER = "buffer"        # registered buffer (BN running stats, register_buffer), not a parameter
    CONSTANT = "constant"    # plain tensor attribute, neither parameter nor buffer (torch only)


@unique
class GradStatus(StrEnum):
    """Per-parameter gradient outcome of one backward pass."""
    NONZERO = "nonzero"          # reachable, some element != 0
    ZERO = "zero"                # reachable, exactly zero everywhere (legitimate at GOLD-YOLO init)
    UNREACHABLE = "unreachable"  # trainable but the graph from the loss to it is broken
    FROZEN = "frozen"            # does not take gradients (see ParamInfo.frozen_by)
    NONE = "none"                # no gradient computed (buffers, constants, no loss run)


@unique
class FrozenBy(StrEnum):
    """Why a parameter is frozen (ParamInfo.frozen_by)."""
    REQUIRES_GRAD = "requires_grad"  # torch requires_grad=False
    STOP_GRAD = "stop_grad"          # jittor stop_grad() on that Var
    EVAL = "frozen_by_eval"          # jittor Module.eval() stop_grad-ed every parameter


@unique
class WeightProblemKind(StrEnum):
    """What went wrong moving one tensor torch -> Jittor (each becomes a weight_transfer finding)."""
    MISSING = "missing"  # torch tensor has no Jittor counterpart (not loaded)
    EXTRA = "extra"      # Jittor tensor with no torch source: it keeps its own random init
    SHAPE = "shape"      # same name, different shape (not loaded)
    DTYPE = "dtype"      # loaded, but Jittor holds another dtype
    VALUE = "value"      # loaded, but re-reading gives different numbers


@unique
class FindingType(StrEnum):
    GRADIENT_PATTERN = "gradient_pattern"
    EXTRA_GRADIENT = "extra_gradient"
    UNREACHABLE_GRADIENT = "unreachable_gradient"
    FROZEN_PARAMETER = "frozen_parameter"
    VANISHING_GRADIENT = "vanishing_gradient"
    SHAPE_MISMATCH = "shape_mismatch"
    MISSING_PARAMETER = "missing_parameter"
    EXTRA_PARAMETER = "extra_parameter"
    PARAM_COUNT_DRIFT = "param_count_drift"
    ANCHOR_COUNT_DRIFT = "anchor_count_drift"
    NAN_INF = "nan_inf"
    MODE_MISMATCH = "mode_mismatch"
    FORWARD_DIVERGENCE = "forward_divergence"
    BACKWARD_DIVERGENCE = "backward_divergence"
    LOSS_DIVERGENCE = "loss_divergence"
    ASSIGNER_MISMATCH = "assigner_mismatch"
    WEIGHT_TRANSFER = "weight_transfer"
    INIT_MISMATCH = "init_mismatch"
    UNMATCHED_MODULE = "unmatched_module"
    GRAD_SPARSITY_EXPLAINED = "grad_sparsity_explained"
    PORT_ROUNDING = "port_rounding"
    MODULE_DEVIATION = "module_deviation"


@unique
class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


_DTYPE_NAMES: dict[np.dtype, str] = {}


@dataclass(frozen=True)
class TensorStats:
    """Summary of one tensor; min/max/mean/std/l2 are over the finite elements, in float64."""
    shape: tuple[int, ...]
    dtype: str
    min: float
    max: float
    mean: float
    std: float
    l2: float
    nan: int             # count of NaN elements
    inf: int             # count of +-Inf elements
    zero_frac: float     # fraction of elements exactly 0
    fingerprint: str     # positional fingerprint of the bits (bit-exact identity; aligner.reductions.fingerprint)

    @classmethod
    def of(cls, array: np.ndarray) -> TensorStats:
        a = np.asarray(array)
        dtype = _DTYPE_NAMES.get(a.dtype)
        if dtype is None:
            if a.dtype.kind not in "fiub":
                raise TypeError(f"TensorStats needs a numeric array, got {a.dtype}")
            dtype = _DTYPE_NAMES.setdefault(a.dtype, str(a.dtype))  # str(dtype) costs microseconds per tensor
        c = np.ascontiguousarray(a)
        if c.size:
            # the common, all-finite case: one fused chunked pass, fingerprint included (aligner.reductions)
            fast, digest = array_stats(c)
            if fast is not None:
                return cls(tuple(map(int, a.shape)), dtype, fast.min, fast.max, fast.mean, fast.std,
                           fast.l2, 0, 0, fast.zeros / c.size, digest)
        else:
            digest = fingerprint(c)
        x = a.astype(np.float64, copy=False).ravel()
        # all-finite is the common case: one isfinite pass instead of isnan + isinf + mask (-28% CPU for
        # the stats of a GOLD-YOLO-N 640 trace, same values; benchmarks/results/notes.md)
        if x.size == 0 or np.isfinite(x).all():
            nan = inf = 0
            finite = x
        else:
            nan = int(np.isnan(x).sum())
            inf = int(np.isinf(x).sum())
            finite = x[np.isfinite(x)]
        n = x.size
        if finite.size:
            mn, mx = float(finite.min()), float(finite.max())
            mean, std = float(finite.mean()), float(finite.std())
            l2 = float(np.sqrt(np.dot(finite, finite)))
        else:
            mn = mx = mean = std = l2 = float("nan")
        zero_frac = float(np.count_nonzero(x == 0) / n) if n else 0.0
        return cls(tuple(map(int, a.shape)), dtype, mn, mx, mean, std, l2, nan, inf, zero_frac, digest)


@dataclass(frozen=True)
class ParamInfo:
    """One named tensor of the model (parameter, buffer or plain tensor attribute)."""
    name: str                       # state-dict style dotted name
    shape: tuple[int, ...]
    dtype: str
    kind: ParamKind
    numel: int
    module: str                     # owning module's dotted name ("" for the root)
    shared_with: str | None = None  # first name of the same tensor object (tied weights count once)
    grad_status: GradStatus = GradStatus.NONE
    frozen_by: FrozenBy | None = None
    grad_max_abs: float | None = None  # max |grad| (None when no grad); lets "vanishing" be judged


@dataclass(frozen=True)
class ModuleInfo:
    """One module of the model tree; numbers are element counts (numel)."""
    name: str
    type: str
    depth: int                      # 0 for the root, 1 for its children, ...
    training: bool
    flags: dict[str, Any]           # bn_eps, bn_momentum, dropout_p, drop_path_p (only those that apply)
    own_trainable: int              # direct parameters only
    own_buffers: int
    rec_trainable: int              # whole subtree, each tensor object counted once
    rec_buffers: int


@dataclass(frozen=True)
class CallRecord:
    """One tensor leaf of one module call's output (several rows per call for tuple outputs)."""
    order: int                      # execution index of the call (forward-hook firing order, 0-based)
    module: str                     # module dotted name
    module_type: str
    call_index: int                 # n-th call of this module (shared modules: 0, 1, ...)
    sub: str                        # path in the output structure, "" for a plain tensor
    shape: tuple[int, ...]
    dtype: str
    training: bool
    input_keys: tuple[str, ...] = ()  # act/input keys of this call's tensor inputs, when known
    has_grad: bool = False          # a gact/<order>/<sub> entry exists (in arrays or stats)
    alias_of: str | None = None     # act key of an earlier record holding the same tensor object
    requires_grad: bool | None = None  # the output was part of the autograd graph (None: older trace)

    @property
    def key(self) -> str:
        return act_key(self.order, self.sub)

    @property
    def gkey(self) -> str:
        return gact_key(self.order, self.sub)


@dataclass(frozen=True)
class Trace:
    """Everything one framework's capture of one model state produced."""
    meta: dict[str, Any]            # framework, state, pair, config, dtype, seed, versions, inputs, ...
    calls: list[CallRecord]
    params: list[ParamInfo]
    modules: list[ModuleInfo]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, TensorStats] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)  # JSON-able stage summaries (anchors, assigner, loss)

    @property
    def framework(self) -> Framework:
        return Framework(self.meta["framework"])

    @property
    def state(self) -> str:
        return str(self.meta.get("state", ""))

    def stat(self, key: str) -> TensorStats | None:
        """Stats of ``key``, computed from the array when it was kept."""
        if key in self.stats:
            return self.stats[key]
        if key in self.arrays:
            return TensorStats.of(self.arrays[key])
        return None

    def has(self, key: str) -> bool:
        return key in self.arrays or key in self.stats

    def first_calls(self) -> dict[str, int]:
        """Module name -> execution index of its first call (the order findings point in)."""
        out: dict[str, int] = {}
        for c in self.calls:
            out.setdefault(c.module, c.order)
        return out

    def param(self, name: str) -> ParamInfo | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True)
class WeightProblem:
    """One weight-transfer problem (weights.py); names are torch-side unless kind is EXTRA."""
    kind: WeightProblemKind
    name: str
    jittor_name: str | None = None
    torch_shape: tuple[int, ...] | None = None
    jittor_shape: tuple[int, ...] | None = None
    torch_dtype: str | None = None
    jittor_dtype: str | None = None
    max_abs: float | None = None      # VALUE: max |torch - jittor| after the load
    message: str = ""


def act_key(order: int, sub: str = "") -> str:
    return f"act/{order}/{sub}"


def gact_key(order: int, sub: str = "") -> str:
    return f"gact/{order}/{sub}"


def pgrad_key(name: str) -> str:
    return f"pgrad/{name}"


def param_key(name: str) -> str:
    return f"param/{name}"


def buffer_key(name: str) -> str:
    return f"buf/{name}"


def stage_key(name: str) -> str:
    return f"stage/{name}"


def input_key(index: int, sub: str = "") -> str:
    return f"input/{index}" + (f"/{sub}" if sub else "")


def ginput_key(index: int, sub: str = "") -> str:
    return f"ginput/{index}" + (f"/{sub}" if sub else "")


def torch_only(name: str) -> bool:
    """The tensor ``name`` (dotted) is torch-only bookkeeping (:data:`TORCH_ONLY`)."""
    return name.rsplit(".", 1)[-1] in TORCH_ONLY
