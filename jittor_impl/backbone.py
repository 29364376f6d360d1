"""GOLD-YOLO backbones in Jittor (mirror of reference_torch/backbone.py): EfficientRep (N/S), CSPBepBackbone (M/L).

Both return `(c2, c3, c4, c5)` at strides 4/8/16/32 (`fuse_P2=True` in every GOLD-YOLO config).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .layers import (CSPSPPF, SPPF, BepC3, ConvWrapper, RepBlock, RepVGGBlock, SimCSPSPPF, SimSPPF)


def _channel_merge_layer(block: Callable[..., nn.Module], cspsppf: bool) -> type[nn.Module]:
    """SPPF variant closing ERBlock_5: CSP versions with `cspsppf`, SiLU versions for ConvWrapper."""
    if cspsppf:
        return CSPSPPF if block is ConvWrapper else SimCSPSPPF
    return SPPF if block is ConvWrapper else SimSPPF


class EfficientRep(nn.Module):
    """Stem + four stride-2 stages of RepBlocks; the last stage ends with an SPPF variant."""

    def __init__(self, in_channels: int = 3, channels_list: Sequence[int] = (), num_repeats: Sequence[int] = (),
                 block: Callable[..., nn.Module] = RepVGGBlock, fuse_P2: bool = False,
                 cspsppf: bool = False) -> None:
        ch, nr = channels_list, num_repeats
        self.fuse_P2 = fuse_P2
        self.stem = block(in_channels=in_channels, out_channels=ch[0], kernel_size=3, stride=2)
        self.ERBlock_2 = nn.Sequential(
            block(in_channels=ch[0], out_channels=ch[1], kernel_size=3, stride=2),
            RepBlock(in_channels=ch[1], out_channels=ch[1], n=nr[1], block=block))
        self.ERBlock_3 = nn.Sequential(
            block(in_channels=ch[1], out_channels=ch[2], kernel_size=3, stride=2),
            RepBlock(in_channels=ch[2], out_channels=ch[2], n=nr[2], block=block))
        self.ERBlock_4 = nn.Sequential(
            block(in_channels=ch[2], out_channels=ch[3], kernel_size=3, stride=2),
            RepBlock(in_channels=ch[3], out_channels=ch[3], n=nr[3], block=block))
        merge = _channel_merge_layer(block, cspsppf)
        self.ERBlock_5 = nn.Sequential(
            block(in_channels=ch[3], out_channels=ch[4], kernel_size=3, stride=2),
            RepBlock(in_channels=ch[4], out_channels=ch[4], n=nr[4], block=block),
            merge(in_channels=ch[4], out_channels=ch[4], kernel_size=5))

    def execute(self, x: jt.Var) -> tuple[jt.Var, ...]:
        outputs = []
        x = self.stem(x)
        x = self.ERBlock_2(x)
        if self.fuse_P2:
            outputs.append(x)
        x = self.ERBlock_3(x)
        outputs.append(x)
        x = self.ERBlock_4(x)
        outputs.append(x)
        x = self.ERBlock_5(x)
        outputs.append(x)
        return tuple(outputs)


class CSPBepBackbone(EfficientRep):
    """EfficientRep with BepC3 stages (expansion `csp_e`) instead of RepBlocks."""

    def __init__(self, in_channels: int = 3, channels_list: Sequence[int] = (), num_repeats: Sequence[int] = (),
                 block: Callable[..., nn.Module] = RepVGGBlock, csp_e: float = float(1) / 2,
                 fuse_P2: bool = False, cspsppf: bool = False) -> None:
        nn.Module.__init__(self)  # NOTE: own stage layout; EfficientRep only lends execute()
        ch, nr = channels_list, num_repeats
        self.fuse_P2 = fuse_P2
        self.stem = block(in_channels=in_channels, out_channels=ch[0], kernel_size=3, stride=2)
        self.ERBlock_2 = nn.Sequential(
            block(in_channels=ch[0], out_channels=ch[1], kernel_size=3, stride=2),
            BepC3(in_channels=ch[1], out_channels=ch[1], n=nr[1], e=csp_e, block=block))
        self.ERBlock_3 = nn.Sequential(
            block(in_channels=ch[1], out_channels=ch[2], kernel_size=3, stride=2),
            BepC3(in_channels=ch[2], out_channels=ch[2], n=nr[2], e=csp_e, block=block))
        self.ERBlock_4 = nn.Sequential(
            block(in_channels=ch[2], out_channels=ch[3], kernel_size=3, stride=2),
            BepC3(in_channels=ch[3], out_channels=ch[3], n=nr[3], e=csp_e, block=block))
        merge = _channel_merge_layer(block, cspsppf)
        self.ERBlock_5 = nn.Sequential(
            block(in_channels=ch[3], out_channels=ch[4], kernel_size=3, stride=2),
            BepC3(in_channels=ch[4], out_channels=ch[4], n=nr[4], e=csp_e, block=block),
            merge(in_channels=ch[4], out_channels=ch[4], kernel_size=5))
