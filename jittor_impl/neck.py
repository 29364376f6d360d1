"""GOLD-YOLO gather-and-distribute necks in Jittor (mirror of reference_torch/neck.py).

RepGDNeck (N/S, RepBlock stages), GDNeck (M, BepC3 stages) and GDNeck2 (L, like GDNeck but `LAF_n5(p4, ...)`).
All return `[p3, n4, n5]` at strides 8/16/32.

Jittor differences handled here: `adaptive_avg_pool2d` is the torch-window version from layers.py (Jittor's
AdaptiveAvgPool2d is the onnx-style fixed kernel), and every `nn.interpolate` names mode='bilinear' and
align_corners=False explicitly. Jittor's bilinear computes its sampling coordinates in float32 even for float64
maps, so the resize is written out with torch's coordinates (`_interpolate_bilinear`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .configs import NeckExtraCfg
from .layers import (BepC3, GoldConv, RepBlock, RepVGGBlock, SimConv, SyncBatchNorm2d, adaptive_avg_pool2d,
                     window_average)
from .transformer import TopBasicLayer, h_sigmoid


def onnx_AdaptiveAvgPool2d(x: jt.Var, output_size: Sequence[int]) -> jt.Var:
    """Fixed-kernel pooling of pool_mode 'onnx': stride floor(H/o), kernel H-(o-1)*stride.

    Equals `adaptive_avg_pool2d` only when every input size is divisible by the output size. Written as an
    explicit window average: Jittor's AvgPool2d rejects maps not larger than the kernel and multiplies by a
    float32 reciprocal of the count even for float64 maps.
    """
    windows = []
    for size_in, size_out in zip(x.shape[-2:], output_size):
        stride = size_in // int(size_out)
        kernel = size_in - (int(size_out) - 1) * stride
        windows.append([(i * stride, i * stride + kernel) for i in range(int(size_out))])
    return window_average(x, windows[0], windows[1])


def _bilinear_taps(size_in: int, size_out: int, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize (align_corners=False), in the map's own dtype.

    torch (aten/src/ATen/native/UpSample.h) computes `src = (dst + 0.5) * in/out - 0.5`, clamped at 0, in the
    map's precision; Jittor's `nn.interpolate` does it in float32 even for float64 maps (docs/jittor-notes.md), which
    was a 1e-6 error in float64 runs.
    """
    scale = dtype(size_in) / dtype(size_out)
    src = np.maximum((np.arange(size_out, dtype=dtype) + dtype(0.5)) * scale - dtype(0.5), dtype(0))
    i0 = np.minimum(np.floor(src).astype(np.int32), size_in - 1)
    i1 = i0 + (i0 < size_in - 1).astype(np.int32)
    w1 = np.clip(src - i0.astype(dtype), dtype(0), dtype(1)).astype(dtype)
    return i0, i1, (dtype(1) - w1).astype(dtype), w1


def _interpolate_bilinear(x: jt.Var, size: Sequence[int]) -> jt.Var:
    """`F.interpolate(x, size, mode='bilinear', align_corners=False)` with torch's coordinates and operation order
    (width first, then height: `h0*(w0*x00 + w1*x01) + h1*(w0*x10 + w1*x11)`)."""
    out_h, out_w = int(size[0]), int(size[1])
    n, c, in_h, in_w = x.shape
    if (out_h, out_w) == (in_h, in_w):
        return x
    dtype = np.float64 if str(x.dtype) == "float64" else np.float32

    def const(a: np.ndarray, shape: tuple[int, ...]) -> jt.Var:  # jt.array alone turns float64 into float32
        return jt.array(a.reshape(shape), str(x.dtype))

    j0, j1, v0, v1 = _bilinear_taps(in_w, out_w, dtype)
    cols = [x.reindex([n, c, in_h, out_w], ["i0", "i1", "i2", "@e0(i3)"], extras=[jt.array(j)]) for j in (j0, j1)]
    y = cols[0] * const(v0, (1, 1, 1, -1)) + cols[1] * const(v1, (1, 1, 1, -1))
    i0, i1, u0, u1 = _bilinear_taps(in_h, out_h, dtype)
    rows = [y.reindex([n, c, out_h, out_w], ["i0", "i1", "@e0(i2)", "i3"], extras=[jt.array(i)]) for i in (i0, i1)]
    return rows[0] * const(u0, (1, 1, -1, 1)) + rows[1] * const(u1, (1, 1, -1, 1))


class ConvModule(nn.Module):
    """Stand-in for mmcv `ConvModule(inp, oup, 1, norm_cfg=SyncBN, act_cfg=None)`: conv -> bn, no activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        # mmcv: bias='auto' -> False when a norm follows
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SyncBatchNorm2d(out_channels)
        # mmcv ConvModule.init_weights: kaiming_init(conv, mode='fan_out', nonlinearity='relu'), BN 1/0
        jt.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        self.bn.weight = jt.ones((out_channels,), "float32")
        self.bn.bias = jt.zeros((out_channels,), "float32")

    def execute(self, x: jt.Var) -> jt.Var:
        return self.bn(self.conv(x))


class SimFusion_4in(nn.Module):
    """Low-level FAM: pool c2, c3 and upsample c5 to c4's size, then concatenate."""

    def execute(self, x: Sequence[jt.Var]) -> jt.Var:
        x_l, x_m, x_s, x_n = x
        _, _, H, W = x_s.shape
        x_l = adaptive_avg_pool2d(x_l, (H, W))
        x_m = adaptive_avg_pool2d(x_m, (H, W))
        x_n = _interpolate_bilinear(x_n, (H, W))
        return jt.concat([x_l, x_m, x_s, x_n], 1)


class SimFusion_3in(nn.Module):
    """Local fusion of three adjacent levels onto the middle level's size."""

    def __init__(self, in_channel_list: Sequence[int], out_channels: int) -> None:
        self.cv1 = SimConv(in_channel_list[0], out_channels, 1, 1)
        self.cv_fuse = SimConv(out_channels * 3, out_channels, 1, 1)

    def execute(self, x: Sequence[jt.Var]) -> jt.Var:
        _, _, H, W = x[1].shape
        # faithful: x[0] is only pooled, not projected; it must already have out_channels channels
        x0 = adaptive_avg_pool2d(x[0], (H, W))
        x1 = self.cv1(x[1])
        x2 = _interpolate_bilinear(x[2], (H, W))
        return self.cv_fuse(jt.concat((x0, x1, x2), dim=1))


class AdvPoolFusion(nn.Module):
    """Pool `x1` to `x2`'s size and concatenate (no parameters)."""

    def execute(self, x1: jt.Var, x2: jt.Var) -> jt.Var:
        x1 = adaptive_avg_pool2d(x1, x2.shape[2:])
        return jt.concat([x1, x2], 1)


class PyramidPoolAgg(nn.Module):
    """High-level FAM: pool every input to ceil(size(c5)/stride) and concatenate."""

    def __init__(self, stride: int, pool_mode: str = "onnx") -> None:
        self.stride = stride
        if pool_mode == "torch":
            self.pool = adaptive_avg_pool2d
        elif pool_mode == "onnx":
            self.pool = onnx_AdaptiveAvgPool2d
        else:
            raise ValueError(f"unknown pool_mode {pool_mode!r}")

    def execute(self, inputs: Sequence[jt.Var]) -> jt.Var:
        _, _, H, W = inputs[-1].shape
        H = (H - 1) // self.stride + 1
        W = (W - 1) // self.stride + 1
        return jt.concat([self.pool(inp, (H, W)) for inp in inputs], dim=1)


class InjectionMultiSum_Auto_pool(nn.Module):
    """Inject global info: `local_embedding(x_l) * gate(x_g) + global_embedding(x_g)`, resized to x_l."""

    def __init__(self, inp: int, oup: int, activations: type[nn.Module] | None = None,
                 global_inp: int | None = None) -> None:
        # `activations` is accepted and ignored, as in the official code (the gate is always h_sigmoid)
        if not global_inp:
            global_inp = inp
        self.local_embedding = ConvModule(inp, oup, kernel_size=1)
        self.global_embedding = ConvModule(global_inp, oup, kernel_size=1)
        self.global_act = ConvModule(global_inp, oup, kernel_size=1)
        self.act = h_sigmoid()

    def execute(self, x_l: jt.Var, x_g: jt.Var) -> jt.Var:
        _, _, H, W = x_l.shape
        g_H = x_g.shape[2]
        use_pool = H < g_H
        local_feat = self.local_embedding(x_l)
        global_act = self.global_act(x_g)
        global_feat = self.global_embedding(x_g)
        if use_pool:
            # faithful: no h_sigmoid on the gate in the pool branch (never taken with the shipped configs)
            sig_act = adaptive_avg_pool2d(global_act, (H, W))
            global_feat = adaptive_avg_pool2d(global_feat, (H, W))
        else:
            sig_act = _interpolate_bilinear(self.act(global_act), (H, W))
            global_feat = _interpolate_bilinear(global_feat, (H, W))
        return local_feat * sig_act + global_feat


class RepGDNeck(nn.Module):
    """Gather-and-distribute neck with RepBlock stages (N, S)."""

    def _stage(self, cin: int, cout: int, n: int, block: Callable[..., nn.Module]) -> nn.Module:
        return RepBlock(in_channels=cin, out_channels=cout, n=n, block=block)

    def __init__(self, channels_list: Sequence[int], num_repeats: Sequence[int], extra_cfg: NeckExtraCfg,
                 block: Callable[..., nn.Module] = RepVGGBlock) -> None:
        ch, nr, e = channels_list, num_repeats, extra_cfg  # faithful: extra_cfg widths are absolute, not scaled
        self.low_FAM = SimFusion_4in()
        self.low_IFM = nn.Sequential(
            GoldConv(e.fusion_in, e.embed_dim_p, kernel_size=1, stride=1, padding=0),
            *[block(e.embed_dim_p, e.embed_dim_p) for _ in range(e.fuse_block_num)],
            GoldConv(e.embed_dim_p, sum(e.trans_channels[0:2]), kernel_size=1, stride=1, padding=0))
        self.reduce_layer_c5 = SimConv(ch[4], ch[5], 1, 1)
        self.LAF_p4 = SimFusion_3in(in_channel_list=[ch[3], ch[3]], out_channels=ch[5])
        self.Inject_p4 = InjectionMultiSum_Auto_pool(ch[5], ch[5], activations=nn.ReLU6)
        self.Rep_p4 = self._stage(ch[5], ch[5], nr[5], block)
        self.reduce_layer_p4 = SimConv(ch[5], ch[6], 1, 1)
        self.LAF_p3 = SimFusion_3in(in_channel_list=[ch[5], ch[5]], out_channels=ch[6])
        self.Inject_p3 = InjectionMultiSum_Auto_pool(ch[6], ch[6], activations=nn.ReLU6)
        self.Rep_p3 = self._stage(ch[6], ch[6], nr[6], block)
        self.high_FAM = PyramidPoolAgg(stride=e.c2t_stride, pool_mode=e.pool_mode)
        # torch: [x.item() for x in torch.linspace(0, rate, depths)] (float32 values, read back as Python floats)
        dpr = [float(v) for v in jt.linspace(0, e.drop_path_rate, e.depths).numpy()]
        self.high_IFM = TopBasicLayer(block_num=e.depths, embedding_dim=e.embed_dim_n, key_dim=e.key_dim,
                                      num_heads=e.num_heads, mlp_ratio=e.mlp_ratios, attn_ratio=e.attn_ratios,
                                      drop=0, attn_drop=0, drop_path=dpr)
        # conv_1x1_n: plain conv with bias, no BN and no activation
        self.conv_1x1_n = nn.Conv2d(e.embed_dim_n, sum(e.trans_channels[2:4]), 1, 1, 0)
        self.LAF_n4 = AdvPoolFusion()
        self.Inject_n4 = InjectionMultiSum_Auto_pool(ch[8], ch[8], activations=nn.ReLU6)
        self.Rep_n4 = self._stage(ch[6] + ch[7], ch[8], nr[7], block)
        self.LAF_n5 = AdvPoolFusion()
        self.Inject_n5 = InjectionMultiSum_Auto_pool(ch[10], ch[10], activations=nn.ReLU6)
        self.Rep_n5 = self._stage(ch[5] + ch[9], ch[10], nr[8], block)
        self.trans_channels = list(e.trans_channels)

    def _n5_local(self, p4: jt.Var, n4: jt.Var) -> jt.Var:
        """Which level is pooled into LAF_n5 (GDNeck2 uses p4)."""
        return n4

    def execute(self, input: Sequence[jt.Var]) -> list[jt.Var]:
        c2, c3, c4, c5 = input
        # low-level gather and distribute
        low_align_feat = self.low_FAM(input)
        low_fuse_feat = self.low_IFM(low_align_feat)
        low_global_info = jt.split(low_fuse_feat, self.trans_channels[0:2], dim=1)
        c5_half = self.reduce_layer_c5(c5)
        p4 = self.Rep_p4(self.Inject_p4(self.LAF_p4([c3, c4, c5_half]), low_global_info[0]))
        p4_half = self.reduce_layer_p4(p4)
        p3 = self.Rep_p3(self.Inject_p3(self.LAF_p3([c2, c3, p4_half]), low_global_info[1]))
        # high-level gather and distribute
        high_align_feat = self.high_FAM([p3, p4, c5])
        high_fuse_feat = self.conv_1x1_n(self.high_IFM(high_align_feat))
        high_global_info = jt.split(high_fuse_feat, self.trans_channels[2:4], dim=1)
        n4 = self.Rep_n4(self.Inject_n4(self.LAF_n4(p3, p4_half), high_global_info[0]))
        n5 = self.Rep_n5(self.Inject_n5(self.LAF_n5(self._n5_local(p4, n4), c5_half), high_global_info[1]))
        return [p3, n4, n5]


class GDNeck(RepGDNeck):
    """Gather-and-distribute neck with BepC3 stages (M)."""

    def __init__(self, channels_list: Sequence[int], num_repeats: Sequence[int], extra_cfg: NeckExtraCfg,
                 block: Callable[..., nn.Module] = RepVGGBlock, csp_e: float = float(1) / 2) -> None:
        self.csp_e = csp_e  # plain float, read by _stage while building
        super().__init__(channels_list, num_repeats, extra_cfg, block)

    def _stage(self, cin: int, cout: int, n: int, block: Callable[..., nn.Module]) -> nn.Module:
        return BepC3(in_channels=cin, out_channels=cout, n=n, e=self.csp_e, block=block)


class GDNeck2(GDNeck):
    """GDNeck with `LAF_n5(p4, c5_half)` instead of `(n4, c5_half)` (L)."""

    def _n5_local(self, p4: jt.Var, n4: jt.Var) -> jt.Var:
        return p4
