"""Optimizer construction (official `yolov6/solver/build.py: build_optimizer`) and one training step.

The official schedule (warm-up, cosine lf, EMA, accumulate) lives in the engine and is not reproduced here;
callers pass the final lr / momentum / weight decay.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .layers import SyncBatchNorm2d

__all__ = ["build_optimizer", "train_step"]


def build_optimizer(model: nn.Module, lr: float, momentum: float = 0.937, weight_decay: float = 5e-4,
                    nesterov: bool = True, official_groups: bool = True) -> torch.optim.SGD:
    """SGD over the model's parameters.

    official_groups=True: the official 3 groups — BatchNorm2d weights (no decay), other `.weight` Parameters
    (decay), `.bias` Parameters (no decay), collected by walking `model.modules()`.
    official_groups=False: every trainable parameter in `named_parameters()` order, one group with decay on all
    (the golden data's step-6 optimizer).
    """
    if not official_groups:
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    g_bnw: list[nn.Parameter] = []
    g_w: list[nn.Parameter] = []
    g_b: list[nn.Parameter] = []
    for v in model.modules():
        if hasattr(v, "bias") and isinstance(v.bias, nn.Parameter):
            g_b.append(v.bias)
        # faithful: the official test is isinstance(v, nn.BatchNorm2d); mmcv's SyncBN is torch.nn.SyncBatchNorm,
        # which is not a BatchNorm2d, so SyncBN weights land in the decayed weight group. Our SyncBN stand-in
        # subclasses BatchNorm2d (for initialize_weights), hence the explicit exclusion.
        if isinstance(v, nn.BatchNorm2d) and not isinstance(v, SyncBatchNorm2d):
            g_bnw.append(v.weight)
        elif hasattr(v, "weight") and isinstance(v.weight, nn.Parameter):
            g_w.append(v.weight)
    # faithful: Parameters not named weight/bias (BottleRep `alpha`, detect.proj) are in no group -> never updated;
    # frozen detect.proj_conv.weight is in g_w but has no grad, so SGD skips it
    optimizer = torch.optim.SGD(g_bnw, lr=lr, momentum=momentum, nesterov=nesterov)
    optimizer.add_param_group({"params": g_w, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": g_b})
    return optimizer


def train_step(model: nn.Module, loss_fn: Callable[..., tuple[Tensor, Tensor]], images: Tensor, targets: Tensor,
               optimizer: torch.optim.Optimizer, epoch_num: int = 0, step_num: int = 0) -> dict[str, Any]:
    """zero_grad -> train-mode forward -> loss -> backward -> step. Returns {'loss': float, 'items': Tensor[3]}.

    `items` = [2.5*iou, 0.5*dfl, 1.0*cls] (detached), computed before the step.
    """
    model.train()
    optimizer.zero_grad()
    outputs = model(images)
    # Model.forward returns [(feats, pred_scores, pred_distri), featmaps] in train mode
    head_out = outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 2 else outputs
    loss, items = loss_fn(head_out, targets, epoch_num, step_num)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "items": items}
