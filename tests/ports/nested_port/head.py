"""The heads (official EffiDeHead, anchor-free, no DFL for GOLD-YOLO-N): one decoupled head per level."""
from __future__ import annotations

import math
from typing import Sequence

import aligner.env  # noqa: F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt
from jittor import nn

from .layers import ConvNormAct

PRIOR_PROB = 1e-2


class LevelHead(nn.Module):
    """stem 1x1, then a class tower and a box tower (3x3 each), each closed by a 1x1 prediction conv."""

    def __init__(self, channels: int, num_classes: int, box_outputs: int) -> None:
        self.stem = ConvNormAct(channels, channels, 1, act="silu")
        self.cls_tower = ConvNormAct(channels, channels, 3, act="silu")
        self.reg_tower = ConvNormAct(channels, channels, 3, act="silu")
        self.cls_out = nn.Conv2d(channels, num_classes, 1, bias=True)
        self.reg_out = nn.Conv2d(channels, box_outputs, 1, bias=True)
        # the official init: zero prediction weights, the class prior as the class bias, 1 as the box bias
        self.cls_out.weight = jt.zeros(self.cls_out.weight.shape, "float32")
        self.cls_out.bias = jt.full((num_classes,), -math.log((1 - PRIOR_PROB) / PRIOR_PROB), "float32")
        self.reg_out.weight = jt.zeros(self.reg_out.weight.shape, "float32")
        self.reg_out.bias = jt.full((box_outputs,), 1.0, "float32")

    def execute(self, x: jt.Var) -> tuple[jt.Var, jt.Var, jt.Var]:
        """(stem output, class probabilities [B, HW, nc], box distances [B, HW, 4])."""
        x = self.stem(x)
        scores = jt.sigmoid(self.cls_out(self.cls_tower(x)))
        boxes = self.reg_out(self.reg_tower(x))
        return x, scores.flatten(2).permute(0, 2, 1), boxes.flatten(2).permute(0, 2, 1)


class Heads(nn.Module):
    """Heads on the fpn's three maps. Returns ``(pred_scores, pred_distri, stem_maps)``: scores first, as this
    port's loss reads them (the reference returns ``(stem_maps, pred_scores, pred_distri)``)."""

    def __init__(self, widths: Sequence[int], num_classes: int, reg_max: int = 0, dfl_bins: int = 17) -> None:
        self.levels = nn.Sequential(*[LevelHead(c, num_classes, 4 * (reg_max + 1)) for c in widths])
        # The official head always carries the 17-bin DFL projection (Detect keeps reg_max 16 even when the
        # config has none); unused without DFL, kept frozen so every reference tensor has its place here.
        self.dfl_bins = jt.linspace(0, dfl_bins - 1, dfl_bins).float32().stop_grad()
        self.dfl_conv = nn.Conv2d(dfl_bins, 1, 1, bias=False)
        self.dfl_conv.weight = self.dfl_bins.reshape(1, dfl_bins, 1, 1).clone().stop_grad()

    def execute(self, maps: Sequence[jt.Var]) -> tuple[jt.Var, jt.Var, list[jt.Var]]:
        stems, scores, boxes = [], [], []
        for level, x in zip(self.levels, maps):
            s, c, b = level(x)
            stems.append(s)
            scores.append(c)
            boxes.append(b)
        return jt.concat(scores, dim=1), jt.concat(boxes, dim=1), stems
