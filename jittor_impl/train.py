"""Optimizer construction (official `yolov6/solver/build.py: build_optimizer`) and one training step.
Jittor mirror of reference_torch/train.py.

The official schedule (warm-up, cosine lf, EMA, accumulate) lives in the engine and is not reproduced here;
callers pass the final lr / momentum / weight decay.
"""
from __future__ import annotations

from typing import Any, Callable

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .iou import const
from .layers import BatchNorm2d, SyncBatchNorm2d

__all__ = ["SGD", "build_optimizer", "train_step"]


class SGD(jt.optim.SGD):
    """``jt.optim.SGD`` with torch's update in each parameter's own precision.

    The update rule is torch's (dampening 0 gives the same first step): ``d = g + wd*p``, ``v = m*v + (1-damp)*d``,
    ``p -= lr * (d + m*v)`` (nesterov) or ``p -= lr * v``. Jittor's own step multiplies by the Python floats lr,
    momentum and weight decay, which it turns into float32 constants (0.937 -> 0.93699997), so a float64 model
    would train with rounded hyper-parameters; here they are constants of the parameter's dtype. Groups may
    override lr / momentum / weight_decay / dampening / nesterov, as in torch.
    """

    def step(self, loss: jt.Var | None = None, retain_graph: bool = False) -> None:
        self.pre_step(loss, retain_graph=retain_graph)
        jt.flags.node_order = 1
        for pg in self.param_groups:
            lr = pg.get("lr", self.lr)
            momentum = pg.get("momentum", self.momentum)
            weight_decay = pg.get("weight_decay", self.weight_decay)
            dampening = pg.get("dampening", self.dampening)
            nesterov = pg.get("nesterov", self.nesterov)
            consts: dict[str, tuple[jt.Var, ...]] = {}  # per dtype: (wd, momentum, 1 - dampening, lr)
            for p, g, v in zip(pg["params"], pg["grads"], pg["values"]):
                if p.is_stop_grad():
                    continue
                dt = str(p.dtype)
                if dt not in consts:
                    consts[dt] = tuple(const(c, dt) for c in (weight_decay, momentum, 1 - dampening, lr))
                    # materialise the constants now: left lazy, the updates (executed at the next sync, after
                    # step() returned) read garbage for them once other graphs had run in the process
                    # (measured: a first step of -2.8 to -6.6 x grad instead of -1.9e-5 x grad)
                    jt.sync(list(consts[dt]))
                wd_c, mom_c, damp_c, lr_c = consts[dt]
                d_p = g + wd_c * p if weight_decay != 0 else g
                v.update(mom_c * v + damp_c * d_p)
                step = d_p + mom_c * v if nesterov else v
                p.update(p - lr_c * step)
        self.post_step()


def build_optimizer(model: nn.Module, lr: float, momentum: float = 0.937, weight_decay: float = 5e-4,
                    nesterov: bool = True, official_groups: bool = True) -> SGD:
    """SGD over the model's parameters (build it after any ``model.float64()``: the momentum buffers take the
    parameters' dtype at construction).

    official_groups=True: the official 3 groups — BatchNorm2d weights (no decay), other ``weight`` Vars
    (decay), ``bias`` Vars (no decay), collected by walking ``model.modules()``.
    official_groups=False: every trainable parameter in ``named_parameters()`` order, one group with decay on all
    (the golden data's step-6 optimizer).
    """
    if not official_groups:
        # Jittor lists BN running stats among the parameters; they are stop_grad (torch: buffers)
        params = [p for _, p in model.named_parameters() if not p.is_stop_grad()]
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    g_bnw: list[jt.Var] = []
    g_w: list[jt.Var] = []
    g_b: list[jt.Var] = []
    for v in model.modules():
        if isinstance(getattr(v, "bias", None), jt.Var):
            g_b.append(v.bias)
        # faithful: the official test is isinstance(v, nn.BatchNorm2d); mmcv's SyncBN is torch.nn.SyncBatchNorm,
        # which is not a BatchNorm2d, so SyncBN weights land in the decayed weight group (SyncBatchNorm2d
        # subclasses BatchNorm2d here, hence the explicit exclusion, as in reference_torch)
        if isinstance(v, BatchNorm2d) and not isinstance(v, SyncBatchNorm2d):
            g_bnw.append(v.weight)
        elif isinstance(getattr(v, "weight", None), jt.Var):
            g_w.append(v.weight)
    # faithful: Vars not named weight/bias (BottleRep `alpha`, detect.proj) are in no group -> never updated;
    # the frozen detect.proj_conv.weight is in g_w but stop_grad, so SGD skips it
    return SGD([{"params": g_bnw}, {"params": g_w, "weight_decay": weight_decay}, {"params": g_b}], lr,
               momentum=momentum, weight_decay=0.0, nesterov=nesterov)


def train_step(model: nn.Module, loss_fn: Callable[..., tuple[jt.Var, jt.Var]], images: jt.Var, targets: Any,
               optimizer: jt.optim.Optimizer, epoch_num: int = 0, step_num: int = 0) -> dict[str, Any]:
    """zero_grad -> train-mode forward -> loss -> backward -> step. Returns {'loss': float, 'items': Var[3]}.

    ``items`` = [2.5*iou, 0.5*dfl, 1.0*cls] (no gradient), computed before the step.
    """
    model.train()
    optimizer.zero_grad()
    outputs = model(images)
    # Model.execute returns [(feats, pred_scores, pred_distri), featmaps] in train mode
    head_out = outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 2 else outputs
    loss, items = loss_fn(head_out, targets, epoch_num, step_num)
    optimizer.step(loss)  # Jittor's step runs the backward itself
    return {"loss": float(loss.item()), "items": items}
