"""PyTorch side of the zoo: small models, each covering a few layer types a port has to get right.

Attribute names are the API: ``jittor_nets`` defines the same classes with the same attribute paths,
so the aligner matches every module by name.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import anchor_centres

ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "gelu": nn.GELU}


class ConvBNAct(nn.Module):
    def __init__(self, ci: int, co: int, k: int = 3, s: int = 1, groups: int = 1, act: str = "silu",
                 bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ci, co, k, s, k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(co)
        self.act = ACTS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBNStack(nn.Module):
    """depth x [Conv3x3 (bias or not) + BatchNorm + ReLU] + global pool + Linear."""

    def __init__(self, bias: bool, depth: int = 5, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, 1, 1, bias=bias), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class DepthwiseNet(nn.Module):
    """Depthwise and grouped convolutions, each with BN and a different activation."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, 2, act="silu")
        self.dw = ConvBNAct(16, 16, 3, 1, groups=16, act="hardswish")
        self.pw = ConvBNAct(16, 32, 1, 1, groups=4, act="relu")
        self.dw2 = ConvBNAct(32, 32, 5, 2, groups=32, act="silu")
        self.gconv = ConvBNAct(32, 32, 3, 1, groups=8, act="gelu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        y = self.gconv(self.dw2(self.pw(self.dw(self.stem(x)))))
        return self.fc(self.pool(y).flatten(1))


class ActPoolNet(nn.Module):
    """ReLU / SiLU / Hardswish / GELU, max-pooling and a non-global adaptive average pool."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, 1, act="relu")
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.b1 = ConvBNAct(16, 16, 3, 1, act="silu")
        self.b2 = ConvBNAct(16, 24, 3, 1, act="hardswish")
        self.pool2 = nn.MaxPool2d(2, 2)
        self.b3 = ConvBNAct(24, 32, 3, 1, act="gelu")
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.fc = nn.Linear(32 * 25, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        y = self.b3(self.pool2(self.b2(self.b1(self.pool1(self.stem(x))))))
        return self.fc(self.pool(y).flatten(1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads), dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionNet(nn.Module):
    """Patch embedding (stride 8), two transformer blocks with softmax attention, token mean, Linear."""

    def __init__(self, dim: int = 32, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.Sequential(Block(dim, heads), Block(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = self.blocks(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(t).mean(1))


class Fuse(nn.Module):
    """Upsample the coarse map, concatenate the lateral one, convolve."""

    def __init__(self, ci: int, co: int, mode: str) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        self.conv = ConvBNAct(ci, co, 3, 1)

    def forward(self, coarse: Tensor, lateral: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(coarse), lateral], 1))


class FpnNet(nn.Module):
    """Three strided stages, a top-down path with nearest and bilinear upsampling + concat, a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = ConvBNAct(3, 16, 3, 2)
        self.c2 = ConvBNAct(16, 32, 3, 2)
        self.c3 = ConvBNAct(32, 64, 3, 2)
        self.lat = nn.Conv2d(64, 32, 1)
        self.fuse2 = Fuse(64, 32, "nearest")
        self.fuse1 = Fuse(48, 16, "bilinear")
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.c1(x)
        f2 = self.c2(f1)
        p2 = self.fuse2(self.lat(self.c3(f2)), f2)
        return self.head(self.fuse1(p2, f1))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvGNAct(nn.Module):
    def __init__(self, ci: int, co: int, k: int, s: int, groups: int, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ci, co, k, s, k // 2)
        self.gn = nn.GroupNorm(groups, co)
        self.act = ACTS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.gn(self.conv(x)))


class NormNet(nn.Module):
    """GroupNorm (4, 8 and 1 groups) and a channel LayerNorm instead of BatchNorm."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvGNAct(3, 16, 3, 2, 4, "silu")
        self.b1 = ConvGNAct(16, 32, 3, 2, 8, "silu")
        self.ln = ChannelLayerNorm(32)
        self.b2 = ConvGNAct(32, 32, 3, 1, 1, "gelu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.b2(self.ln(self.b1(self.stem(x))))).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, ci: int, co: int, s: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ci, co, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(co)
        self.conv2 = nn.Conv2d(co, co, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(co)
        self.relu = nn.ReLU()
        self.down = (nn.Sequential(nn.Conv2d(ci, co, 1, s, bias=False), nn.BatchNorm2d(co))
                     if s != 1 or ci != co else None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, 1, act="relu")
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))


class DetNet(nn.Module):
    """Stride-8 backbone with a dense class / box head: outputs (cls logits, box) maps."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBNAct(3, 16, 3, 2), ConvBNAct(16, 32, 3, 2), ConvBNAct(32, 32, 3, 2))
        self.cls_pred = nn.Conv2d(32, num_classes, 1)
        self.reg_pred = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.backbone(x)
        return self.cls_pred(f), self.reg_pred(f)


def det_loss(outputs: tuple[Tensor, Tensor], targets: tuple[Tensor, Tensor], ctx: Any, topk: int = 10) -> Tensor:
    """Top-k assignment + BCE / L1 loss (a TAL-like detector loss in miniature).

    targets: gt boxes (B, G, 4) as normalised (cx, cy, w, h) and one-hot labels (B, G, C). Each gt takes
    the ``topk`` anchors with the highest (class probability x centre proximity); the selection is detached.
    """
    cls, reg = outputs
    boxes, onehot = targets
    b, c, h, w = cls.shape
    cls = cls.flatten(2).transpose(1, 2)                                  # (B, A, C)
    reg = reg.flatten(2).transpose(1, 2)                                  # (B, A, 4)
    centres = ctx.tensor(anchor_centres(h, w))                            # (A, 2)
    dist = (boxes[:, :, None, :2] - centres[None, None]).abs().sum(-1)    # (B, G, A)
    score = onehot @ torch.sigmoid(cls).transpose(1, 2)                   # (B, G, A)
    metric = (score * torch.exp(-4.0 * dist)).detach()
    kth = metric.topk(min(topk, h * w), dim=-1)[0][..., -1:]
    mask = (metric >= kth).to(cls.dtype)                                  # (B, G, A)
    cls_t = (mask.transpose(1, 2) @ onehot).clamp(max=1.0)                # (B, A, C)
    count = mask.sum(1)                                                   # (B, A)
    reg_t = (mask.transpose(1, 2) @ boxes) / count.clamp(min=1.0)[..., None]
    fg = (count > 0).to(cls.dtype)
    l_cls = F.binary_cross_entropy_with_logits(cls, cls_t)
    l_box = ((reg - reg_t).abs().sum(-1) * fg).sum() / fg.sum().clamp(min=1.0)
    ctx.record("fg_mask", fg.detach())
    ctx.record("loss_items", torch.stack([l_cls.detach(), l_box.detach()]))
    return l_cls + l_box

