"""GOLD-YOLO gather-and-distribute necks (official `gold_yolo/reppan.py`, `gold_yolo/common.py`).

RepGDNeck (N/S, RepBlock stages), GDNeck (M, BepC3 stages) and GDNeck2 (L, like GDNeck but `LAF_n5(p4, ...)`).
All return `[p3, n4, n5]` at strides 8/16/32.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import NeckExtraCfg
from .layers import BepC3, GoldConv, RepBlock, RepVGGBlock, SimConv, SyncBatchNorm2d
from .transformer import TopBasicLayer, h_sigmoid


def onnx_AdaptiveAvgPool2d(x: Tensor, output_size: Sequence[int]) -> Tensor:
    """Fixed-kernel pooling of pool_mode 'onnx': stride floor(H/o), kernel H-(o-1)*stride.

    Equals `F.adaptive_avg_pool2d` only when every input size is divisible by the output size.
    """
    output_size = np.asarray(output_size)
    stride_size = np.floor(np.array(x.shape[-2:]) / output_size).astype(np.int32)
    kernel_size = np.array(x.shape[-2:]) - (output_size - 1) * stride_size
    return nn.AvgPool2d(kernel_size=[int(k) for k in kernel_size], stride=[int(s) for s in stride_size])(x)


class ConvModule(nn.Module):
    """Stand-in for mmcv `ConvModule(inp, oup, 1, norm_cfg=SyncBN, act_cfg=None)`: conv -> bn, no activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        # mmcv: bias='auto' -> False when a norm follows
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SyncBatchNorm2d(out_channels)
        # mmcv ConvModule.init_weights: kaiming_init(conv, mode='fan_out', nonlinearity='relu'), BN 1/0
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.bn.weight, 1)
        nn.init.constant_(self.bn.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class SimFusion_4in(nn.Module):
    """Low-level FAM: pool c2, c3 and upsample c5 to c4's size, then concatenate."""

    def forward(self, x: Sequence[Tensor]) -> Tensor:
        x_l, x_m, x_s, x_n = x
        _, _, H, W = x_s.shape
        x_l = F.adaptive_avg_pool2d(x_l, (H, W))
        x_m = F.adaptive_avg_pool2d(x_m, (H, W))
        x_n = F.interpolate(x_n, size=(H, W), mode="bilinear", align_corners=False)
        return torch.cat([x_l, x_m, x_s, x_n], 1)


class SimFusion_3in(nn.Module):
    """Local fusion of three adjacent levels onto the middle level's size."""

    def __init__(self, in_channel_list: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.cv1 = SimConv(in_channel_list[0], out_channels, 1, 1)
        self.cv_fuse = SimConv(out_channels * 3, out_channels, 1, 1)

    def forward(self, x: Sequence[Tensor]) -> Tensor:
        _, _, H, W = x[1].shape
        # faithful: x[0] is only pooled, not projected; it must already have out_channels channels
        x0 = F.adaptive_avg_pool2d(x[0], (H, W))
        x1 = self.cv1(x[1])
        x2 = F.interpolate(x[2], size=(H, W), mode="bilinear", align_corners=False)
        return self.cv_fuse(torch.cat((x0, x1, x2), dim=1))


class AdvPoolFusion(nn.Module):
    """Pool `x1` to `x2`'s size and concatenate (no parameters)."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        x1 = F.adaptive_avg_pool2d(x1, x2.shape[2:])
        return torch.cat([x1, x2], 1)


class PyramidPoolAgg(nn.Module):
    """High-level FAM: pool every input to ceil(size(c5)/stride) and concatenate."""

    def __init__(self, stride: int, pool_mode: str = "onnx") -> None:
        super().__init__()
        self.stride = stride
        if pool_mode == "torch":
            self.pool = F.adaptive_avg_pool2d
        elif pool_mode == "onnx":
            self.pool = onnx_AdaptiveAvgPool2d
        else:
            raise ValueError(f"unknown pool_mode {pool_mode!r}")

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        _, _, H, W = inputs[-1].shape
        H = (H - 1) // self.stride + 1
        W = (W - 1) // self.stride + 1
        return torch.cat([self.pool(inp, (H, W)) for inp in inputs], dim=1)


class InjectionMultiSum_Auto_pool(nn.Module):
    """Inject global info: `local_embedding(x_l) * gate(x_g) + global_embedding(x_g)`, resized to x_l."""

    def __init__(self, inp: int, oup: int, activations: type[nn.Module] | None = None,
                 global_inp: int | None = None) -> None:
        super().__init__()
        # `activations` is accepted and ignored, as in the official code (the gate is always h_sigmoid)
        if not global_inp:
            global_inp = inp
        self.local_embedding = ConvModule(inp, oup, kernel_size=1)
        self.global_embedding = ConvModule(global_inp, oup, kernel_size=1)
        self.global_act = ConvModule(global_inp, oup, kernel_size=1)
        self.act = h_sigmoid()

    def forward(self, x_l: Tensor, x_g: Tensor) -> Tensor:
        _, _, H, W = x_l.shape
        g_H = x_g.shape[2]
        use_pool = H < g_H
        local_feat = self.local_embedding(x_l)
        global_act = self.global_act(x_g)
        global_feat = self.global_embedding(x_g)
        if use_pool:
            # faithful: no h_sigmoid on the gate in the pool branch (never taken with the shipped configs)
            sig_act = F.adaptive_avg_pool2d(global_act, (H, W))
            global_feat = F.adaptive_avg_pool2d(global_feat, (H, W))
        else:
            sig_act = F.interpolate(self.act(global_act), size=(H, W), mode="bilinear", align_corners=False)
            global_feat = F.interpolate(global_feat, size=(H, W), mode="bilinear", align_corners=False)
        return local_feat * sig_act + global_feat


class RepGDNeck(nn.Module):
    """Gather-and-distribute neck with RepBlock stages (N, S)."""

    def _stage(self, cin: int, cout: int, n: int, block: Callable[..., nn.Module]) -> nn.Module:
        return RepBlock(in_channels=cin, out_channels=cout, n=n, block=block)

    def __init__(self, channels_list: Sequence[int], num_repeats: Sequence[int], extra_cfg: NeckExtraCfg,
                 block: Callable[..., nn.Module] = RepVGGBlock) -> None:
        super().__init__()
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
        dpr = [x.item() for x in torch.linspace(0, e.drop_path_rate, e.depths)]
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

    def _n5_local(self, p4: Tensor, n4: Tensor) -> Tensor:
        """Which level is pooled into LAF_n5 (GDNeck2 uses p4)."""
        return n4

    def forward(self, input: Sequence[Tensor]) -> list[Tensor]:
        c2, c3, c4, c5 = input
        # low-level gather and distribute
        low_align_feat = self.low_FAM(input)
        low_fuse_feat = self.low_IFM(low_align_feat)
        low_global_info = low_fuse_feat.split(self.trans_channels[0:2], dim=1)
        c5_half = self.reduce_layer_c5(c5)
        p4 = self.Rep_p4(self.Inject_p4(self.LAF_p4([c3, c4, c5_half]), low_global_info[0]))
        p4_half = self.reduce_layer_p4(p4)
        p3 = self.Rep_p3(self.Inject_p3(self.LAF_p3([c2, c3, p4_half]), low_global_info[1]))
        # high-level gather and distribute
        high_align_feat = self.high_FAM([p3, p4, c5])
        high_fuse_feat = self.conv_1x1_n(self.high_IFM(high_align_feat))
        high_global_info = high_fuse_feat.split(self.trans_channels[2:4], dim=1)
        n4 = self.Rep_n4(self.Inject_n4(self.LAF_n4(p3, p4_half), high_global_info[0]))
        n5 = self.Rep_n5(self.Inject_n5(self.LAF_n5(self._n5_local(p4, n4), c5_half), high_global_info[1]))
        return [p3, n4, n5]


class GDNeck(RepGDNeck):
    """Gather-and-distribute neck with BepC3 stages (M)."""

    def __init__(self, channels_list: Sequence[int], num_repeats: Sequence[int], extra_cfg: NeckExtraCfg,
                 block: Callable[..., nn.Module] = RepVGGBlock, csp_e: float = float(1) / 2) -> None:
        self.csp_e = csp_e  # plain float (allowed before Module.__init__), read by _stage while building
        super().__init__(channels_list, num_repeats, extra_cfg, block)

    def _stage(self, cin: int, cout: int, n: int, block: Callable[..., nn.Module]) -> nn.Module:
        return BepC3(in_channels=cin, out_channels=cout, n=n, e=self.csp_e, block=block)


class GDNeck2(GDNeck):
    """GDNeck with `LAF_n5(p4, c5_half)` instead of `(n4, c5_half)` (L)."""

    def _n5_local(self, p4: Tensor, n4: Tensor) -> Tensor:
        return p4
