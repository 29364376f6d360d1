"""Jittor side of the zoo: the same classes and attribute paths as ``torch_nets``, written for Jittor.

Where Jittor's own layer differs from torch's the port carries its own (BatchNorm2d's running
variance, Hardswish, a non-divisible adaptive average pool). ``fault`` plants one known porting
bug per model (see ``tests.zoo.catalogue``); ``None`` is the correct port.
"""
from __future__ import annotations

import math
from typing import Any

import aligner.env  # noqa: F401 - must precede jittor
import jittor as jt
from jittor import nn

from .data import anchor_centres


class BatchNorm2d(nn.BatchNorm2d):
    """Jittor's BatchNorm2d with torch's running_var update (unbiased batch variance, sum / (n - 1))."""

    def execute(self, x: jt.Var) -> jt.Var:
        if not self.is_train:
            return super().execute(x)
        old = self.running_var.clone()
        y = super().execute(x)
        n = x.numel() // x.shape[1]
        biased_term = self.running_var - old * (1.0 - self.momentum)  # momentum * biased variance
        self.running_var.update(self.running_var + biased_term / (n - 1))
        return y


class Hardswish(nn.Module):
    """x * relu6(x + 3) / 6 (Jittor 1.3.11 has no Hardswish)."""

    def execute(self, x: jt.Var) -> jt.Var:
        return x * jt.clamp(x + 3.0, min_v=0.0, max_v=6.0) / 6.0


class GELUTanh(nn.Module):
    """The tanh approximation of GELU (torch's ``approximate='tanh'``): a fault when torch uses the exact one."""

    def execute(self, x: jt.Var) -> jt.Var:
        return 0.5 * x * (1.0 + jt.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class AdaptiveAvgPool2d(nn.Module):
    """torch's adaptive average pool: cell i spans [floor(i*H/o), ceil((i+1)*H/o)). Jittor's own uses one
    fixed window and stride, which differs from torch when the input size is not a multiple of the output."""

    def __init__(self, size: int) -> None:
        self.size = size

    def execute(self, x: jt.Var) -> jt.Var:
        h, w, o = x.shape[2], x.shape[3], self.size
        rows = []
        for i in range(o):
            h0, h1 = (i * h) // o, -((-(i + 1) * h) // o)
            cells = [x[:, :, h0:h1, (j * w) // o:-((-(j + 1) * w) // o)].mean(dims=[2, 3]) for j in range(o)]
            rows.append(jt.stack(cells, 2))
        return jt.stack(rows, 2)


ACTS: dict[str, Any] = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": Hardswish, "gelu": nn.GELU}


class ConvBNAct(nn.Module):
    def __init__(self, ci: int, co: int, k: int = 3, s: int = 1, groups: int = 1, act: str = "silu",
                 bias: bool = False, pad: int | None = None) -> None:
        self.conv = nn.Conv2d(ci, co, k, s, k // 2 if pad is None else pad, groups=groups, bias=bias)
        self.bn = BatchNorm2d(co)
        self.act = ACTS[act]()

    def execute(self, x: jt.Var) -> jt.Var:
        return self.act(self.bn(self.conv(x)))


def _check(fault: str | None, known: tuple[str, ...], model: str) -> None:
    if fault is not None and fault not in known:
        raise ValueError(f"{model}: unknown fault {fault!r} (known: {', '.join(known)})")


class ConvBNStack(nn.Module):
    def __init__(self, bias: bool, depth: int = 5, width: int = 32, num_classes: int = 10,
                 fault: str | None = None) -> None:
        _check(fault, ("bn_eps",), "ConvBNStack")
        layers: list[nn.Module] = []
        c = 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, 1, 1, bias=bias), BatchNorm2d(width), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        if fault == "bn_eps":  # Keras / TF default instead of torch's 1e-5
            self.features[4].eps = 1e-3

    def execute(self, x: jt.Var) -> jt.Var:
        return self.fc(self.pool(self.features(x)).flatten(1))


class DepthwiseNet(nn.Module):
    def __init__(self, num_classes: int = 10, fault: str | None = None) -> None:
        _check(fault, ("dw_padding",), "DepthwiseNet")
        self.stem = ConvBNAct(3, 16, 3, 2, act="silu")
        self.dw = ConvBNAct(16, 16, 3, 1, groups=16, act="hardswish", pad=0 if fault == "dw_padding" else None)
        self.pw = ConvBNAct(16, 32, 1, 1, groups=4, act="relu")
        self.dw2 = ConvBNAct(32, 32, 5, 2, groups=32, act="silu")
        self.gconv = ConvBNAct(32, 32, 3, 1, groups=8, act="gelu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.gconv(self.dw2(self.pw(self.dw(self.stem(x)))))
        return self.fc(self.pool(y).flatten(1))


class ActPoolNet(nn.Module):
    def __init__(self, num_classes: int = 10, fault: str | None = None) -> None:
        _check(fault, ("gelu_tanh", "jittor_adaptive_pool"), "ActPoolNet")
        self.stem = ConvBNAct(3, 16, 3, 1, act="relu")
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.b1 = ConvBNAct(16, 16, 3, 1, act="silu")
        self.b2 = ConvBNAct(16, 24, 3, 1, act="hardswish")
        self.pool2 = nn.MaxPool2d(2, 2)
        self.b3 = ConvBNAct(24, 32, 3, 1, act="gelu")
        self.pool = nn.AdaptiveAvgPool2d(5) if fault == "jittor_adaptive_pool" else AdaptiveAvgPool2d(5)
        self.fc = nn.Linear(32 * 25, num_classes)
        if fault == "gelu_tanh":
            self.b3.act = GELUTanh()

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.b3(self.pool2(self.b2(self.b1(self.pool1(self.stem(x))))))
        return self.fc(self.pool(y).flatten(1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, softmax_dim: int = -1) -> None:
        self.heads, self.softmax_dim = heads, softmax_dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def execute(self, x: jt.Var) -> jt.Var:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = nn.softmax(jt.matmul(q, k.transpose(0, 1, 3, 2)) / math.sqrt(c // self.heads), dim=self.softmax_dim)
        return self.proj(jt.matmul(a, v).transpose(0, 2, 1, 3).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, softmax_dim: int = -1) -> None:
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, softmax_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def execute(self, x: jt.Var) -> jt.Var:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, num_classes: int = 10, fault: str | None = None) -> None:
        _check(fault, ("softmax_dim",), "AttentionNet")
        self.embed = nn.Conv2d(3, dim, 8, 8)
        # the fault normalises over the queries (dim -2) instead of the keys
        self.blocks = nn.Sequential(Block(dim, heads, -2 if fault == "softmax_dim" else -1), Block(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def execute(self, x: jt.Var) -> jt.Var:
        t = self.blocks(self.embed(x).flatten(2).transpose(0, 2, 1))
        return self.head(self.norm(t).mean(1))


class Fuse(nn.Module):
    def __init__(self, ci: int, co: int, mode: str, align_corners: bool = False, detach: bool = False) -> None:
        self.up = nn.Upsample(scale_factor=2, mode=mode, align_corners=align_corners)
        self.conv = ConvBNAct(ci, co, 3, 1)
        self.detach = detach

    def execute(self, coarse: jt.Var, lateral: jt.Var) -> jt.Var:
        if self.detach:  # the fault: the lateral branch passes no gradient back
            lateral = lateral.detach()
        return self.conv(jt.concat([self.up(coarse), lateral], 1))


class FpnNet(nn.Module):
    def __init__(self, fault: str | None = None) -> None:
        _check(fault, ("align_corners", "detach_lateral"), "FpnNet")
        self.c1 = ConvBNAct(3, 16, 3, 2)
        self.c2 = ConvBNAct(16, 32, 3, 2)
        self.c3 = ConvBNAct(32, 64, 3, 2)
        self.lat = nn.Conv2d(64, 32, 1)
        self.fuse2 = Fuse(64, 32, "nearest")
        self.fuse1 = Fuse(48, 16, "bilinear", align_corners=fault == "align_corners",
                          detach=fault == "detach_lateral")
        self.head = nn.Conv2d(16, 4, 1)

    def execute(self, x: jt.Var) -> jt.Var:
        f1 = self.c1(x)
        f2 = self.c2(f1)
        p2 = self.fuse2(self.lat(self.c3(f2)), f2)
        return self.head(self.fuse1(p2, f1))


class ChannelLayerNorm(nn.Module):
    def __init__(self, c: int) -> None:
        self.ln = nn.LayerNorm(c)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvGNAct(nn.Module):
    def __init__(self, ci: int, co: int, k: int, s: int, groups: int, act: str) -> None:
        self.conv = nn.Conv2d(ci, co, k, s, k // 2)
        self.gn = nn.GroupNorm(groups, co)
        self.act = ACTS[act]()

    def execute(self, x: jt.Var) -> jt.Var:
        return self.act(self.gn(self.conv(x)))


class NormNet(nn.Module):
    def __init__(self, num_classes: int = 10, fault: str | None = None) -> None:
        _check(fault, ("gn_groups",), "NormNet")
        self.stem = ConvGNAct(3, 16, 3, 2, 8 if fault == "gn_groups" else 4, "silu")
        self.b1 = ConvGNAct(16, 32, 3, 2, 8, "silu")
        self.ln = ChannelLayerNorm(32)
        self.b2 = ConvGNAct(32, 32, 3, 1, 1, "gelu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.fc(self.pool(self.b2(self.ln(self.b1(self.stem(x))))).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, ci: int, co: int, s: int = 1, residual: bool = True) -> None:
        self.conv1 = nn.Conv2d(ci, co, 3, s, 1, bias=False)
        self.bn1 = BatchNorm2d(co)
        self.conv2 = nn.Conv2d(co, co, 3, 1, 1, bias=False)
        self.bn2 = BatchNorm2d(co)
        self.relu = nn.ReLU()
        self.down = (nn.Sequential(nn.Conv2d(ci, co, 1, s, bias=False), BatchNorm2d(co))
                     if s != 1 or ci != co else None)
        self.residual = residual

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if not self.residual:  # the fault: the shortcut is dropped
            return self.relu(y)
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, num_classes: int = 10, fault: str | None = None) -> None:
        _check(fault, ("no_residual",), "ResNet")
        self.stem = ConvBNAct(3, 16, 3, 1, act="relu")
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16, residual=fault != "no_residual"))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))


class DetNet(nn.Module):
    def __init__(self, num_classes: int = 4, fault: str | None = None) -> None:
        _check(fault, (), "DetNet")
        self.backbone = nn.Sequential(ConvBNAct(3, 16, 3, 2), ConvBNAct(16, 32, 3, 2), ConvBNAct(32, 32, 3, 2))
        self.cls_pred = nn.Conv2d(32, num_classes, 1)
        self.reg_pred = nn.Conv2d(32, 4, 1)

    def execute(self, x: jt.Var) -> tuple[jt.Var, jt.Var]:
        f = self.backbone(x)
        return self.cls_pred(f), self.reg_pred(f)


def det_loss(outputs: tuple[jt.Var, jt.Var], targets: tuple[jt.Var, jt.Var], ctx: Any, topk: int = 10) -> jt.Var:
    """The Jittor port of ``torch_nets.det_loss`` (top-k assignment + BCE / L1)."""
    cls, reg = outputs
    boxes, onehot = targets
    b, c, h, w = cls.shape
    cls = cls.flatten(2).transpose(0, 2, 1)                               # (B, A, C)
    reg = reg.flatten(2).transpose(0, 2, 1)                               # (B, A, 4)
    centres = ctx.tensor(anchor_centres(h, w))                            # (A, 2)
    dist = (boxes[:, :, :2].unsqueeze(2) - centres.reshape(1, 1, h * w, 2)).abs().sum(-1)  # (B, G, A)
    score = jt.matmul(onehot, jt.sigmoid(cls).transpose(0, 2, 1))        # (B, G, A)
    metric = (score * jt.exp(-4.0 * dist)).detach()
    kth = jt.topk(metric, min(topk, h * w), dim=-1)[0][:, :, -1:]
    mask = (metric >= kth).cast(cls.dtype)                                # (B, G, A)
    mask_t = mask.transpose(0, 2, 1)
    cls_t = jt.matmul(mask_t, onehot).minimum(1.0)                        # (B, A, C)
    count = mask.sum(1)                                                   # (B, A)
    reg_t = jt.matmul(mask_t, boxes) / count.maximum(1.0).unsqueeze(2)
    fg = (count > 0).cast(cls.dtype)
    l_cls = nn.binary_cross_entropy_with_logits(cls, cls_t)
    l_box = ((reg - reg_t).abs().sum(-1) * fg).sum() / fg.sum().maximum(1.0)
    ctx.record("fg_mask", fg.detach())
    ctx.record("loss_items", jt.stack([l_cls.detach(), l_box.detach()]))
    return l_cls + l_box
