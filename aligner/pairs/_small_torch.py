"""PyTorch side of the small pair: conv/BN/SiLU, attention, a shared block, upsample + concat, two heads.

Attribute names are the API: ``_small_jittor`` uses exactly the same ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNAct(nn.Module):
    def __init__(self, ci: int, co: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ci, co, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(co)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Attn(nn.Module):
    """Single-head spatial self-attention with a residual, output projection conv + BN."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        y = (v @ a.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj(y)


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 3, zero_head: bool = True) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, 2)
        self.down = ConvBNAct(8, 16, 3, 2)
        self.attn = Attn(16)
        self.shared = ConvBNAct(16, 16, 3, 1)   # called twice per forward
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(ConvBNAct(24, 16, 1), ConvBNAct(16, 16, 3))
        self.cls_pred = nn.Conv2d(16, num_classes, 1)
        self.reg_pred = nn.Conv2d(16, 4, 1)
        if zero_head:  # like GOLD-YOLO's pred convs: no gradient reaches the body at init
            nn.init.zeros_(self.cls_pred.weight)
            nn.init.zeros_(self.reg_pred.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.stem(x)
        d = self.shared(self.shared(self.attn(self.down(s))))
        f = self.fuse(torch.cat([self.up(d), s], 1))
        return self.cls_pred(f), self.reg_pred(f)


def loss(outputs: tuple[Tensor, Tensor], targets: tuple[Tensor, Tensor], ctx) -> Tensor:  # noqa: ANN001
    cls, reg = outputs
    cls_t, reg_t = targets
    l_cls = F.binary_cross_entropy_with_logits(cls, cls_t)
    l_reg = 0.5 * ((reg - reg_t) ** 2).mean()
    ctx.record("loss_items", torch.stack([l_cls.detach(), l_reg.detach()]))
    ctx.record("cls_prob_mean", torch.sigmoid(cls).mean().detach())
    return l_cls + l_reg
