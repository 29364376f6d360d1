"""Port "C" of GOLD-YOLO-N: an independently written Jittor port in its own style.

Children live in string-keyed registries (``backbone.stages["p3"]``, ``gd.inject["n4"]``), RepVGG blocks are
``RepUnit``s with ``k3`` / ``k1`` / ``skip`` branches and functional activations, and the model returns the list
``[stem_feats, scores, distri]``. Configuration: GOLD-YOLO-N official (no DFL, reg_max 0, SIoU, drop path 0).

``build(num_classes, deviations)`` builds it; ``deviations`` names the planted porting mistakes
(:data:`DEVIATIONS`), none by default (a correct port).
"""
from __future__ import annotations

from typing import Callable, Sequence

import aligner.env  # noqa: F401  (Jittor's process environment, when this port is imported on its own)
import jittor as jt
from jittor import nn, pool

# planted porting mistakes, by name -> where they sit
DEVIATIONS = {
    "backbone_act": "SiLU instead of ReLU in the stride-2 RepVGG unit opening backbone stage p3",
    "attn_softmax_dim": "softmax over the query axis in the first transformer layer's attention",
    "drop_path": "the port's neck config keeps the training drop-path rate 0.1 (layers get DropPath)",
    "head_reg_scale": "reg predictions multiplied by the level stride (distances in pixels)",
    "siou_angle": "SIoU angle cost with pi/4 instead of pi/2",
    "assigner_alpha_beta": "task-aligned assigner with alpha and beta swapped",
}

Act = Callable[[jt.Var], jt.Var]


def check_deviations(deviations: Sequence[str]) -> frozenset[str]:
    unknown = sorted(set(deviations) - set(DEVIATIONS))
    if unknown:
        raise ValueError(f"unknown deviations {unknown}; known: {sorted(DEVIATIONS)}")
    return frozenset(deviations)


class Registry(nn.Module):
    """Child modules under string keys (Jittor 1.3 has no ModuleDict); ``reg["p3"]`` reads a child."""

    def __init__(self, **children: nn.Module) -> None:
        for key, child in children.items():
            setattr(self, key, child)

    def __getitem__(self, key: str) -> nn.Module:
        return getattr(self, key)

    def __setitem__(self, key: str, child: nn.Module) -> None:
        setattr(self, key, child)


class Norm(nn.Module):
    """Batch norm with PyTorch's semantics: two-pass batch variance and an unbiased running variance (Jittor's
    BatchNorm updates running_var with the biased one)."""

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.03, init_weight: float = 1.0) -> None:
        self.eps = eps
        self.momentum = momentum
        self.weight = jt.full((channels,), init_weight, "float32")
        self.bias = jt.zeros((channels,), "float32")
        self.running_mean = jt.zeros((channels,), "float32").stop_grad()
        self.running_var = jt.ones((channels,), "float32").stop_grad()

    def execute(self, x: jt.Var) -> jt.Var:
        def per_channel(v: jt.Var) -> jt.Var:
            return v.reshape(1, -1, 1, 1)

        if not self.training:
            scale = self.weight / jt.sqrt(self.running_var + self.eps)
            return (x - per_channel(self.running_mean)) * per_channel(scale) + per_channel(self.bias)
        n = x.numel() // x.shape[1]
        # sums accumulated in float64, as torch's CPU kernel does (float32 sums drift over deep stacks)
        mean = (x.float64().sum(dims=[0, 2, 3]) / n).cast(x.dtype)
        centred = x - per_channel(mean)
        var = ((centred * centred).float64().sum(dims=[0, 2, 3]) / n).cast(x.dtype)
        m = self.momentum
        self.running_mean.update(self.running_mean * (1 - m) + mean.detach() * m)
        self.running_var.update(self.running_var * (1 - m) + var.detach() * (n / (n - 1) * m))
        return centred / per_channel(jt.sqrt(var + self.eps)) * per_channel(self.weight) + per_channel(self.bias)


class ConvNorm(nn.Module):
    """Conv (no bias unless asked) -> Norm -> optional activation; 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, act: Act | None = None, groups: int = 1,
                 eps: float = 1e-3, momentum: float = 0.03, init_weight: float = 1.0) -> None:
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.norm = Norm(cout, eps, momentum, init_weight)
        self.act = act

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.norm(self.conv(x))
        return y if self.act is None else self.act(y)


def sync_conv_norm(cin: int, cout: int, init_weight: float = 1.0) -> ConvNorm:
    """1x1 ConvNorm of the transformer / injection family (SyncBN: eps 1e-5, momentum 0.1)."""
    return ConvNorm(cin, cout, 1, eps=1e-5, momentum=0.1, init_weight=init_weight)


class RepUnit(nn.Module):
    """RepVGG unit in train form: act(3x3 branch + 1x1 branch + identity norm when shapes allow)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: Act = nn.relu) -> None:
        self.k3 = ConvNorm(cin, cout, 3, stride)
        self.k1 = ConvNorm(cin, cout, 1, stride)
        self.skip = Norm(cin) if cin == cout and stride == 1 else None
        self.act = act

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.k3(x) + self.k1(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)


class RepStack(nn.Module):
    """`depth` RepUnits in a row (the first one changes the width)."""

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        self.units = nn.ModuleList([RepUnit(cin if i == 0 else cout, cout) for i in range(depth)])

    def execute(self, x: jt.Var) -> jt.Var:
        for unit in self.units:
            x = unit(x)
        return x


def max_pool_same(x: jt.Var, k: int) -> jt.Var:
    """Stride-1 'same' max pool; padded with -inf first because Jittor's pool rejects maps not larger than k."""
    p = k // 2
    return pool.max_pool2d(nn.pad(x, (p, p, p, p), mode="constant", value=float("-inf")), k, stride=1, padding=0)


class CSPPool(nn.Module):
    """CSP spatial pyramid pooling (ReLU convs, three chained 5x5 max pools) closing the backbone."""

    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        mid = cout // 2
        self.k = k
        self.entry = ConvNorm(cin, mid, 1, act=nn.relu)
        self.bypass = ConvNorm(cin, mid, 1, act=nn.relu)
        self.pre = nn.ModuleList([ConvNorm(mid, mid, 3, act=nn.relu), ConvNorm(mid, mid, 1, act=nn.relu)])
        self.post = nn.ModuleList([ConvNorm(4 * mid, mid, 1, act=nn.relu), ConvNorm(mid, mid, 3, act=nn.relu)])
        self.out = ConvNorm(2 * mid, cout, 1, act=nn.relu)

    def execute(self, x: jt.Var) -> jt.Var:
        a = self.pre[1](self.pre[0](self.entry(x)))
        pooled = [a]
        for _ in range(3):
            pooled.append(max_pool_same(pooled[-1], self.k))
        b = self.post[1](self.post[0](jt.concat(pooled, 1)))
        return self.out(jt.concat([self.bypass(x), b], 1))


class Backbone(nn.Module):
    """EfficientRep of GOLD-YOLO-N: stem, four stride-2 stages (p2..p5), CSP pooling; returns c2..c5."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], deviations: frozenset[str]) -> None:
        self.stem = RepUnit(3, widths[0], 2)
        self.stages = Registry()
        for i, key in enumerate(("p2", "p3", "p4", "p5")):
            cin, cout = widths[i], widths[i + 1]
            down_act = nn.silu if key == "p3" and "backbone_act" in deviations else nn.relu
            self.stages[key] = nn.ModuleList([RepUnit(cin, cout, 2, act=down_act)]
                                             + [RepUnit(cout, cout) for _ in range(depths[i])])
        self.pool = CSPPool(widths[4], widths[4])

    def execute(self, x: jt.Var) -> list[jt.Var]:
        x = self.stem(x)
        outs = []
        for key in ("p2", "p3", "p4", "p5"):
            for unit in self.stages[key]:
                x = unit(x)
            if key == "p5":
                x = self.pool(x)
            outs.append(x)
        return outs


class GoldYoloN(nn.Module):
    """Backbone -> gather-and-distribute neck -> decoupled head; output ``[stem_feats, scores, distri]``."""

    def __init__(self, num_classes: int = 20, deviations: Sequence[str] = ()) -> None:
        try:
            from . import detect, gd  # imported as the package tests.ports.gd_port
        except ImportError:  # loaded as a file (`--port .../nets.py:build`): its folder is on sys.path
            import detect  # type: ignore[no-redef]
            import gd  # type: ignore[no-redef]
        dev = check_deviations(deviations)
        self.backbone = Backbone(widths=(16, 32, 64, 128, 256), depths=(2, 4, 6, 2), deviations=dev)
        self.gd = gd.GatherDistribute(dev)
        self.head = detect.Head(num_classes, widths=(32, 64, 128), deviations=dev)

    def execute(self, img: jt.Var) -> list:
        stems, scores, distri = self.head(self.gd(self.backbone(img)))
        return [stems, scores, distri]


def build(num_classes: int = 20, deviations: Sequence[str] = ()) -> GoldYoloN:
    """The port's factory (``--port tests/ports/gd_port/nets.py:build``)."""
    return GoldYoloN(num_classes, deviations)
