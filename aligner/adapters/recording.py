"""Recording during one capture: output flattening, the loss context, the per-call bookkeeping.

Framework-free: the recorder calls back into its adapter for every tensor operation.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ..errors import AdapterError
from ..records import TensorStats, act_key, input_key, stage_key

if TYPE_CHECKING:
    from .base import Adapter

__all__ = ["flatten", "LossContext", "LossFn", "probe_loss", "Recorder"]


def flatten(obj: Any, is_leaf: Callable[[Any], bool], prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves of a nested tuple/list/dict with stable sub-paths ("" for a bare leaf, "0", "1.cls")."""
    if is_leaf(obj):
        return [(prefix, obj)]
    items: Iterator[tuple[Any, Any]]
    if isinstance(obj, dict):
        items = iter(obj.items())
    elif isinstance(obj, (tuple, list)):
        items = enumerate(obj)
    else:
        return []
    out: list[tuple[str, Any]] = []
    for k, v in items:
        out.extend(flatten(v, is_leaf, f"{prefix}.{k}" if prefix else str(k)))
    return out


class LossContext:
    """Handed to a loss function: record named stages, make tensors, flatten outputs."""

    def __init__(self, adapter: Adapter, recorder: Recorder, dtype: str) -> None:
        self._adapter, self._recorder, self.dtype = adapter, recorder, dtype
        self.framework = adapter.framework

    def record(self, name: str, value: Any) -> None:
        """Keep ``value`` (tensor, nested structure or number) as ``stage/<name>[/<sub>]``."""
        self._recorder.on_stage(name, value)

    def tensor(self, array: np.ndarray) -> Any:
        """A constant framework tensor (no grad) from numpy; floats take the capture dtype."""
        a = np.asarray(array)
        if a.dtype.kind == "f":
            a = a.astype(self.dtype)
        return self._adapter._from_numpy(a, requires_grad=False)

    def leaves(self, obj: Any) -> list[tuple[str, Any]]:
        return flatten(obj, self._adapter._is_tensor)


LossFn = Callable[[Any, Any, LossContext], Any]


def probe_loss(seed: int = 0) -> LossFn:
    """Default loss for pairs without one: sum over float output leaves of (out * R), R ~ N(0,1) seeded
    by leaf index, so the same R reaches both frameworks and every output gets a dense gradient."""
    def loss(outputs: Any, targets: Any, ctx: LossContext) -> Any:
        total = None
        for i, (_, t) in enumerate(ctx.leaves(outputs)):
            shape = tuple(int(s) for s in t.shape)
            r = np.random.default_rng([seed, i]).standard_normal(shape)
            term = (t * ctx.tensor(r)).sum()
            total = term if total is None else total + term
        if total is None:
            raise AdapterError("probe loss: the model output has no tensor")
        return total
    return loss


class Recorder:
    """Collects module calls, activations, stages; owns the key bookkeeping (not the framework calls)."""

    def __init__(self, adapter: Adapter, full: bool) -> None:
        self.adapter, self.full = adapter, full
        self.pending: list[dict[str, Any]] = []
        self.id2key: dict[Any, str] = {}         # value identity (adapter._identity) -> latest key
        self.first_key: dict[Any, str] = {}      # value identity -> first act key recorded for it
        self.keep: list[Any] = []                # keeps tensors alive so id() stays unique
        self.watched: list[tuple[str, Any]] = []  # (act key, tensor) needing a grad
        self.values: dict[str, Any] = {}         # key -> framework value handle, fetched at the end
        self.stage_values: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.pending_inputs: dict[int, list[tuple[str, ...]]] = {}  # id(module) -> stack (recursion-safe)
        self.order = 0
        self.grads: dict[str, np.ndarray | TensorStats] = {}  # act key -> grad delivered by tensor hooks (torch)

    def register_inputs(self, tensors: list[Any]) -> None:
        for i, t in enumerate(tensors):
            self.keep.append(t)
            self.id2key.setdefault(self.adapter._identity(t), input_key(i))
            self.values[input_key(i)] = self.keep_value(t)

    def _input_keys(self, args: Any, kwargs: Any) -> tuple[str, ...]:
        ad = self.adapter
        keys = []
        for _, t in flatten((args, kwargs or {}), ad._is_tensor):
            k = self.id2key.get(ad._identity(t))
            if k is not None:
                keys.append(k)
        return tuple(dict.fromkeys(keys))

    def on_pre(self, module: Any, args: Any, kwargs: Any) -> None:
        """At call start: which recorded values go in (an in-place op inside the call would hide it)."""
        self.pending_inputs.setdefault(id(module), []).append(self._input_keys(args, kwargs))

    def on_call(self, name: str, module: Any, args: Any, kwargs: Any, out: Any) -> None:
        ad = self.adapter
        stack = self.pending_inputs.get(id(module))
        input_keys = stack.pop() if stack else self._input_keys(args, kwargs)
        order, self.order = self.order, self.order + 1
        call_index = self.counts[name]
        self.counts[name] += 1
        training = ad._module_training(module)
        for sub, t in flatten(out, ad._is_tensor):
            key = act_key(order, sub)
            # the same value identity is an alias (a container returning its last child's output, a
            # no-op cast); after an in-place op (ReLU(inplace=True), `y += 1`) the identity is new
            ident = ad._identity(t)
            alias = self.first_key.get(ident)  # the earliest record of this value (owns its gradient)
            wants = bool(ad._wants_grad(t))  # False: made without a graph (no_grad, detach, integer)
            self.keep.append(t)
            # consumers see the latest record of a value, so a container's output (alias of its last
            # child) is what the next module reads, in both frameworks, whichever one made an alias
            self.id2key[ident] = key
            if alias is None:
                self.first_key[ident] = key
                if wants:
                    self.watched.append((key, t))
                    ad._watch(key, t, self)
            # an alias has the identity, hence the value, of its earlier record: one handle serves both
            # (no second copy to hold, fetch, hash or compare)
            self.values[key] = self.values[alias] if alias in self.values else self.keep_value(t)
            self.pending.append(dict(order=order, module=name, module_type=type(module).__name__,
                                     call_index=call_index, sub=sub, shape=tuple(int(s) for s in t.shape),
                                     dtype=ad._dtype_name(t), training=training, input_keys=input_keys,
                                     alias_of=alias, requires_grad=wants))

    def keep_value(self, t: Any) -> Any:
        """A handle on ``t``'s value; in stats-only mode with an eager framework, its stats right away
        (so no activation copy is held)."""
        if not self.full and self.adapter.eager:
            return TensorStats.of(self.adapter._view(t))
        return self.adapter._hold(t)

    def on_stage(self, name: str, value: Any) -> None:
        leaves = flatten(value, lambda v: self.adapter._is_tensor(v) or np.isscalar(v)
                         or isinstance(v, np.ndarray))
        for sub, v in leaves:
            key = stage_key(name) + (f"/{sub}" if sub else "")
            self.stage_values[key] = self.adapter._hold(v) if self.adapter._is_tensor(v) else np.asarray(v)

    def on_grad(self, key: str, grad: np.ndarray) -> None:
        """Torch-style tensor hooks deliver activation grads here during backward (``grad`` may be the
        framework's own buffer: kept as a copy, or in stats-only mode summarised at once and not kept)."""
        self.grads[key] = grad.copy() if self.full else TensorStats.of(grad)
