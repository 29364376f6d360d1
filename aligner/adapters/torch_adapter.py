"""PyTorch adapter: forward hooks on every module, tensor hooks for activation grads.

Module full backward hooks are avoided on purpose: they break on in-place ops. A tensor hook
registered on an output at forward time fires with the gradient of that exact version.
Parameter grads come from ``torch.autograd.grad(allow_unused=True)``, so ``.grad`` is never touched
and ``None`` means UNREACHABLE while a zero tensor means a reachable, exactly-zero gradient.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from ..records import Framework, FrozenBy, GradStatus, ParamKind
from .base import Adapter, GradResult, NamedTensor
from .recording import Recorder

__all__ = ["TorchAdapter"]


def _torch() -> Any:
    import torch  # noqa: PLC0415 - lazy: `import aligner` must not load torch
    return torch


class TorchAdapter(Adapter):
    framework = Framework.TORCH

    def __init__(self) -> None:
        self.torch = _torch()

    def versions(self) -> dict[str, str]:
        return {"torch": self.torch.__version__.split("+")[0]}

    def _to_float64(self, model: Any) -> Any:
        return model.double()

    # ----- tensors ----------------------------------------------------------------------------
    def _is_tensor(self, x: Any) -> bool:
        return isinstance(x, self.torch.Tensor)

    def _from_numpy(self, a: np.ndarray, *, requires_grad: bool) -> Any:
        t = self.torch.from_numpy(np.array(a, copy=True))
        return t.requires_grad_(True) if requires_grad and t.is_floating_point() else t

    def _hold(self, t: Any) -> Any:
        return t.detach().clone() if self._is_tensor(t) else np.asarray(t)

    def _fetch(self, handles: list[Any]) -> list[np.ndarray]:
        return [h.cpu().numpy() if self._is_tensor(h) else np.asarray(h) for h in handles]

    def _view(self, t: Any) -> np.ndarray:
        # read before any later in-place op can run: no clone needed (stats-only summarises it at once)
        return t.detach().cpu().numpy() if self._is_tensor(t) else np.asarray(t)

    def _dtype_name(self, t: Any) -> str:
        return str(t.dtype).replace("torch.", "")

    def _identity(self, t: Any) -> Any:
        return (id(t), t._version)  # ids stay unique: the recorder keeps every tensor alive

    def _wants_grad(self, t: Any) -> bool:
        return bool(t.requires_grad)

    def _watch(self, key: str, t: Any, rec: Recorder) -> None:
        # A weak reference: a hook holding the recorder made a cycle tensor -> hook -> recorder ->
        # tensor that gc never freed, so every capture leaked its activations (GOLD-YOLO-N at 640:
        # ~290 MB per capture, growing run after run; benchmarks/results/bench.md)
        ref = weakref.ref(rec)

        def hook(g: Any, key: str = key) -> None:
            r = ref()
            if r is not None:
                r.on_grad(key, g.detach().cpu().numpy())
        t.register_hook(hook)

    # ----- model walk -------------------------------------------------------------------------
    def _named_modules(self, model: Any) -> list[tuple[str, Any]]:
        return list(model.named_modules())

    def _module_training(self, m: Any) -> bool:
        return bool(m.training)

    def _named_tensors(self, model: Any) -> list[NamedTensor]:
        """Parameters, buffers and plain tensor attributes under every name (tied ones included)."""
        out: list[NamedTensor] = []
        for mname, m in model.named_modules(remove_duplicate=False):
            prefix = f"{mname}." if mname else ""
            for k, p in m._parameters.items():
                if p is None:
                    continue
                kind = ParamKind.TRAINABLE if p.requires_grad else ParamKind.FROZEN
                out.append(NamedTensor(prefix + k, mname, p, kind,
                                       None if p.requires_grad else FrozenBy.REQUIRES_GRAD))
            for k, b in m._buffers.items():
                if b is not None:
                    out.append(NamedTensor(prefix + k, mname, b, ParamKind.BUFFER))
            for k, v in vars(m).items():
                if isinstance(v, self.torch.Tensor) and not k.startswith("_"):
                    out.append(NamedTensor(prefix + k, mname, v, ParamKind.CONSTANT))
        return out

    # ----- hooks and backward -----------------------------------------------------------------
    @contextmanager
    def _hooks(self, model: Any, on_pre: Callable[..., None], on_call: Callable[..., None]) -> Iterator[None]:
        handles = []

        def pre(mod: Any, args: Any, kwargs: Any) -> None:
            on_pre(mod, args, kwargs)
        try:
            for name, m in model.named_modules():
                def hook(mod: Any, args: Any, kwargs: Any, out: Any, name: str = name) -> None:
                    on_call(name, mod, args, kwargs, out)
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(m.register_forward_hook(hook, with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def _backward(self, loss: Any, watched: list[tuple[str, Any]], inputs: list[Any],
                  named: list[NamedTensor], full: bool = True) -> GradResult:
        torch = self.torch
        if not self._is_tensor(loss) or loss.numel() != 1:
            raise TypeError("the loss must be a scalar torch tensor")
        params: dict[int, Any] = {}
        for nt in named:
            if nt.kind == ParamKind.TRAINABLE:
                params.setdefault(id(nt.tensor), nt.tensor)
        ins = [(i, t) for i, t in enumerate(inputs) if t.requires_grad]
        targets = list(params.values()) + [t for _, t in ins]
        if loss.requires_grad and targets:
            grads = torch.autograd.grad(loss.reshape(()), targets, allow_unused=True)
        else:  # the loss does not depend on anything trainable: every parameter is unreachable
            grads = (None,) * len(targets)
        pres: dict[int, tuple[GradStatus, np.ndarray | None]] = {}
        for pid, g in zip(params, grads[: len(params)]):
            if g is None:
                pres[pid] = (GradStatus.UNREACHABLE, None)
            else:
                a = g.detach().cpu().numpy().copy()
                pres[pid] = (GradStatus.NONZERO if np.any(a != 0) else GradStatus.ZERO, a)
        gin = {i: g.detach().cpu().numpy().copy() for (i, _), g in zip(ins, grads[len(params):])
               if g is not None}
        return GradResult(acts={}, inputs=gin, params=pres)

    # ----- state ------------------------------------------------------------------------------
    def _save_state(self, model: Any, named: list[NamedTensor]) -> Any:
        return {
            "training": [(m, m.training) for _, m in model.named_modules()],
            "buffers": [(nt.tensor, nt.tensor.detach().clone()) for nt in named if nt.kind == ParamKind.BUFFER],
        }

    def _restore_state(self, model: Any, named: list[NamedTensor], saved: Any) -> None:
        for m, flag in saved["training"]:
            m.training = flag
        with self.torch.no_grad():
            for t, v in saved["buffers"]:
                t.copy_(v)

    def _sgd(self, model: Any, x: list[Any], loss_of: Callable[[Any], Any], trainable: list[NamedTensor],
             steps: int, hyper: dict[str, Any]) -> list[tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        torch = self.torch
        uniq = list({id(nt.tensor): nt.tensor for nt in trainable}.values())
        old_grads = [(p, p.grad) for p in uniq]
        opt = torch.optim.SGD(uniq, lr=hyper["lr"], momentum=hyper["momentum"], nesterov=hyper["nesterov"],
                              weight_decay=hyper["weight_decay"])
        out = []
        try:
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = loss_of(model(*x))
                loss.backward()
                grads = {nt.name: nt.tensor.grad.detach().cpu().numpy().copy()
                         for nt in trainable if nt.tensor.grad is not None}
                opt.step()
                params = {nt.name: nt.tensor.detach().cpu().numpy().copy() for nt in trainable}
                out.append((float(loss.detach()), params, grads))
            with torch.no_grad():
                out.append((float(loss_of(model(*x))), {}, {}))
        finally:
            for p, g in old_grads:
                p.grad = g
        return out

    def _load_arrays(self, model: Any, arrays: dict[str, np.ndarray]) -> list[str]:
        by_name = {nt.name: nt.tensor for nt in self._named_tensors(model)}
        missing = []
        with self.torch.no_grad():
            for k, a in arrays.items():
                t = by_name.get(k)
                if t is None or tuple(t.shape) != tuple(a.shape):
                    missing.append(k)
                    continue
                t.copy_(self.torch.from_numpy(np.array(a, copy=True)).to(t.dtype))
        return missing
