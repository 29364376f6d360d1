"""Decoupled head of port "C": one registry entry per level (``levels["s8"]``), each with its own towers.

Train output: (stem features, sigmoid scores [B, A, nc], distances [B, A, 4]) with anchors level-major, row-major.
"""
from __future__ import annotations

import math
from typing import Sequence

import jittor as jt
from jittor import nn

try:
    from .nets import ConvNorm, Registry
except ImportError:  # loaded next to nets.py as plain modules
    from nets import ConvNorm, Registry  # type: ignore[no-redef]

STRIDES = (8, 16, 32)
PRIOR_PROB = 1e-2
DFL_BINS = 17  # the official Detect keeps a 17-bin DFL projection even with reg_max 0 (unused)


class DistanceConv(nn.Module):
    """1x1 box-distance prediction, times ``scale`` (1: distances in grid cells, as the loss expects)."""

    def __init__(self, cin: int, scale: float = 1.0) -> None:
        self.conv = nn.Conv2d(cin, 4, 1)
        self.scale = scale

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.conv(x)
        return y if self.scale == 1.0 else y * self.scale


class Level(nn.Module):
    """stem -> (cls tower -> cls logits, reg tower -> distances) for one stride."""

    def __init__(self, c: int, num_classes: int, reg_scale: float) -> None:
        self.stem = ConvNorm(c, c, 1, act=nn.silu)
        self.cls_tower = ConvNorm(c, c, 3, act=nn.silu)
        self.reg_tower = ConvNorm(c, c, 3, act=nn.silu)
        self.cls_out = nn.Conv2d(c, num_classes, 1)
        self.reg_out = DistanceConv(c, reg_scale)
        # zero prediction weights, prior-probability class bias, unit distance bias (YOLOv6 initialize_biases)
        self.cls_out.weight = jt.zeros(self.cls_out.weight.shape, "float32")
        self.cls_out.bias = jt.full((num_classes,), -math.log((1 - PRIOR_PROB) / PRIOR_PROB), "float32")
        self.reg_out.conv.weight = jt.zeros(self.reg_out.conv.weight.shape, "float32")
        self.reg_out.conv.bias = jt.ones((4,), "float32")


class Head(nn.Module):
    def __init__(self, num_classes: int, widths: Sequence[int], deviations: frozenset[str]) -> None:
        self.num_classes = num_classes
        pixels = "head_reg_scale" in deviations
        self.levels = Registry(**{f"s{s}": Level(c, num_classes, float(s) if pixels else 1.0)
                                  for s, c in zip(STRIDES, widths)})
        bins = jt.linspace(0, DFL_BINS - 1, DFL_BINS).float32()
        self.dfl_bins = bins.stop_grad()
        self.dfl_conv = nn.Conv2d(DFL_BINS, 1, 1, bias=False)
        self.dfl_conv.weight = bins.reshape(1, DFL_BINS, 1, 1).clone().stop_grad()

    def execute(self, feats: Sequence[jt.Var]) -> tuple[list[jt.Var], jt.Var, jt.Var]:
        stems, scores, dists = [], [], []
        for s, f in zip(STRIDES, feats):
            lvl = self.levels[f"s{s}"]
            x = lvl.stem(f)
            stems.append(x)
            cls = jt.sigmoid(lvl.cls_out(lvl.cls_tower(x)))
            reg = lvl.reg_out(lvl.reg_tower(x))
            b, _, h, w = x.shape
            scores.append(cls.reshape(b, self.num_classes, h * w).transpose(0, 2, 1))
            dists.append(reg.reshape(b, 4, h * w).transpose(0, 2, 1))
        return stems, jt.concat(scores, 1), jt.concat(dists, 1)
