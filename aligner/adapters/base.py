"""Template-method framework adapter: the shared capture logic, framework specifics in subclasses.

``Adapter.capture`` snapshots the model's state, installs forward hooks, runs forward + loss +
backward, converts every tensor to numpy at the boundary and restores the model in ``finally``.
Subclasses (``torch_adapter``, ``jittor_adapter``) implement only the ``_``-prefixed primitives:
tensor tests and conversion, the named-tensor walk, hook install/removal, state save/restore and the
backward pass. Nothing here imports a framework.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import AdapterError
from ..records import (
    CallRecord, Framework, FrozenBy, GradStatus, ModuleInfo, ParamInfo, ParamKind, TensorStats, Trace,
    act_key, buffer_key, gact_key, ginput_key, param_key, pgrad_key,
)
from .recording import LossContext, LossFn, Recorder, flatten, probe_loss

__all__ = ["Adapter", "NamedTensor", "LossContext", "LossFn", "GradResult", "flatten", "probe_loss",
           "module_flags"]


@dataclass(frozen=True)
class NamedTensor:
    """One named tensor of a live model (inventory entry before it becomes a ParamInfo)."""
    name: str
    module: str
    tensor: Any
    kind: ParamKind
    frozen_by: FrozenBy | None = None


@dataclass(frozen=True)
class GradResult:
    """What a framework backward pass produced; arrays are numpy (stats-only: activation and input
    gradients may be TensorStats already)."""
    acts: dict[str, np.ndarray | TensorStats]   # act key -> grad (only reachable ones)
    inputs: dict[int, np.ndarray | TensorStats]  # input index -> grad
    params: dict[int, tuple[GradStatus, np.ndarray | None]]  # id(tensor) -> status, grad


class Adapter(ABC):
    """Captures one model of one framework into a :class:`Trace`; subclasses fill in the primitives."""

    framework: Framework
    eager = True  # values can be fetched at record time (torch); Jittor is lazy and syncs once at the end

    # ----- public API -------------------------------------------------------------------------
    def inventory(self, model: Any) -> tuple[list[ParamInfo], list[ModuleInfo]]:
        """Parameter inventory and module tree, without running the model."""
        named = self._named_tensors(model)
        return self._param_infos(named, {}), self._module_infos(model, named)

    def capture(self, model: Any, inputs: list[np.ndarray], loss_fn: LossFn | None = None,
                targets: Any = None, *, full: bool = True, dtype: str = "float32",
                meta: dict[str, Any] | None = None) -> Trace:
        """Run forward (+ loss + backward when ``loss_fn``) with hooks; return the trace.

        ``full`` keeps every array; otherwise only TensorStats (stage arrays are always kept). Buffers are
        recorded twice: before the forward (``param/``) and right after it (``buf/``).
        The model is restored (hooks, training flags, buffers, names) whatever happens.
        """
        t0 = time.perf_counter()
        named = self._named_tensors(model)
        saved = self._save_state(model, named)
        rec = Recorder(self, full)
        try:
            param_values = {nt.name: rec.keep_value(nt.tensor) for nt in named}
            x = [self._from_numpy(np.asarray(a), requires_grad=np.asarray(a).dtype.kind == "f")
                 for a in inputs]
            rec.register_inputs(x)
            tgt = self._convert_targets(targets)
            with self._hooks(model, rec.on_pre, rec.on_call):
                try:
                    out = model(*x)
                except Exception as exc:  # name the last module that ran, as torchinfo does
                    last = rec.pending[-1]["module"] if rec.pending else "<none>"
                    raise AdapterError(f"{self.framework} forward failed after module {last!r}: {exc}") from exc
            # buffers as the forward left them (train-mode BN updated its running statistics), before the
            # restore below; walked again because a port may rebind a buffer attribute instead of updating it
            for nt in self._named_tensors(model):
                if nt.kind == ParamKind.BUFFER:
                    rec.values[buffer_key(nt.name)] = rec.keep_value(nt.tensor)
            loss = None
            if loss_fn is not None:
                loss = loss_fn(out, tgt, LossContext(self, rec, dtype))
                rec.on_stage("loss", loss)
            grads = self._backward(loss, rec.watched, x, named, full) if loss is not None else None
            return self._assemble(model, named, rec, grads, param_values, full, dtype, meta or {},
                                  [np.asarray(a) for a in inputs], t0)
        finally:
            self._restore_state(model, named, saved)

    def train_steps(self, model: Any, inputs: list[np.ndarray], loss_fn: LossFn, targets: Any = None, *,
                    steps: int = 1, full: bool = True, dtype: str = "float32",
                    optimizer: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray],
                                                                    dict[str, TensorStats], dict[str, Any]]:
        """Run ``steps`` SGD steps with the framework's own optimiser, then restore the model.

        Returns (arrays, stats, meta): ``step/<k>/param/<name>`` = trainable tensor after step k,
        ``step/<k>/pgrad/<name>`` = the gradient step k used; ``meta["steps"]`` = per step the loss of
        its forward pass (weights after k-1 steps), ``meta["steps_final_loss"]`` = loss after the last.
        """
        hyper = {"lr": 0.01, "momentum": 0.937, "nesterov": True, "weight_decay": 5e-4, **(optimizer or {})}
        named = self._named_tensors(model)
        saved = self._save_state(model, named)
        values = {nt.name: self._hold(nt.tensor) for nt in named}
        values = dict(zip(values, self._fetch(list(values.values()))))
        arrays: dict[str, np.ndarray] = {}
        stats: dict[str, TensorStats] = {}
        try:
            x = [self._from_numpy(np.asarray(a), requires_grad=False) for a in inputs]
            tgt = self._convert_targets(targets)
            rec = Recorder(self, full)

            def loss_of(out: Any) -> Any:
                return loss_fn(out, tgt, LossContext(self, rec, dtype))

            trainable = [nt for nt in named if nt.kind == ParamKind.TRAINABLE]
            results = self._sgd(model, x, loss_of, trainable, steps, hyper)
        finally:
            self._load_arrays(model, values)
            self._restore_state(model, named, saved)
        losses = []
        for k, (loss, params, grads) in enumerate(results[:steps], start=1):
            losses.append({"step": k, "loss": loss})
            for sub, d in (("param", params), ("pgrad", grads)):
                for name, a in d.items():
                    key = f"step/{k}/{sub}/{name}"
                    if full:
                        arrays[key] = a
                    else:
                        stats[key] = TensorStats.of(a)
        meta = {"steps": losses, "steps_final_loss": results[-1][0] if len(results) > steps else None,
                "steps_optimizer": {"type": "SGD", **hyper}}
        return arrays, stats, meta

    def state_arrays(self, model: Any) -> dict[str, np.ndarray]:
        """Every named tensor as numpy (parameters, buffers, constants), by name."""
        named = self._named_tensors(model)
        return dict(zip([nt.name for nt in named], self._fetch([self._hold(nt.tensor) for nt in named])))

    def load_arrays(self, model: Any, arrays: dict[str, np.ndarray]) -> list[str]:
        """Write arrays into same-named tensors in place; returns names that were not found."""
        return self._load_arrays(model, arrays)

    def versions(self) -> dict[str, str]:
        return {}

    def float64_copy(self, model: Any) -> Any:
        """A float64 deep copy of ``model`` (the caller's model is left as it is)."""
        import copy  # noqa: PLC0415

        from aligner.errors import AdapterError  # noqa: PLC0415
        try:
            return self._to_float64(copy.deepcopy(model))
        except Exception as exc:  # noqa: BLE001 - a model that cannot be copied is named, not a crash
            raise AdapterError(f"cannot make a float64 copy of the model ({type(exc).__name__}: {exc})") from exc

    def _to_float64(self, model: Any) -> Any:
        raise NotImplementedError

    # ----- assembly (framework-free) ----------------------------------------------------------
    def _assemble(self, model: Any, named: list[NamedTensor], rec: Recorder, grads: GradResult | None,
                  param_values: dict[str, Any], full: bool, dtype: str, meta: dict[str, Any],
                  inputs: list[np.ndarray], t0: float) -> Trace:
        arrays: dict[str, np.ndarray] = {}
        stats: dict[str, TensorStats] = {}

        def sink(key: str, a: np.ndarray | TensorStats) -> None:
            if isinstance(a, TensorStats):  # summarised as it arrived (stats-only gradients)
                stats[key] = a
            elif full:
                arrays[key] = a
            else:
                stats[key] = TensorStats.of(a)

        values = {**rec.values, **{param_key(k): v for k, v in param_values.items()}}
        rec.values.clear()
        if full:  # one batched computation; stats-only fetches one value at a time to bound memory
            self._prefetch([v for v in values.values() if not isinstance(v, TensorStats)])
        # a handle shared by several keys (aliases) is fetched once and its array stored under each key;
        # the array is forgotten when its last key is done, so the handles are freed as before
        left = Counter(id(v) for v in values.values())
        fetched: dict[int, Any] = {}
        for key in list(values):
            v = values.pop(key)
            if isinstance(v, TensorStats):
                stats[key] = v
                continue
            hid = id(v)
            if hid not in fetched:
                a = self._fetch([v])[0]
                fetched[hid] = a if full else TensorStats.of(a)
            left[hid] -= 1
            out = fetched.pop(hid) if left[hid] == 0 else fetched[hid]
            if full:
                arrays[key] = out
            else:
                stats[key] = out
        skeys = list(rec.stage_values)
        for key, a in zip(skeys, self._fetch([rec.stage_values[k] for k in skeys])):
            arrays[key] = a  # stages are small and always kept
        act_grads = dict(rec.grads)
        if grads is not None:
            act_grads.update(grads.acts)
            for i, g in grads.inputs.items():
                sink(ginput_key(i), g)
        calls = []
        for r in rec.pending:
            key = act_key(r["order"], r["sub"])
            g = act_grads.get(r["alias_of"] or key)
            if g is not None:
                sink(gact_key(r["order"], r["sub"]), g)
            calls.append(CallRecord(has_grad=g is not None, **r))
        pgrads = grads.params if grads is not None else {}
        first: dict[int, str] = {}
        for nt in named:
            first.setdefault(id(nt.tensor), nt.name)
        for nt in named:  # tied tensors: the grad is stored under every name, as torch reports it
            st = pgrads.get(id(nt.tensor))
            if st is not None and st[1] is not None:
                sink(pgrad_key(nt.name), st[1])
        params = self._param_infos(named, pgrads)
        modules = self._module_infos(model, named)
        meta = dict(meta)
        meta.update(framework=str(self.framework), dtype=dtype, full=full,
                    inputs=[{"shape": list(a.shape), "dtype": str(a.dtype)} for a in inputs],
                    versions={**meta.get("versions", {}), **self.versions()},
                    frozen_by_eval=any(p.frozen_by == FrozenBy.EVAL for p in params),
                    loss_run=grads is not None,
                    capture_seconds=round(time.perf_counter() - t0, 4))
        return Trace(meta=meta, calls=calls, params=params, modules=modules, arrays=arrays, stats=stats)

    def _param_infos(self, named: list[NamedTensor],
                     pgrads: dict[int, tuple[GradStatus, np.ndarray | None]]) -> list[ParamInfo]:
        first: dict[int, str] = {}
        out = []
        for nt in named:
            shared = first.get(id(nt.tensor))
            first.setdefault(id(nt.tensor), nt.name)
            status, gmax = GradStatus.NONE, None
            if nt.kind == ParamKind.FROZEN:
                status = GradStatus.FROZEN
            elif nt.kind == ParamKind.TRAINABLE and id(nt.tensor) in pgrads:
                status, g = pgrads[id(nt.tensor)]
                gmax = float(np.abs(g).max()) if g is not None and g.size else None
            shape = tuple(int(s) for s in nt.tensor.shape)
            out.append(ParamInfo(name=nt.name, shape=shape, dtype=self._dtype_name(nt.tensor), kind=nt.kind,
                                 numel=int(np.prod(shape, dtype=np.int64)), module=nt.module,
                                 shared_with=shared, grad_status=status, frozen_by=nt.frozen_by,
                                 grad_max_abs=gmax))
        return out

    def _module_infos(self, model: Any, named: list[NamedTensor]) -> list[ModuleInfo]:
        def numel(entries: list[NamedTensor], kind: ParamKind) -> int:
            seen: dict[int, int] = {}
            for nt in entries:
                if nt.kind == kind:
                    seen[id(nt.tensor)] = int(np.prod(tuple(nt.tensor.shape), dtype=np.int64))
            return sum(seen.values())

        # group once by owner and by every ancestor prefix: per-module scans over ``named`` were quadratic
        # (GOLD-YOLO: 621 modules x ~900 tensors, 0.11 s -> 0.03 s per call, same result)
        own_of: dict[str, list[NamedTensor]] = {}
        sub_of: dict[str, list[NamedTensor]] = {}
        for nt in named:
            own_of.setdefault(nt.module, []).append(nt)
            parts = nt.module.split(".") if nt.module else []
            for i in range(1, len(parts) + 1):
                sub_of.setdefault(".".join(parts[:i]), []).append(nt)
        out = []
        for name, m in self._named_modules(model):
            own = own_of.get(name, [])
            sub = named if name == "" else sub_of.get(name, [])
            out.append(ModuleInfo(name=name, type=type(m).__name__, depth=0 if name == "" else name.count(".") + 1,
                                  training=self._module_training(m), flags=module_flags(m),
                                  own_trainable=numel(own, ParamKind.TRAINABLE),
                                  own_buffers=numel(own, ParamKind.BUFFER),
                                  rec_trainable=numel(sub, ParamKind.TRAINABLE),
                                  rec_buffers=numel(sub, ParamKind.BUFFER)))
        return out

    def _convert_targets(self, targets: Any) -> Any:
        if targets is None:
            return None
        if isinstance(targets, np.ndarray):
            return self._from_numpy(targets, requires_grad=False)
        if isinstance(targets, dict):
            return {k: self._convert_targets(v) for k, v in targets.items()}
        if isinstance(targets, (list, tuple)):
            return type(targets)(self._convert_targets(v) for v in targets)
        return targets

    # ----- framework primitives ---------------------------------------------------------------
    @abstractmethod
    def _is_tensor(self, x: Any) -> bool: ...

    @abstractmethod
    def _from_numpy(self, a: np.ndarray, *, requires_grad: bool) -> Any: ...

    @abstractmethod
    def _hold(self, t: Any) -> Any:
        """A handle on ``t``'s current value that later in-place ops cannot change."""

    @abstractmethod
    def _fetch(self, handles: list[Any]) -> list[np.ndarray]: ...

    def _view(self, t: Any) -> np.ndarray:
        """``t``'s current value as numpy, read right away (eager frameworks may share memory: no copy)."""
        return self._fetch([self._hold(t)])[0]

    def _prefetch(self, handles: list[Any]) -> None:
        """Compute every pending value in one go before they are fetched one by one (lazy frameworks)."""

    @abstractmethod
    def _dtype_name(self, t: Any) -> str: ...

    @abstractmethod
    def _identity(self, t: Any) -> Any:
        """Hashable identity of ``t``'s current value: equal for aliases of one value, new after an
        in-place op (torch: object id + ``_version``; Jittor: graph node id, shared by no-op casts)."""

    @abstractmethod
    def _wants_grad(self, t: Any) -> bool: ...

    @abstractmethod
    def _watch(self, key: str, t: Any, rec: Recorder) -> None: ...

    @abstractmethod
    def _named_modules(self, model: Any) -> list[tuple[str, Any]]: ...

    @abstractmethod
    def _module_training(self, m: Any) -> bool: ...

    @abstractmethod
    def _named_tensors(self, model: Any) -> list[NamedTensor]: ...

    @abstractmethod
    def _hooks(self, model: Any, on_pre: Callable[..., None],
               on_call: Callable[..., None]) -> AbstractContextManager[None]:
        """Install forward pre-hooks ``on_pre(module, args, kwargs)`` and forward hooks
        ``on_call(name, module, args, kwargs, out)`` on every module; remove/restore on exit."""

    @abstractmethod
    def _backward(self, loss: Any, watched: list[tuple[str, Any]], inputs: list[Any],
                  named: list[NamedTensor], full: bool = True) -> GradResult:
        """Gradients of ``loss``; with ``full`` False, activation and input gradients may come back as
        TensorStats (summarised as they are read, so they are never all held as arrays)."""

    @abstractmethod
    def _save_state(self, model: Any, named: list[NamedTensor]) -> Any: ...

    @abstractmethod
    def _restore_state(self, model: Any, named: list[NamedTensor], saved: Any) -> None: ...

    @abstractmethod
    def _sgd(self, model: Any, x: list[Any], loss_of: Callable[[Any], Any], trainable: list[NamedTensor],
             steps: int, hyper: dict[str, Any]) -> list[tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``steps`` optimiser steps; per step (loss, params after, grads used), then one forward-only
        entry (final loss, {}, {})."""

    @abstractmethod
    def _load_arrays(self, model: Any, arrays: dict[str, np.ndarray]) -> list[str]: ...


def module_flags(m: Any) -> dict[str, Any]:
    """Mode-relevant constants of a module (attribute reads only, works for both frameworks)."""
    flags: dict[str, Any] = {}
    tname = type(m).__name__
    if hasattr(m, "running_mean") and hasattr(m, "eps"):
        flags["bn_eps"] = float(m.eps)
        mom = getattr(m, "momentum", None)
        flags["bn_momentum"] = None if mom is None else float(mom)
    if "Dropout" in tname and isinstance(getattr(m, "p", None), (int, float)):
        flags["dropout_p"] = float(m.p)
    if "DropPath" in tname:
        p = getattr(m, "drop_prob", getattr(m, "p", None))
        if isinstance(p, (int, float)):
            flags["drop_path_p"] = float(p)
    return flags
