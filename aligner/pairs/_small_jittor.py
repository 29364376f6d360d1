"""Jittor side of the small pair, same attribute names as ``_small_torch``.

``fault`` plants a known bug for the tests: ``detach`` / ``numpy`` break the graph after ``attn``
(down and attn become UNREACHABLE; stem still feeds the concat), ``bn_eps`` gives ``down.bn`` eps 1e-3.
"""
from __future__ import annotations

import math

import aligner.env  # noqa: F401 - must precede jittor
import jittor as jt
from jittor import nn


class BatchNorm2d(nn.BatchNorm2d):
    """Jittor's BatchNorm2d with torch's train-mode arithmetic: the variance in two passes, sum((x - mean)^2) / n
    (Jittor's own E[x^2] - E[x]^2 cancels when |mean| >> std: 28x the reference's own float32 error at
    attn.proj.1 on a 2-core EPYC), and torch's running_var update with the unbiased variance, sum / (n - 1)
    (Jittor stores the biased one, which the aligner reports as a buffer divergence)."""

    def execute(self, x: jt.Var) -> jt.Var:
        if not self.is_train:
            return super().execute(x)
        dims = [0] + list(range(2, x.ndim))
        shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
        n = x.numel() // x.shape[1]
        mean = x.mean(dims=dims)
        centred = x - mean.reshape(shape)
        var = (centred * centred).mean(dims=dims)
        alpha = self.weight / jt.sqrt(var + self.eps)
        self.running_mean.update(self.running_mean + (mean.detach() - self.running_mean) * self.momentum)
        self.running_var.update(self.running_var + (var.detach() * (n / (n - 1)) - self.running_var) * self.momentum)
        return centred * alpha.reshape(shape) + self.bias.reshape(shape)


class ConvBNAct(nn.Module):
    def __init__(self, ci: int, co: int, k: int = 3, s: int = 1) -> None:
        self.conv = nn.Conv2d(ci, co, k, s, k // 2, bias=False)
        self.bn = BatchNorm2d(co)
        self.act = nn.SiLU()

    def execute(self, x: jt.Var) -> jt.Var:
        return self.act(self.bn(self.conv(x)))


class Attn(nn.Module):
    def __init__(self, c: int) -> None:
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), BatchNorm2d(c))

    def execute(self, x: jt.Var) -> jt.Var:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, c, h * w)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        a = nn.softmax(jt.matmul(q.transpose(0, 2, 1), k) / math.sqrt(c), dim=-1)
        y = jt.matmul(v, a.transpose(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj(y)


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 3, zero_head: bool = True, fault: str | None = None) -> None:
        self.fault = fault
        self.stem = ConvBNAct(3, 8, 3, 2)
        self.down = ConvBNAct(8, 16, 3, 2)
        self.attn = Attn(16)
        self.shared = ConvBNAct(16, 16, 3, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(ConvBNAct(24, 16, 1), ConvBNAct(16, 16, 3))
        self.cls_pred = nn.Conv2d(16, num_classes, 1)
        self.reg_pred = nn.Conv2d(16, 4, 1)
        if zero_head:
            self.cls_pred.weight.assign(jt.zeros_like(self.cls_pred.weight))
            self.reg_pred.weight.assign(jt.zeros_like(self.reg_pred.weight))
        if fault == "bn_eps":
            self.down.bn.eps = 1e-3

    def execute(self, x: jt.Var) -> tuple[jt.Var, jt.Var]:
        s = self.stem(x)
        a = self.attn(self.down(s))
        if self.fault == "detach":
            a = a.detach()
        elif self.fault == "numpy":
            a = jt.array(a.numpy())
        d = self.shared(self.shared(a))
        f = self.fuse(jt.concat([self.up(d), s], 1))
        return self.cls_pred(f), self.reg_pred(f)


def loss(outputs: tuple[jt.Var, jt.Var], targets: tuple[jt.Var, jt.Var], ctx) -> jt.Var:  # noqa: ANN001
    cls, reg = outputs
    cls_t, reg_t = targets
    l_cls = nn.binary_cross_entropy_with_logits(cls, cls_t)
    l_reg = 0.5 * ((reg - reg_t) ** 2).mean()
    ctx.record("loss_items", jt.stack([l_cls.detach(), l_reg.detach()]))
    ctx.record("cls_prob_mean", jt.sigmoid(cls).mean().detach())
    return l_cls + l_reg
