"""Jittor adapter (docs/jittor-notes.md: "Module hooks and capture", "Names, parameters and buffers", "Gradients").

* One forward hook per module instance (Jittor keeps exactly one of each kind and has no handles):
  a user's hook is composed with ours and put back afterwards, and a class whose ``__call__`` Jittor
  swapped for the hooked one is swapped back.
* Activation, input and parameter grads come from ONE ``jt.grad`` call over targets deduplicated by
  ``id()`` (repeated targets get zeros). The input is a target, so the first layer is covered.
* UNREACHABLE vs zero: every target gets a fresh unique name and the "doesn't have gradient"
  warnings are captured with ``jt.log_capture_scope`` (Jittor warns once per name per process).
* In-place ops (``y += 1``) give a Var object a new node: values are held as clones (so the record is
  the module's own output) and the node id serves as a version; the gradient of a version that was
  later modified in place is not available (that record has ``has_grad=False``).
* Frozen: ``stop_grad`` Vars that are not buffers; ``frozen_by_eval`` when a module's
  ``backup_grad_state`` (written by ``Module.eval()``) says the Var was trainable before.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from ..records import Framework, FrozenBy, GradStatus, ParamKind, TensorStats
from .base import Adapter, GradResult, NamedTensor
from .recording import Recorder

__all__ = ["JittorAdapter", "saved_class_attrs", "restore_class_attrs"]

_HOOK_ATTRS = ("__fhook__", "__fhook2__", "__bihook__", "__bohook__")
_CLASS_ATTRS = ("__call__", "__hooked_call__", "__hooked__")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_MISSING = object()
_TAGS = itertools.count()  # process-wide uniqueness of grad-target names (Jittor warns once per name)


def saved_class_attrs(cls: type, names: tuple[str, ...]) -> dict[str, Any]:
    """The class's own values of ``names`` (a marker for those it only inherits), for
    :func:`restore_class_attrs`: registering a Jittor hook swaps ``__call__`` on the class itself."""
    return {a: cls.__dict__.get(a, _MISSING) for a in names}


def restore_class_attrs(cls: type, saved: dict[str, Any]) -> None:
    """Put back what :func:`saved_class_attrs` recorded (deleting what the class did not have itself)."""
    for a, v in saved.items():
        if v is _MISSING:
            if a in cls.__dict__:
                delattr(cls, a)
        else:
            setattr(cls, a, v)


def _jittor() -> Any:
    import aligner.env  # noqa: F401, PLC0415 - must precede jittor (nvcc_path, oneDNN)
    import jittor  # noqa: PLC0415
    return jittor


class JittorAdapter(Adapter):
    framework = Framework.JITTOR
    eager = False  # fetching a Var mid-forward would force a sync per module

    def __init__(self) -> None:
        self.jt = _jittor()

    def versions(self) -> dict[str, str]:
        return {"jittor": str(self.jt.__version__)}

    # ----- tensors ----------------------------------------------------------------------------
    def _is_tensor(self, x: Any) -> bool:
        return isinstance(x, self.jt.Var)

    def _from_numpy(self, a: np.ndarray, *, requires_grad: bool) -> Any:
        a = np.ascontiguousarray(a)
        # jt.array(float64) silently gives float32 (auto_convert_64_to_32); name the dtype
        v = self.jt.array(a, str(a.dtype)) if a.dtype.kind == "f" else self.jt.array(a)
        return v if requires_grad else v.stop_grad()

    def _hold(self, t: Any) -> Any:
        # NOTE: a clone, not the Var: in-place ops (`y += 1`, `/=`, BN's running-stat update) rewire
        # the Var object itself, while the clone keeps the value it had here (lazily, no copy yet)
        return t.clone() if self._is_tensor(t) else np.asarray(t)

    def _fetch(self, handles: list[Any]) -> list[np.ndarray]:
        # Var.numpy() returns a fresh array that owns its data (measured: two calls share no memory,
        # writing to one leaves the Var unchanged), so no further copy is needed here or below
        vars_ = [h for h in handles if self._is_tensor(h)]
        if vars_:
            self.jt.sync(vars_)
        return [h.numpy() if self._is_tensor(h) else np.asarray(h) for h in handles]

    def _prefetch(self, handles: list[Any]) -> None:
        vars_ = [h for h in handles if self._is_tensor(h)]
        if vars_:
            self.jt.sync(vars_)

    def _dtype_name(self, t: Any) -> str:
        return str(t.dtype)

    def _identity(self, t: Any) -> Any:
        # the graph node: `x.to(same dtype)` is another Var object on the same node (jt.grad would give
        # the second target zeros), and in-place ops (assign/update/`+=`) move an object to a new node
        return t.id

    def _wants_grad(self, t: Any) -> bool:
        return not t.is_stop_grad() and str(t.dtype).startswith("float")

    def _watch(self, key: str, t: Any, rec: Recorder) -> None:
        pass  # grads come from the single jt.grad over rec.watched

    # ----- model walk -------------------------------------------------------------------------
    def _named_modules(self, model: Any) -> list[tuple[str, Any]]:
        seen: set[int] = set()
        out = []
        for name, m in model.named_modules():
            if id(m) not in seen:
                seen.add(id(m))
                out.append((name, m))
        return out

    def _module_training(self, m: Any) -> bool:
        return bool(getattr(m, "is_train", True))  # is_training() would set the attribute

    def _named_tensors(self, model: Any) -> list[NamedTensor]:
        jt = self.jt
        mods = model.named_modules()  # every name of shared modules, so tied Vars show up twice
        eval_backup: dict[int, bool] = {}
        for _, m in mods:
            eval_backup.update(getattr(m, "backup_grad_state", None) or {})
        out: list[NamedTensor] = []
        for mname, m in mods:
            prefix = f"{mname}." if mname else ""
            for k, v in vars(m).items():
                if not isinstance(v, jt.Var) or k.startswith("_"):
                    continue
                if not v.is_stop_grad():
                    out.append(NamedTensor(prefix + k, mname, v, ParamKind.TRAINABLE))
                elif hasattr(v, "persistent") or k in _BN_BUFFERS:
                    out.append(NamedTensor(prefix + k, mname, v, ParamKind.BUFFER))
                else:
                    how = FrozenBy.EVAL if eval_backup.get(id(v)) else FrozenBy.STOP_GRAD
                    out.append(NamedTensor(prefix + k, mname, v, ParamKind.FROZEN, how))
        return out

    # ----- hooks and backward -----------------------------------------------------------------
    @contextmanager
    def _hooks(self, model: Any, on_pre: Callable[..., None], on_call: Callable[..., None]) -> Iterator[None]:
        for name, m in self._named_modules(model):
            user = m.__dict__.get("__fhook__")
            user_pre = m.__dict__.get("__fhook2__")

            def pre(mod: Any, args: Any, kw: Any = None, user_pre: Any = user_pre) -> Any:
                res = None
                if user_pre is not None:  # returns None or (new_args, new_kw)
                    res = user_pre(mod, args) if kw is None else user_pre(mod, args, kw)
                on_pre(mod, *(res if res is not None else (args, kw)))
                return res
            m.register_pre_forward_hook(pre)

            def hook(mod: Any, args: Any, out: Any, kw: Any = None, name: str = name, user: Any = user) -> Any:
                res = None
                if user is not None:  # the user's hook runs first; we record what flows on
                    res = user(mod, args, out) if kw is None else user(mod, args, out, kw)
                on_call(name, mod, args, kw, out if res is None else res)
                return res
            m.register_forward_hook(hook)
        yield

    def _backward(self, loss: Any, watched: list[tuple[str, Any]], inputs: list[Any],
                  named: list[NamedTensor], full: bool = True) -> GradResult:
        jt = self.jt
        if not self._is_tensor(loss) or int(np.prod(loss.shape)) != 1:
            raise TypeError("the loss must be a scalar jittor Var")
        labelled: dict[int, tuple[str, Any]] = {}  # dedupe by id(): repeated targets get zeros
        for key, v in watched:
            # one object watched twice means it was modified in place in between; jt.grad sees only its
            # latest node, so only the latest key gets a gradient (the older one stays without, not wrong)
            labelled.pop(id(v), None)
            labelled[id(v)] = (key, v)
        nodes = {v.id for _, v in labelled.values()}
        for i, v in enumerate(inputs):
            if self._wants_grad(v) and v.id not in nodes:
                labelled.setdefault(id(v), (f"input/{i}", v))
                nodes.add(v.id)
        for nt in named:
            if nt.kind != ParamKind.TRAINABLE or id(nt.tensor) in labelled:
                continue
            if nt.tensor.id in nodes:  # a module returned a parameter itself: the param's status wins
                for vid, (label, v) in list(labelled.items()):
                    if v.id == nt.tensor.id:
                        del labelled[vid]
            labelled[id(nt.tensor)] = (f"param:{nt.name}", nt.tensor)
            nodes.add(nt.tensor.id)
        items = list(labelled.items())
        tag = f"#aligner{next(_TAGS)}"
        old_names = [v.name() for _, (_, v) in items]
        for _, (label, v) in items:
            v.name(label + tag)
        try:
            with jt.log_capture_scope(log_v=0) as logs:
                grads = jt.grad(loss, [v for _, (_, v) in items]) if items else []
                if grads:
                    jt.sync(grads)
        finally:
            for (_, (_, v)), n in zip(items, old_names):
                v.name(n)
        unreachable = {m["msg"].split("'")[1][: -len(tag)] for m in logs
                       if "doesn't have gradient" in m["msg"] and tag in m["msg"]}
        acts: dict[str, np.ndarray | TensorStats] = {}
        ins: dict[int, np.ndarray | TensorStats] = {}
        params: dict[int, tuple[GradStatus, np.ndarray | None]] = {}
        grads = list(grads)
        for i, ((vid, (label, _)), g) in enumerate(zip(items, grads)):
            grads[i] = None  # type: ignore[index] - each gradient's memory goes as soon as it is read
            if label in unreachable:
                if label.startswith("param:"):
                    params[vid] = (GradStatus.UNREACHABLE, None)
                continue
            a = g.numpy()
            del g
            if label.startswith("param:"):
                params[vid] = (GradStatus.NONZERO if np.any(a != 0) else GradStatus.ZERO, a)
            elif label.startswith("input/"):
                ins[int(label.split("/")[1])] = a if full else TensorStats.of(a)
            else:
                acts[label] = a if full else TensorStats.of(a)
        return GradResult(acts=acts, inputs=ins, params=params)

    # ----- state ------------------------------------------------------------------------------
    def _save_state(self, model: Any, named: list[NamedTensor]) -> Any:
        mods = [m for _, m in self._named_modules(model)]
        classes = {type(m) for m in mods}
        return {
            "hooks": [(m, {a: m.__dict__.get(a, _MISSING) for a in _HOOK_ATTRS}) for m in mods],
            "classes": [(c, saved_class_attrs(c, _CLASS_ATTRS)) for c in classes],
            "training": [(m, m.__dict__.get("is_train", _MISSING)) for m in mods],
            "buffers": [(nt.tensor, nt.tensor.numpy()) for nt in named if nt.kind == ParamKind.BUFFER],
        }

    def _restore_state(self, model: Any, named: list[NamedTensor], saved: Any) -> None:
        jt = self.jt
        jt.sync_all()  # let lazy running-stat updates land before they are overwritten
        for m, attrs in saved["hooks"]:
            for a, v in attrs.items():
                if v is _MISSING:
                    m.__dict__.pop(a, None)
                else:
                    m.__dict__[a] = v
        for c, attrs in saved["classes"]:
            restore_class_attrs(c, attrs)
        for m, flag in saved["training"]:
            if flag is _MISSING:
                m.__dict__.pop("is_train", None)
            else:
                m.is_train = flag
        for v, a in saved["buffers"]:
            v.update(self._source(a, v))
        jt.sync_all()

    def _sgd(self, model: Any, x: list[Any], loss_of: Callable[[Any], Any], trainable: list[NamedTensor],
             steps: int, hyper: dict[str, Any]) -> list[tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        jt = self.jt
        # the port's optimiser sees model.parameters(), exactly what a Jittor training script passes
        opt = jt.optim.SGD(model.parameters(), hyper["lr"], momentum=hyper["momentum"],
                           weight_decay=hyper["weight_decay"], nesterov=hyper["nesterov"])
        out = []
        for _ in range(steps):
            loss = loss_of(model(*x))
            opt.backward(loss)
            grads = {nt.name: nt.tensor.opt_grad(opt).numpy() for nt in trainable}
            opt.step()
            jt.sync_all()
            params = {nt.name: nt.tensor.numpy() for nt in trainable}
            out.append((float(loss.item()), params, grads))
        with jt.no_grad():
            out.append((float(loss_of(model(*x)).item()), {}, {}))
        return out

    def float64_copy(self, model: Any) -> Any:
        # copy.deepcopy of a Var drops its stop_grad (BN running stats would become trainable,
        # docs/jittor-notes.md): re-apply the original's state on the copy
        stopped = {nt.name for nt in self._named_tensors(model) if nt.tensor.is_stop_grad()}
        copy = super().float64_copy(model)
        for nt in self._named_tensors(copy):
            if nt.name in stopped and not nt.tensor.is_stop_grad():
                nt.tensor.stop_grad()
        return copy

    def _to_float64(self, model: Any) -> Any:
        model.float64()
        return model

    def _source(self, a: np.ndarray, v: Any) -> Any:
        """A Var to ``update`` ``v`` from. It must NOT be stop_grad: update() copies a source's
        stop_grad onto the target (a trainable param would freeze), while a non-stop_grad source
        leaves a stop_grad target (a buffer) stopped."""
        return self._from_numpy(np.asarray(a).astype(str(v.dtype)), requires_grad=True)

    def _load_arrays(self, model: Any, arrays: dict[str, np.ndarray]) -> list[str]:
        by_name = {nt.name: nt.tensor for nt in self._named_tensors(model)}
        missing = []
        for k, a in arrays.items():
            v = by_name.get(k)
            if v is None or tuple(v.shape) != tuple(a.shape):
                missing.append(k)
                continue
            v.update(self._source(a, v))
        self.jt.sync_all()
        return missing
