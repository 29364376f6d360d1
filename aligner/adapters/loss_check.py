"""The port's own loss checked alone: the reference's head outputs into both losses (framework side).

The interface (``--port-loss PATH.py:FACTORY [--port-loss-args JSON]``, :class:`aligner.runconfig.Port` ``loss``):
``FACTORY(**args)`` returns an object ``L`` with

* ``L(head, targets) -> (total, items)``: ``head`` the loss input in the reference layout as Jittor Vars (GOLD-YOLO:
  ``(feats, pred_scores, pred_distri)``, scores after the sigmoid), ``targets`` the pair's targets as a Jittor Var
  (GOLD-YOLO: float32 ``[n, 6]`` rows ``(image, class, cx, cy, w, h)`` normalised), ``total`` a scalar Var,
  ``items`` the reference's items in its order (a Var or a list of scalars);
* ``L.head(outputs)`` (optional): the port model's raw outputs to that layout (else the pair's ``head_of``);
* ``L.assignment`` (optional): a dict set during the call, ``fg_mask`` [B, A] and for the tie check
  ``target_scores`` / ``target_bboxes``, recorded as the ``assign/<key>`` stages the pair's own loss records.

In the normal capture the port's model trains on ``L`` (:meth:`aligner.pairs.base.Pair.port_loss_fn`).

The normal capture runs each model into its own loss, so a loss difference there may come from the model.
Here the torch reference model's head outputs of one state (numpy, what the reference's own loss saw) and
the pair's targets go into (a) the reference loss (the pair's ``torch_loss``, also at the other precision
for the noise floor) and (b) the port's loss object ``L`` (``--port-loss``, through the pair's
:meth:`~aligner.pairs.base.Pair.port_loss_fn` with the head given directly, as Jittor Vars). Each run keeps
the loss total and items, the assignment stages (``assign/<key>``) and the gradients of the total w.r.t.
the head leaves the pair names (:attr:`~aligner.pairs.base.Pair.head_grads`). The same is done on the
pair's stress input (:meth:`~aligner.pairs.base.Pair.stress_head`). Judging is
:mod:`aligner.rules.loss_check`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..pairs.base import Pair
from ..rules.loss_check import IsolatedInput, LossRun
from . import get_adapter
from .recording import LossContext, Recorder

__all__ = ["reference_head", "isolate_loss"]


def _map(obj: Any, fn: Callable[[str, Any], Any], path: str = "") -> Any:
    """``obj`` with every leaf replaced by ``fn(path, leaf)``; lists and tuples keep their type."""
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj))
    return fn(path, obj)


def reference_head(pair: Pair, model: Any, weights: dict[str, np.ndarray]) -> Any:
    """The loss input (:meth:`Pair.head_of`) of the torch ``model`` in the state ``weights``, on the pair's
    inputs, in the checked mode, as numpy. The model is put back into ``weights`` afterwards (a train-mode
    forward moves BatchNorm's running statistics)."""
    import torch  # noqa: PLC0415 - framework side

    ta = get_adapter("torch")
    ta.load_arrays(model, weights)
    pair.prepare(model, "torch")
    try:
        with torch.no_grad():
            out = model(*[torch.from_numpy(np.array(a, copy=True)) for a in pair.make_inputs().inputs])
        return _map(pair.head_of(out), lambda _p, t: t.detach().cpu().numpy().copy())
    finally:
        ta.load_arrays(model, weights)


def _stages(adapter: Any, rec: Recorder) -> dict[str, np.ndarray]:
    keys = list(rec.stage_values)
    return dict(zip(keys, adapter._fetch([rec.stage_values[k] for k in keys])))


def _run(pair: Pair, framework: str, head: Any, targets: Any, loss_fn: Any, dtype: str) -> LossRun:
    """One loss call on ``head`` (numpy, cast to ``dtype``) with gradients of the total."""
    ad = get_adapter(framework)
    grad_paths = pair.head_grads
    leaves: dict[str, Any] = {}

    def tensor(path: str, a: Any) -> Any:
        a = np.asarray(a)
        a = a.astype(dtype) if a.dtype.kind == "f" else a
        t = ad._from_numpy(a, requires_grad=path in grad_paths)
        if path in grad_paths:
            leaves[path] = t
        return t

    head_t = _map(head, tensor)
    rec = Recorder(ad, True)
    total = loss_fn(head_t, ad._convert_targets(targets), LossContext(ad, rec, dtype))
    paths = list(leaves)
    if framework == "torch":
        import torch  # noqa: PLC0415
        grads = torch.autograd.grad(total, [leaves[p] for p in paths], allow_unused=True)
        garr = [g.detach().cpu().numpy() if g is not None else np.zeros(tuple(leaves[p].shape)) for p, g in
                zip(paths, grads)]
        value = float(total.detach().cpu().numpy())
    else:
        import jittor as jt  # noqa: PLC0415
        grads = jt.grad(total, [leaves[p] for p in paths])
        fetched = ad._fetch([total, *grads])
        value, garr = float(np.asarray(fetched[0]).reshape(-1)[0]), fetched[1:]
    stages = _stages(ad, rec)
    items = stages.get("stage/loss_items")
    assign = {k[len("stage/assign/"):]: v for k, v in stages.items() if k.startswith("stage/assign/")}
    return LossRun(total=value, items=None if items is None else np.asarray(items, np.float64).reshape(-1),
                   grads={grad_paths[p]: np.asarray(g) for p, g in zip(paths, garr)}, assign=assign)


def isolate_loss(pair: Pair, head: Any, make_port_loss: Callable[[], Any], *,
                 other: bool = True) -> list[IsolatedInput]:
    """The reference loss and the port's loss on ``head`` (the reference's, numpy) and on the pair's stress
    input built from it; ``other``: also the reference at the other precision (the noise floor)."""
    targets = pair.make_inputs().targets
    inputs = [("reference", head)]
    stress = pair.stress_head(head, targets)
    if stress is not None:
        inputs.append(("stress", stress))
    other_pair = replace(pair, dtype="float64" if pair.dtype == "float32" else "float32") if other else None
    out = []
    for name, h in inputs:
        ref = _run(pair, "torch", h, targets, pair.torch_loss(), pair.dtype)
        ref_other = _run(other_pair, "torch", h, targets, other_pair.torch_loss(), other_pair.dtype) \
            if other_pair is not None else None
        port, error = None, None
        try:
            port = _run(pair, "jittor", h, targets, pair.port_loss_fn(make_port_loss(), from_model=False),
                        pair.dtype)
        except Exception as exc:  # noqa: BLE001 - the user's loss failing on this input is a finding
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
        out.append(IsolatedInput(name=name, reference=ref, other=ref_other, port=port, error=error))
    return out
