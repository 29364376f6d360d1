"""The fpn (official RepGDNeck of GOLD-YOLO-N): gather-and-distribute in two rounds.

Low round: the four body maps are pooled / resized to the stride-16 size, fused, and the result split into
global information injected at p4 and p3. High round: p3, p4 and c5 are pooled to a small grid, run
through attention blocks, projected and split into global information injected at n4 and n5.
"""
from __future__ import annotations

from typing import Sequence

import aligner.env  # noqa: F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt
from jittor import nn

from .layers import SYNC_BN, ConvNorm, ConvNormAct, RepStage, RepUnit, avg_pool_to, resize_bilinear


class LocalMix(nn.Module):
    """Three neighbouring levels onto the middle one's size: pool the finer, project the middle, resize the
    coarser, then fuse (official SimFusion_3in)."""

    def __init__(self, mid_in: int, cout: int) -> None:
        self.mid_proj = ConvNormAct(mid_in, cout)
        self.fuse = ConvNormAct(3 * cout, cout)

    def execute(self, fine: jt.Var, mid: jt.Var, coarse: jt.Var) -> jt.Var:
        hw = mid.shape[2:]
        return self.fuse(jt.concat([avg_pool_to(fine, hw), self.mid_proj(mid), resize_bilinear(coarse, hw)], dim=1))


class Injector(nn.Module):
    """``local(x) * hard_sigmoid(gate(g)) + value(g)``, the global terms resized to x (official
    InjectionMultiSum_Auto_pool; its pooling branch is never taken by GOLD-YOLO-N)."""

    def __init__(self, channels: int) -> None:
        self.local = ConvNorm(channels, channels, bn=SYNC_BN)
        self.value = ConvNorm(channels, channels, bn=SYNC_BN)
        self.gate = ConvNorm(channels, channels, bn=SYNC_BN)

    def execute(self, x: jt.Var, g: jt.Var) -> jt.Var:
        hw = x.shape[2:]
        gate = resize_bilinear(nn.relu6(self.gate(g) + 3) / 6, hw)
        return self.local(x) * gate + resize_bilinear(self.value(g), hw)


class Attention(nn.Module):
    """Multi-head attention over the positions of a map, with 1x1 conv-norm projections. The official model
    does not scale the logits by key_dim ** -0.5; ``scaled`` switches that scale on."""

    def __init__(self, dim: int, key_dim: int, heads: int, value_ratio: int) -> None:
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_ratio * key_dim
        self.q = ConvNorm(dim, key_dim * heads, bn=SYNC_BN)
        self.k = ConvNorm(dim, key_dim * heads, bn=SYNC_BN)
        self.v = ConvNorm(dim, self.value_dim * heads, bn=SYNC_BN)
        self.out = ConvNorm(self.value_dim * heads, dim, bn=SYNC_BN)
        # official init: the output norm's gain starts at 0, so each attention branch adds nothing at first
        self.out.norm.weight = jt.zeros((dim,), "float32")
        self.scaled = False

    def execute(self, x: jt.Var) -> jt.Var:
        b, _, h, w = x.shape
        q = self.q(x).reshape(b, self.heads, self.key_dim, h * w).permute(0, 1, 3, 2)
        k = self.k(x).reshape(b, self.heads, self.key_dim, h * w)
        v = self.v(x).reshape(b, self.heads, self.value_dim, h * w).permute(0, 1, 3, 2)
        logits = jt.matmul(q, k)
        if self.scaled:
            logits = logits * (self.key_dim ** -0.5)
        mixed = jt.matmul(nn.softmax(logits, dim=-1), v).permute(0, 1, 3, 2).reshape(b, -1, h, w)
        return self.out(nn.relu6(mixed))


class FeedForward(nn.Module):
    """1x1 expand, depthwise 3x3 (with bias), ReLU6, 1x1 project."""

    def __init__(self, dim: int, hidden: int) -> None:
        self.expand = ConvNorm(dim, hidden, bn=SYNC_BN)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=True)
        self.project = ConvNorm(hidden, dim, bn=SYNC_BN)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.project(nn.relu6(self.depthwise(self.expand(x))))


class AttnBlock(nn.Module):
    """Residual attention, then residual feed-forward (no pre-norm, no drop path)."""

    def __init__(self, dim: int, key_dim: int, heads: int, value_ratio: int, mlp_ratio: float) -> None:
        self.attn = Attention(dim, key_dim, heads, value_ratio)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio))

    def execute(self, x: jt.Var) -> jt.Var:
        x = x + self.attn(x)
        return x + self.ffn(x)


class FPN(nn.Module):
    """``ch`` = the eleven scaled widths (body 0..4, fpn 5..10), ``n`` = RepUnits per fpn stage."""

    def __init__(self, ch: Sequence[int], n: int, fusion_in: int = 480, low_dim: int = 96,
                 low_split: tuple[int, int] = (64, 32), high_dim: int = 352, high_split: tuple[int, int] = (64, 128),
                 attn_depth: int = 2, key_dim: int = 8, heads: int = 4) -> None:
        self.low_fuse = nn.Sequential(
            ConvNormAct(fusion_in, low_dim, act="silu"),
            *[RepUnit(low_dim, low_dim) for _ in range(3)],
            ConvNormAct(low_dim, sum(low_split), act="silu"))
        self.low_split = list(low_split)
        self.c5_reduce = ConvNormAct(ch[4], ch[5])
        self.mix_p4 = LocalMix(ch[3], ch[5])
        self.inject_p4 = Injector(ch[5])
        self.stage_p4 = RepStage(ch[5], ch[5], n)
        self.p4_reduce = ConvNormAct(ch[5], ch[6])
        self.mix_p3 = LocalMix(ch[5], ch[6])
        self.inject_p3 = Injector(ch[6])
        self.stage_p3 = RepStage(ch[6], ch[6], n)
        self.high_blocks = nn.Sequential(*[AttnBlock(high_dim, key_dim, heads, 2, 1) for _ in range(attn_depth)])
        self.high_proj = nn.Conv2d(high_dim, sum(high_split), 1, bias=True)
        self.high_split = list(high_split)
        self.inject_n4 = Injector(ch[8])
        self.stage_n4 = RepStage(ch[6] + ch[7], ch[8], n)
        self.inject_n5 = Injector(ch[10])
        self.stage_n5 = RepStage(ch[5] + ch[9], ch[10], n)

    def execute(self, feats: Sequence[jt.Var]) -> list[jt.Var]:
        c2, c3, c4, c5 = feats
        hw4 = c4.shape[2:]
        low = self.low_fuse(jt.concat([avg_pool_to(c2, hw4), avg_pool_to(c3, hw4), c4, resize_bilinear(c5, hw4)],
                                      dim=1))
        low_p4, low_p3 = jt.split(low, self.low_split, dim=1)
        c5_half = self.c5_reduce(c5)
        p4 = self.stage_p4(self.inject_p4(self.mix_p4(c3, c4, c5_half), low_p4))
        p4_half = self.p4_reduce(p4)
        p3 = self.stage_p3(self.inject_p3(self.mix_p3(c2, c3, p4_half), low_p3))

        # high round: pool to ceil(size(c5) / 2)
        grid = [(s - 1) // 2 + 1 for s in c5.shape[2:]]
        high = jt.concat([avg_pool_to(f, grid) for f in (p3, p4, c5)], dim=1)
        high_n4, high_n5 = jt.split(self.high_proj(self.high_blocks(high)), self.high_split, dim=1)
        n4_in = jt.concat([avg_pool_to(p3, p4_half.shape[2:]), p4_half], dim=1)
        n4 = self.stage_n4(self.inject_n4(n4_in, high_n4))
        n5_in = jt.concat([avg_pool_to(n4, c5_half.shape[2:]), c5_half], dim=1)
        n5 = self.stage_n5(self.inject_n5(n5_in, high_n5))
        return [p3, n4, n5]
