"""Efficient decoupled head in Jittor (mirror of reference_torch/head.py: `Detect`, `build_effidehead_layer`).

Train forward returns `(x, pred_scores, pred_distri)` with `x` the stem outputs, `pred_scores` already
sigmoided [B,N,nc] and `pred_distri` raw [B,N,4*(reg_max+1)]; eval forward returns [B,N,5+nc] =
(cx, cy, w, h in pixels, 1, class scores).

Jittor differences: the frozen DFL projection (`proj`, `proj_conv.weight`) is `stop_grad` (a Jittor Var
attribute is otherwise a trainable parameter); `stride` is a tuple of ints, not a tensor, because a Var
attribute would become a parameter and a state_dict entry that torch does not have.
"""
from __future__ import annotations

import math
from typing import Sequence

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .anchors import dist2bbox, generate_anchors
from .layers import Conv


def build_effidehead_layer(channels_list: Sequence[int], num_anchors: int, num_classes: int, reg_max: int = 16,
                           num_layers: int = 3) -> nn.Sequential:
    """Five layers per level (stem, cls_conv, reg_conv, cls_pred, reg_pred) on neck channels 6/8/10."""
    chx = [6, 8, 10] if num_layers == 3 else [8, 9, 10, 11]
    layers: list[nn.Module] = []
    for idx in chx[:num_layers]:
        c = channels_list[idx]
        layers += [
            Conv(in_channels=c, out_channels=c, kernel_size=1, stride=1),  # stem
            Conv(in_channels=c, out_channels=c, kernel_size=3, stride=1),  # cls_conv
            Conv(in_channels=c, out_channels=c, kernel_size=3, stride=1),  # reg_conv
            nn.Conv2d(in_channels=c, out_channels=num_classes * num_anchors, kernel_size=1),  # cls_pred
            nn.Conv2d(in_channels=c, out_channels=4 * (reg_max + num_anchors), kernel_size=1),  # reg_pred
        ]
    return nn.Sequential(*layers)


class Detect(nn.Module):
    """Efficient decoupled head (`EffiDeHead`)."""

    export = False

    def __init__(self, num_classes: int = 80, num_layers: int = 3, inplace: bool = True,
                 head_layers: nn.Sequential | None = None, use_dfl: bool = True, reg_max: int = 16) -> None:
        assert head_layers is not None
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl = num_layers
        self.grid = [jt.zeros((1,))] * num_layers  # a list: not traversed, so not a parameter
        self.prior_prob = 1e-2
        self.inplace = inplace
        stride = [8, 16, 32] if num_layers == 3 else [8, 16, 32, 64]
        self.stride = tuple(stride)  # NOTE: torch keeps a tensor; a Jittor Var attribute would be a parameter
        self.use_dfl = use_dfl
        # faithful: build_network never passes reg_max to Detect, so reg_max here is always the default 16
        # (proj / proj_conv have 17 entries even when the config has reg_max=0)
        self.reg_max = reg_max
        self.proj_conv = nn.Conv2d(self.reg_max + 1, 1, 1, bias=False)
        self.grid_cell_offset = 0.5
        self.grid_cell_size = 5.0
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        for i in range(num_layers):
            idx = i * 5
            self.stems.append(head_layers[idx])
            self.cls_convs.append(head_layers[idx + 1])
            self.reg_convs.append(head_layers[idx + 2])
            self.cls_preds.append(head_layers[idx + 3])
            self.reg_preds.append(head_layers[idx + 4])

    def initialize_biases(self) -> None:
        """Prior biases, zero prediction weights, frozen DFL projection (replaces the parameter Vars).

        Call before building an optimizer: it holds the Var objects.
        """
        for conv in self.cls_preds:
            conv.bias = jt.full(conv.bias.shape, -math.log((1 - self.prior_prob) / self.prior_prob), "float32")
            # faithful: zero-initialised cls pred weights (no gradient reaches the body at init)
            conv.weight = jt.zeros(conv.weight.shape, "float32")
        for conv in self.reg_preds:
            conv.bias = jt.full(conv.bias.shape, 1.0, "float32")
            conv.weight = jt.zeros(conv.weight.shape, "float32")  # faithful: zero-initialised reg pred weights
        # requires_grad=False in torch -> stop_grad here (else optimizers would update it, weight decay included)
        self.proj = jt.linspace(0, self.reg_max, self.reg_max + 1).float32().stop_grad()
        self.proj_conv.weight = self.proj.reshape([1, self.reg_max + 1, 1, 1]).clone().stop_grad()

    def execute(self, x: list[jt.Var]) -> tuple[list[jt.Var], jt.Var, jt.Var] | jt.Var:
        # NOTE: x is modified in place (x[i] becomes the stem output), as in the official code
        if self.training:
            cls_score_list, reg_distri_list = [], []
            for i in range(self.nl):
                x[i] = self.stems[i](x[i])
                cls_output = self.cls_preds[i](self.cls_convs[i](x[i]))
                reg_output = self.reg_preds[i](self.reg_convs[i](x[i]))
                cls_output = jt.sigmoid(cls_output)  # faithful: sigmoid inside the head in train mode
                cls_score_list.append(cls_output.flatten(2).permute((0, 2, 1)))
                reg_distri_list.append(reg_output.flatten(2).permute((0, 2, 1)))
            return x, jt.concat(cls_score_list, dim=1), jt.concat(reg_distri_list, dim=1)

        cls_score_list, reg_dist_list = [], []
        anchor_points, stride_tensor = generate_anchors(
            x, self.stride, self.grid_cell_size, self.grid_cell_offset, device=None, is_eval=True, mode="af")
        b = x[0].shape[0]
        for i in range(self.nl):
            b, _, h, w = x[i].shape
            l = h * w
            x[i] = self.stems[i](x[i])
            cls_output = self.cls_preds[i](self.cls_convs[i](x[i]))
            reg_output = self.reg_preds[i](self.reg_convs[i](x[i]))
            if self.use_dfl:
                reg_output = reg_output.reshape([-1, 4, self.reg_max + 1, l]).permute(0, 2, 1, 3)
                reg_output = self.proj_conv(nn.softmax(reg_output, dim=1))
            cls_output = jt.sigmoid(cls_output)
            cls_score_list.append(cls_output.reshape([b, self.nc, l]))
            reg_dist_list.append(reg_output.reshape([b, 4, l]))
        cls_scores = jt.concat(cls_score_list, dim=-1).permute(0, 2, 1)
        reg_dists = jt.concat(reg_dist_list, dim=-1).permute(0, 2, 1)
        pred_bboxes = dist2bbox(reg_dists, anchor_points, box_format="xywh")
        pred_bboxes = pred_bboxes * stride_tensor.cast(pred_bboxes.dtype)
        ones = jt.ones((b, pred_bboxes.shape[1], 1), dtype=pred_bboxes.dtype)
        return jt.concat([pred_bboxes, ones, cls_scores], dim=-1)
