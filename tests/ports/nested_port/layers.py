"""Building blocks of the nested port: its own batch norm, conv-norm-act cells, re-parameterisable units.

Written the way a user ports from the paper and the official code, with its own names and one more wrapper
level than the reference: a conv cell is ``ConvNormAct.block.{conv,norm}`` (reference: ``Conv.{conv,bn}``),
a RepVGG block is ``RepUnit.{dense,point,skip}`` (reference: ``rbr_dense``, ``rbr_1x1``, ``rbr_identity``) and a
stage keeps all its units in one ``units`` list (reference: ``conv1`` plus a ``block`` list).
"""
from __future__ import annotations

import math
from typing import Sequence

import aligner.env  # noqa: F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt
from jittor import nn, pool

# The two batch-norm families of the official model: yolov6's `initialize_weights` sets eps 1e-3 / momentum
# 0.03 on exact-type BatchNorm2d; the mmcv SyncBN layers (injection convs, transformer) keep 1e-5 / 0.1.
PLAIN_BN = (1e-3, 0.03)
SYNC_BN = (1e-5, 0.1)


class Norm2d(nn.Module):
    """Train-mode batch norm over (N, H, W) with torch's semantics, computed here rather than by Jittor's layer.

    Batch statistics take two passes (mean, then the mean squared deviation), accumulated in float64 so a
    float32 map with a large mean keeps its precision. Running statistics are stop-grad Vars updated as
    ``(1 - momentum) * running + momentum * batch`` with the unbiased batch variance.
    """

    def __init__(self, channels: int, eps: float, momentum: float) -> None:
        self.channels = channels
        self.eps = eps
        self.momentum = momentum
        self.weight = jt.ones((channels,), "float32")
        self.bias = jt.zeros((channels,), "float32")
        self.running_mean = jt.zeros((channels,), "float32").stop_grad()
        self.running_var = jt.ones((channels,), "float32").stop_grad()

    def execute(self, x: jt.Var) -> jt.Var:
        per_channel = (1, self.channels, 1, 1)
        if not self.training:
            scale = self.weight / jt.sqrt(self.running_var + self.eps)
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(per_channel) + shift.reshape(per_channel)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean64 = x.float64().sum(dims=[0, 2, 3]) / count
        deviation = x - mean64.cast(x.dtype).reshape(per_channel)
        sq_sum64 = (deviation * deviation).float64().sum(dims=[0, 2, 3])
        eps64 = jt.array(self.eps, "float64").stop_grad()
        inv_std = (1.0 / jt.sqrt(sq_sum64 / count + eps64)).cast(x.dtype)
        self._track(mean64.detach(), sq_sum64.detach() / (count - 1))
        return deviation * (inv_std * self.weight).reshape(per_channel) + self.bias.reshape(per_channel)

    def _track(self, batch_mean64: jt.Var, unbiased_var64: jt.Var) -> None:
        m = jt.array(self.momentum, "float64").stop_grad()
        for stat, batch in ((self.running_mean, batch_mean64), (self.running_var, unbiased_var64)):
            stat.update((stat.float64() * (1 - m) + batch * m).cast(stat.dtype))


class ConvNorm(nn.Module):
    """Conv2d followed by a Norm2d, nothing else."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, bn: tuple[float, float] = PLAIN_BN,
                 bias: bool = False, groups: int = 1) -> None:
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, groups=groups, bias=bias)
        self.norm = Norm2d(cout, *bn)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.norm(self.conv(x))


_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU, "relu6": nn.ReLU6}


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))`` with the conv and norm one level down, in ``block``. The block holds the weights
    only: it is not called as a module, so the conv and the norm are the calls the hooks see, as in the
    reference's flat cell."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, act: str = "relu",
                 bn: tuple[float, float] = PLAIN_BN, bias: bool = False) -> None:
        self.block = ConvNorm(cin, cout, k, s, bn=bn, bias=bias)
        self.act = _ACTS[act]()

    def execute(self, x: jt.Var) -> jt.Var:
        return self.act(self.block.norm(self.block.conv(x)))


class RepUnit(nn.Module):
    """RepVGG unit in training form: ``relu(dense3x3(x) + point1x1(x) + skip(x))``, skip a bare norm when the
    shape allows. ``act`` is the activation applied to the sum."""

    def __init__(self, cin: int, cout: int, s: int = 1, act: str = "relu") -> None:
        self.dense = ConvNorm(cin, cout, 3, s)
        # the 1x1 branch has no padding, so its output lines up with the 3x3 one
        self.point = ConvNorm(cin, cout, 1, s)
        self.skip = Norm2d(cin, *PLAIN_BN) if cin == cout and s == 1 else None
        self.act = act

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.dense(x) + self.point(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return nn.silu(y) if self.act == "silu" else nn.relu(y)


class RepStage(nn.Module):
    """``n`` RepUnits in a row, the first one changing the width (the list is iterated, not called)."""

    def __init__(self, cin: int, cout: int, n: int, acts: Sequence[str] | None = None) -> None:
        acts = list(acts) if acts is not None else ["relu"] * n
        self.units = nn.Sequential(*[RepUnit(cin if i == 0 else cout, cout, act=acts[i]) for i in range(n)])

    def execute(self, x: jt.Var) -> jt.Var:
        for unit in self.units:
            x = unit(x)
        return x


def max_pool_same(x: jt.Var, k: int) -> jt.Var:
    """Stride-1 max pool keeping the size. Padded with -inf by hand: Jittor's pool rejects maps that are not
    larger than the kernel (c5 is 4x4 at a 128 px input), torch's pads and works."""
    p = k // 2
    return pool.max_pool2d(nn.pad(x, (p, p, p, p), mode="constant", value=-math.inf), k, stride=1, padding=0)


class CSPPoolBlock(nn.Module):
    """The CSP spatial-pyramid pool closing the body (official SimCSPSPPF), ReLU cells throughout."""

    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        mid = cout // 2
        self.left_in = ConvNormAct(cin, mid)
        self.right_in = ConvNormAct(cin, mid)
        self.left_3x3 = ConvNormAct(mid, mid, 3)
        self.left_1x1 = ConvNormAct(mid, mid)
        self.pool_fuse = ConvNormAct(4 * mid, mid)
        self.pool_3x3 = ConvNormAct(mid, mid, 3)
        self.merge = ConvNormAct(2 * mid, cout)
        self.k = k

    def execute(self, x: jt.Var) -> jt.Var:
        a = self.left_1x1(self.left_3x3(self.left_in(x)))
        p1 = max_pool_same(a, self.k)
        p2 = max_pool_same(p1, self.k)
        p3 = max_pool_same(p2, self.k)
        pooled = self.pool_3x3(self.pool_fuse(jt.concat([a, p1, p2, p3], dim=1)))
        return self.merge(jt.concat([self.right_in(x), pooled], dim=1))


def _windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    return [((i * size_in) // size_out, -(-(i + 1) * size_in // size_out)) for i in range(size_out)]


def avg_pool_to(x: jt.Var, out_hw: Sequence[int]) -> jt.Var:
    """Adaptive average pooling with torch's windows [floor(i*H/o), ceil((i+1)*H/o)). Jittor's
    AdaptiveAvgPool2d uses one fixed kernel, which differs when H is not a multiple of o."""
    oh, ow = int(out_hw[0]), int(out_hw[1])
    n, c, h, w = x.shape
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        kh, kw = h // oh, w // ow
        return x.reshape(n, c, oh, kh, ow, kw).sum(dims=[3, 5]) / kh / kw
    rows = []
    for r0, r1 in _windows(h, oh):
        cells = [x[:, :, r0:r1, c0:c1].sum(dims=[2, 3]) / (r1 - r0) / (c1 - c0) for c0, c1 in _windows(w, ow)]
        rows.append(jt.stack(cells, dim=-1))
    return jt.stack(rows, dim=-2)


def resize_bilinear(x: jt.Var, out_hw: Sequence[int]) -> jt.Var:
    """torch's ``F.interpolate(x, size, mode='bilinear', align_corners=False)``; Jittor's default mode is
    bilinear too, but naming both settings keeps the port independent of that default."""
    if tuple(x.shape[2:]) == (int(out_hw[0]), int(out_hw[1])):
        return x
    return nn.interpolate(x, size=(int(out_hw[0]), int(out_hw[1])), mode="bilinear", align_corners=False)
