"""Gather-and-distribute neck of port "C": low/high fusion, the global transformer and the injections.

Registries by level (``laf["p4"]``, ``inject["n5"]``, ``stages["p3"]``); the attention is this port's own
multi-head self-attention (``query`` / ``key`` / ``value`` / ``out`` projections, heads folded into the batch).
"""
from __future__ import annotations

from typing import Sequence

import jittor as jt
from jittor import nn

try:
    from .nets import ConvNorm, Registry, RepStack, RepUnit, sync_conv_norm
except ImportError:  # loaded next to nets.py as plain modules
    from nets import ConvNorm, Registry, RepStack, RepUnit, sync_conv_norm  # type: ignore[no-redef]

# GOLD-YOLO-N neck widths (official config, width multiple 0.25; extra_cfg widths are absolute)
LOW_IN, LOW_DIM, LOW_SPLIT = 480, 96, (64, 32)
HIGH_DIM, HIGH_SPLIT = 352, (64, 128)
KEY_DIM, HEADS, ATTN_RATIO, MLP_RATIO, LAYERS = 8, 4, 2, 1, 2
TRAIN_DROP_PATH = 0.1  # the official config's drop_path_rate; the alignment runs at 0


def avg_pool_to(x: jt.Var, size: Sequence[int]) -> jt.Var:
    """torch's adaptive average pool: windows [floor(i*H/o), ceil((i+1)*H/o))."""
    oh, ow = int(size[0]), int(size[1])
    b, c, h, w = x.shape
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        return x.reshape(b, c, oh, h // oh, ow, w // ow).mean(dims=[3, 5])
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = [x[:, :, r0:r1, (j * w) // ow:-((-(j + 1) * w) // ow)].mean(dims=[2, 3]) for j in range(ow)]
        rows.append(jt.stack(cols, dim=2))
    return jt.stack(rows, dim=2)


def resize_to(x: jt.Var, size: Sequence[int]) -> jt.Var:
    if tuple(x.shape[2:]) == (int(size[0]), int(size[1])):
        return x
    return nn.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def hard_sigmoid(x: jt.Var) -> jt.Var:
    return nn.relu6(x + 3) / 6


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a map; heads are folded into the batch axis.

    No 1/sqrt(d) scaling, as in GOLD-YOLO. ``softmax_axis`` is the axis of the [B*heads, queries, keys] logits
    normalised (2 = over keys).
    """

    def __init__(self, dim: int, key_dim: int, heads: int, ratio: float, softmax_axis: int = 2) -> None:
        self.heads, self.key_dim, self.value_dim = heads, key_dim, int(ratio * key_dim)
        self.softmax_axis = softmax_axis
        self.query = sync_conv_norm(dim, key_dim * heads)
        self.key = sync_conv_norm(dim, key_dim * heads)
        self.value = sync_conv_norm(dim, self.value_dim * heads)
        # zero-initialised output norm: the branch adds nothing at init (GOLD-YOLO's choice)
        self.out = sync_conv_norm(self.value_dim * heads, dim, init_weight=0.0)

    def execute(self, x: jt.Var) -> jt.Var:
        b, _, h, w = x.shape
        bh, n = b * self.heads, h * w
        q = self.query(x).reshape(bh, self.key_dim, n)
        k = self.key(x).reshape(bh, self.key_dim, n)
        v = self.value(x).reshape(bh, self.value_dim, n)
        logits = jt.matmul(q.transpose(0, 2, 1), k)  # [bh, queries, keys]
        weights = nn.softmax(logits, dim=self.softmax_axis)
        mixed = jt.matmul(v, weights.transpose(0, 2, 1))  # [bh, value_dim, queries]
        return self.out(nn.relu6(mixed.reshape(b, self.heads * self.value_dim, h, w)))


class FeedForward(nn.Module):
    """1x1 expand -> depthwise 3x3 (bias) -> ReLU6 -> 1x1 shrink."""

    def __init__(self, dim: int, hidden: int) -> None:
        self.expand = sync_conv_norm(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=True)
        self.shrink = sync_conv_norm(hidden, dim)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.shrink(nn.relu6(self.dw(self.expand(x))))


class DropPath(nn.Module):
    """Stochastic depth per sample in train mode."""

    def __init__(self, drop_prob: float) -> None:
        self.drop_prob = drop_prob

    def execute(self, x: jt.Var) -> jt.Var:
        if not self.training or self.drop_prob == 0:
            return x
        keep = 1 - self.drop_prob
        mask = jt.floor(keep + jt.rand((x.shape[0], 1, 1, 1))).cast(x.dtype).stop_grad()
        return x / keep * mask


class MixerLayer(nn.Module):
    """Residual attention then residual feed-forward, each through drop path (absent at rate 0)."""

    def __init__(self, dim: int, drop_path: float, softmax_axis: int) -> None:
        self.attn = SelfAttention(dim, KEY_DIM, HEADS, ATTN_RATIO, softmax_axis)
        self.ffn = FeedForward(dim, int(dim * MLP_RATIO))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def execute(self, x: jt.Var) -> jt.Var:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.ffn(x))


class LocalFuse(nn.Module):
    """Three adjacent levels onto the middle one: pool the finer, project the middle, upsample the coarser."""

    def __init__(self, mid_in: int, cout: int) -> None:
        self.proj = ConvNorm(mid_in, cout, 1, act=nn.relu)
        self.fuse = ConvNorm(3 * cout, cout, 1, act=nn.relu)

    def execute(self, fine: jt.Var, mid: jt.Var, coarse: jt.Var) -> jt.Var:
        size = mid.shape[2:]
        return self.fuse(jt.concat([avg_pool_to(fine, size), self.proj(mid), resize_to(coarse, size)], 1))


class Inject(nn.Module):
    """local(x) * gate(g) + glob(g), the global terms brought to the local size."""

    def __init__(self, dim: int) -> None:
        self.local = sync_conv_norm(dim, dim)
        self.glob = sync_conv_norm(dim, dim)
        self.gate = sync_conv_norm(dim, dim)

    def execute(self, x: jt.Var, g: jt.Var) -> jt.Var:
        size = x.shape[2:]
        local, gate, glob = self.local(x), self.gate(g), self.glob(g)
        if size[0] < g.shape[2]:  # GOLD-YOLO pools without the hard sigmoid here (not reached by N)
            return local * avg_pool_to(gate, size) + avg_pool_to(glob, size)
        return local * resize_to(hard_sigmoid(gate), size) + resize_to(glob, size)


class GatherDistribute(nn.Module):
    """RepGDNeck of GOLD-YOLO-N: (c2, c3, c4, c5) -> [p3, n4, n5]."""

    def __init__(self, deviations: frozenset[str]) -> None:
        self.low = Registry(
            fuse_in=ConvNorm(LOW_IN, LOW_DIM, 1, act=nn.silu),
            blocks=nn.ModuleList([RepUnit(LOW_DIM, LOW_DIM) for _ in range(3)]),
            fuse_out=ConvNorm(LOW_DIM, sum(LOW_SPLIT), 1, act=nn.silu))
        self.reduce = Registry(c5=ConvNorm(256, 64, 1, act=nn.relu), p4=ConvNorm(64, 32, 1, act=nn.relu))
        self.laf = Registry(p4=LocalFuse(128, 64), p3=LocalFuse(64, 32))
        self.inject = Registry(p4=Inject(64), p3=Inject(32), n4=Inject(64), n5=Inject(128))
        self.stages = Registry(p4=RepStack(64, 64, 4), p3=RepStack(32, 32, 4), n4=RepStack(64, 64, 4),
                               n5=RepStack(128, 128, 4))
        rate = TRAIN_DROP_PATH if "drop_path" in deviations else 0.0
        rates = [rate * i / (LAYERS - 1) for i in range(LAYERS)]
        first_axis = 1 if "attn_softmax_dim" in deviations else 2
        self.high = nn.ModuleList([MixerLayer(HIGH_DIM, rates[i], first_axis if i == 0 else 2)
                                   for i in range(LAYERS)])
        self.to_global = nn.Conv2d(HIGH_DIM, sum(HIGH_SPLIT), 1)

    def execute(self, feats: Sequence[jt.Var]) -> list[jt.Var]:
        c2, c3, c4, c5 = feats
        size4 = c4.shape[2:]
        low = jt.concat([avg_pool_to(c2, size4), avg_pool_to(c3, size4), c4, resize_to(c5, size4)], 1)
        low = self.low["fuse_in"](low)
        for block in self.low["blocks"]:
            low = block(low)
        low = self.low["fuse_out"](low)
        g_p4, g_p3 = low[:, :LOW_SPLIT[0]], low[:, LOW_SPLIT[0]:]

        c5_half = self.reduce["c5"](c5)
        p4 = self.stages["p4"](self.inject["p4"](self.laf["p4"](c3, c4, c5_half), g_p4))
        p4_half = self.reduce["p4"](p4)
        p3 = self.stages["p3"](self.inject["p3"](self.laf["p3"](c2, c3, p4_half), g_p3))

        top = ((c5.shape[2] - 1) // 2 + 1, (c5.shape[3] - 1) // 2 + 1)
        high = jt.concat([avg_pool_to(f, top) for f in (p3, p4, c5)], 1)
        for layer in self.high:
            high = layer(high)
        high = self.to_global(high)
        g_n4, g_n5 = high[:, :HIGH_SPLIT[0]], high[:, HIGH_SPLIT[0]:]

        n4 = self.stages["n4"](self.inject["n4"](
            jt.concat([avg_pool_to(p3, p4_half.shape[2:]), p4_half], 1), g_n4))
        n5 = self.stages["n5"](self.inject["n5"](
            jt.concat([avg_pool_to(n4, c5_half.shape[2:]), c5_half], 1), g_n5))
        return [p3, n4, n5]
