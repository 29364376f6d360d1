"""TopFormer-style transformer pieces of GOLD-YOLO's high-level IFM in Jittor (mirror of
reference_torch/transformer.py).

Norms here are the SyncBN family (`SyncBatchNorm2d`, eps 1e-5 / momentum 0.1), as mmcv's
`build_norm_layer(dict(type='SyncBN'))` gives in the official model.
"""
from __future__ import annotations

from typing import Sequence

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .layers import SyncBatchNorm2d, scalar_like


class h_sigmoid(nn.Module):
    """Hard sigmoid `ReLU6(x + 3) / 6`."""

    def __init__(self, inplace: bool = True) -> None:
        # `inplace` is accepted for signature parity: Jittor's activations take no inplace flag (it would crash)
        self.relu = nn.ReLU6()

    def execute(self, x: jt.Var) -> jt.Var:
        return self.relu(x + 3) / 6


def drop_path(x: jt.Var, drop_prob: float = 0.0, training: bool = False) -> jt.Var:
    """Stochastic depth per sample (identity in eval mode or at rate 0)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    # jt.rand ignores dtype='float64' (returns float32): cast explicitly
    random_tensor = scalar_like(keep_prob, x) + jt.rand(shape).cast(x.dtype)
    random_tensor = jt.floor(random_tensor).stop_grad()
    return x / scalar_like(keep_prob, x) * random_tensor


class DropPath(nn.Module):
    """Module wrapper of `drop_path`."""

    def __init__(self, drop_prob: float | None = None) -> None:
        self.drop_prob = drop_prob

    def execute(self, x: jt.Var) -> jt.Var:
        return drop_path(x, self.drop_prob or 0.0, self.training)


class Conv2d_BN(nn.Sequential):
    """`Sequential(c=Conv2d(bias=False), bn=SyncBN)` with BN weight initialised to `bn_weight_init`."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, dilation: int = 1,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.inp_channel, self.out_channel, self.ks, self.pad = a, b, ks, pad
        self.stride, self.dilation, self.groups = stride, dilation, groups
        # add_module puts the children into Sequential.layers (attributes of a Sequential are invisible)
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        bn = SyncBatchNorm2d(b)
        bn.weight = jt.full((b,), float(bn_weight_init), "float32")
        bn.bias = jt.zeros((b,), "float32")
        self.add_module("bn", bn)


class Mlp(nn.Module):
    """fc1 (Conv2d_BN) -> depthwise 3x3 conv (bias) -> act -> drop -> fc2 (Conv2d_BN) -> drop."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.ReLU, drop: float = 0.0) -> None:
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = Conv2d_BN(in_features, hidden_features)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, bias=True, groups=hidden_features)
        self.act = act_layer()
        self.fc2 = Conv2d_BN(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def execute(self, x: jt.Var) -> jt.Var:
        x = self.fc1(x)
        x = self.dwconv(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class Attention(nn.Module):
    """Multi-head attention over the H*W positions of a feature map (1x1 Conv2d_BN projections)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float = 4,
                 activation: type[nn.Module] | None = None) -> None:
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5  # faithful: computed but never applied (unscaled softmax below)
        self.key_dim = key_dim
        self.nh_kd = nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = int(attn_ratio * key_dim) * num_heads
        self.attn_ratio = attn_ratio
        self.to_q = Conv2d_BN(dim, nh_kd, 1)
        self.to_k = Conv2d_BN(dim, nh_kd, 1)
        self.to_v = Conv2d_BN(dim, self.dh, 1)
        # faithful: proj BN weight initialised to 0, so every attention branch outputs 0 at init
        self.proj = nn.Sequential(activation(), Conv2d_BN(self.dh, dim, bn_weight_init=0))

    def execute(self, x: jt.Var) -> jt.Var:
        B, C, H, W = x.shape
        qq = self.to_q(x).reshape(B, self.num_heads, self.key_dim, H * W).permute(0, 1, 3, 2)
        kk = self.to_k(x).reshape(B, self.num_heads, self.key_dim, H * W)
        vv = self.to_v(x).reshape(B, self.num_heads, self.d, H * W).permute(0, 1, 3, 2)
        attn = jt.matmul(qq, kk)
        attn = nn.softmax(attn, dim=-1)  # faithful: no multiplication by self.scale
        xx = jt.matmul(attn, vv)
        xx = xx.permute(0, 1, 3, 2).reshape(B, self.dh, H, W)
        return self.proj(xx)


class top_Block(nn.Module):
    """Pre-norm-free transformer block: `x + dp(attn(x))`, then `x + dp(mlp(x))`."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_ratio: float = 2.0,
                 drop: float = 0.0, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.ReLU) -> None:
        self.dim = dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.attn = Attention(dim, key_dim=key_dim, num_heads=num_heads, attn_ratio=attn_ratio,
                              activation=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.mlp = Mlp(in_features=dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop)

    def execute(self, x1: jt.Var) -> jt.Var:
        x1 = x1 + self.drop_path(self.attn(x1))
        return x1 + self.drop_path(self.mlp(x1))


class TopBasicLayer(nn.Module):
    """`block_num` top_Blocks (act ReLU6) with per-block drop-path rates."""

    def __init__(self, block_num: int, embedding_dim: int, key_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_ratio: float = 2.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float | Sequence[float] = 0.0, act_layer: type[nn.Module] = nn.ReLU6) -> None:
        self.block_num = block_num
        self.transformer_blocks = nn.ModuleList()  # Jittor: ModuleList is Sequential; keys stay "0", "1", ...
        for i in range(self.block_num):
            self.transformer_blocks.append(top_Block(
                embedding_dim, key_dim=key_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, attn_ratio=attn_ratio,
                drop=drop, drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                act_layer=act_layer))

    def execute(self, x: jt.Var) -> jt.Var:
        for i in range(self.block_num):
            x = self.transformer_blocks[i](x)
        return x
