"""Shared GOLD-YOLO building blocks (official `yolov6/layers/common.py` and `gold_yolo/layers.py`).

Module and attribute names are the official ones: they define the state_dict keys. Definition order inside
each `__init__` follows the official code because it fixes both the key order and the RNG stream of the
default initialisation.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn


class SyncBatchNorm2d(nn.BatchNorm2d):
    """Stand-in for mmcv `build_norm_layer(dict(type='SyncBN'))` on one process (plain batch norm).

    A subclass on purpose: `initialize_weights` matches `type(m) is nn.BatchNorm2d` exactly, so this family
    keeps eps 1e-5 / momentum 0.1 like `torch.nn.SyncBatchNorm` does in the official model.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)


class _ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> ``act_type`` (padding ``kernel_size // 2`` unless given): the body that yolov6's
    `Conv` and `SimConv` and gold_yolo's `Conv` share. They stay separate types, as in the official code, because
    `fuse_model` and `initialize_weights` test exact types."""

    act_type: type[nn.Module] = nn.SiLU

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1,
                 bias: bool = False, padding: int | None = None) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = self.act_type()

    def forward(self, x: Tensor) -> Tensor:
        if not hasattr(self, "bn"):  # after fuse_model
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class Conv(_ConvBNAct):
    """`yolov6.layers.common.Conv`: Conv2d -> BatchNorm2d -> SiLU."""

    act_type = nn.SiLU


class SimConv(_ConvBNAct):
    """`yolov6.layers.common.SimConv`: Conv2d -> BatchNorm2d -> ReLU."""

    act_type = nn.ReLU


class GoldConv(_ConvBNAct):
    """`gold_yolo.layers.Conv` (used by `low_IFM`): identical to `Conv` but a different Python type.

    # faithful: fuse_model only fuses yolov6 Conv/SimConv/Conv_C3, so this class stays unfused in deploy form
    """

    act_type = nn.SiLU


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
            groups: int = 1) -> nn.Sequential:
    """Rep-style cell: `Sequential(conv=Conv2d(bias=False), bn=BatchNorm2d)`."""
    result = nn.Sequential()
    result.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                        padding=padding, groups=groups, bias=False))
    result.add_module("bn", nn.BatchNorm2d(num_features=out_channels))
    return result


class RepVGGBlock(nn.Module):
    """RepVGG block: ReLU(3x3 conv_bn + 1x1 conv_bn + identity BN); `switch_to_deploy` fuses to one 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, padding_mode: str = "zeros",
                 deploy: bool = False, use_se: bool = False) -> None:
        super().__init__()
        self.deploy = deploy
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        assert kernel_size == 3 and padding == 1
        padding_11 = padding - kernel_size // 2
        self.nonlinearity = nn.ReLU()
        if use_se:
            raise NotImplementedError("se block not supported")
        self.se = nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                         groups, bias=True, padding_mode=padding_mode)
        else:
            self.rbr_identity = (nn.BatchNorm2d(num_features=in_channels)
                                 if out_channels == in_channels and stride == 1 else None)
            self.rbr_dense = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups)
            self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, padding_11, groups)

    def forward(self, inputs: Tensor) -> Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.se(self.rbr_reparam(inputs)))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.nonlinearity(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out))

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Fused 3x3 kernel and bias of the three branches (uses BN running statistics)."""
        k3, b3 = self._fuse_bn_tensor(self.rbr_dense)
        k1, b1 = self._fuse_bn_tensor(self.rbr_1x1)
        kid, bid = self._fuse_bn_tensor(self.rbr_identity)
        return k3 + self._pad_1x1_to_3x3_tensor(k1) + kid, b3 + b1 + bid

    @staticmethod
    def _pad_1x1_to_3x3_tensor(kernel1x1: Tensor | int) -> Tensor | int:
        if isinstance(kernel1x1, int):
            return 0
        return nn.functional.pad(kernel1x1, [1, 1, 1, 1])

    def _fuse_bn_tensor(self, branch: nn.Module | None) -> tuple[Tensor | int, Tensor | int]:
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            kernel, bn = branch.conv.weight, branch.bn
        else:
            assert isinstance(branch, nn.BatchNorm2d)
            if not hasattr(self, "id_tensor"):
                input_dim = self.in_channels // self.groups
                kernel_value = np.zeros((self.in_channels, input_dim, 3, 3), dtype=np.float32)
                for i in range(self.in_channels):
                    kernel_value[i, i % input_dim, 1, 1] = 1
                self.id_tensor = torch.from_numpy(kernel_value).to(branch.weight.device)
            kernel, bn = self.id_tensor.to(branch.weight.dtype), branch
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    def switch_to_deploy(self) -> None:
        """Replace the branches by `rbr_reparam` (3x3 conv with bias); exact only for the eval-mode block."""
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        c = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(c.in_channels, c.out_channels, kernel_size=c.kernel_size, stride=c.stride,
                                     padding=c.padding, dilation=c.dilation, groups=c.groups, bias=True)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        self.__delattr__("rbr_dense")
        self.__delattr__("rbr_1x1")
        if hasattr(self, "rbr_identity"):
            self.__delattr__("rbr_identity")
        if hasattr(self, "id_tensor"):
            self.__delattr__("id_tensor")
        self.deploy = True


class ConvWrapper(nn.Module):
    """`training_mode='conv_silu'` block: `block = Conv(k=3, bias=True)`.

    # faithful: conv bias=True followed by BN (the bias is mathematically dead in train mode)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.block = Conv(in_channels, out_channels, kernel_size, stride, groups, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def get_block(training_mode: str) -> type[nn.Module]:
    """Official `get_block`: 'repvgg' -> RepVGGBlock, 'conv_silu' -> ConvWrapper."""
    if training_mode == "repvgg":
        return RepVGGBlock
    if training_mode == "conv_silu":
        return ConvWrapper
    raise NotImplementedError(f"training_mode {training_mode!r} is not supported")


class BottleRep(nn.Module):
    """Two basic blocks with an (optionally learnable-gain) residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, basic_block: Callable[..., nn.Module] = RepVGGBlock,
                 weight: bool = False) -> None:
        super().__init__()
        self.conv1 = basic_block(in_channels, out_channels)
        self.conv2 = basic_block(out_channels, out_channels)
        self.shortcut = in_channels == out_channels
        if weight:
            self.alpha = nn.Parameter(torch.ones(1))
        else:
            self.alpha = 1.0

    def forward(self, x: Tensor) -> Tensor:
        outputs = self.conv2(self.conv1(x))
        return outputs + self.alpha * x if self.shortcut else outputs


class RepBlock(nn.Module):
    """Stage of `n` rep-style blocks (or n//2 BottleReps when `block is BottleRep`)."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1,
                 block: Callable[..., nn.Module] = RepVGGBlock,
                 basic_block: Callable[..., nn.Module] = RepVGGBlock) -> None:
        super().__init__()
        # faithful: the official code always builds the plain stage first and, for BottleRep, rebuilds it;
        # the discarded modules still consume the RNG stream of the default init
        self.conv1 = block(in_channels, out_channels)
        self.block = nn.Sequential(*(block(out_channels, out_channels) for _ in range(n - 1))) if n > 1 else None
        if block is BottleRep:
            self.conv1 = BottleRep(in_channels, out_channels, basic_block=basic_block, weight=True)
            n = n // 2
            self.block = (nn.Sequential(*(BottleRep(out_channels, out_channels, basic_block=basic_block,
                                                    weight=True) for _ in range(n - 1))) if n > 1 else None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.block is not None:
            x = self.block(x)
        return x


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for odd kernels."""
    return k // 2 if p is None else p


class Conv_C3(nn.Module):
    """Conv in BepC3: Conv2d(bias=False) -> BatchNorm2d -> ReLU (or the given activation)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.ReLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        if not hasattr(self, "bn"):  # after fuse_model
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class BepC3(nn.Module):
    """Beer-mug RepC3: `cv3(cat(m(cv1(x)), cv2(x)))` with `m` a RepBlock of BottleReps."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, e: float = 0.5, concat: bool = True,
                 block: Callable[..., nn.Module] = RepVGGBlock) -> None:
        super().__init__()
        c_ = int(out_channels * e)
        self.cv1 = Conv_C3(in_channels, c_, 1, 1)
        self.cv2 = Conv_C3(in_channels, c_, 1, 1)
        self.cv3 = Conv_C3(2 * c_, out_channels, 1, 1)
        if block is ConvWrapper:
            # faithful: rebuilt with SiLU for conv_silu; the ReLU versions above still consumed the RNG
            self.cv1 = Conv_C3(in_channels, c_, 1, 1, act=nn.SiLU())
            self.cv2 = Conv_C3(in_channels, c_, 1, 1, act=nn.SiLU())
            self.cv3 = Conv_C3(2 * c_, out_channels, 1, 1, act=nn.SiLU())
        self.m = RepBlock(in_channels=c_, out_channels=c_, n=n, block=BottleRep, basic_block=block)
        self.concat = concat
        if not concat:
            self.cv3 = Conv_C3(c_, out_channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.concat:
            return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))
        return self.cv3(self.m(self.cv1(x)))


class SimSPPF(nn.Module):
    """Simplified SPPF with ReLU (SimConv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, conv: type = SimConv) -> None:
        super().__init__()
        c_ = in_channels // 2
        self.cv1 = conv(in_channels, c_, 1, 1)
        self.cv2 = conv(c_ * 4, out_channels, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class SPPF(SimSPPF):
    """SPPF with SiLU (`Conv`); used by the backbone when the block is ConvWrapper (L)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, conv=Conv)


class SimCSPSPPF(nn.Module):
    """CSP version of SimSPPF (ReLU, SimConv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, e: float = 0.5,
                 conv: type = SimConv) -> None:
        super().__init__()
        c_ = int(out_channels * e)
        self.cv1 = conv(in_channels, c_, 1, 1)
        self.cv2 = conv(in_channels, c_, 1, 1)
        self.cv3 = conv(c_, c_, 3, 1)
        self.cv4 = conv(c_, c_, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
        self.cv5 = conv(4 * c_, c_, 1, 1)
        self.cv6 = conv(c_, c_, 3, 1)
        self.cv7 = conv(2 * c_, out_channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y0 = self.cv2(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y1 = self.m(x1)
            y2 = self.m(y1)
            y3 = self.cv6(self.cv5(torch.cat([x1, y1, y2, self.m(y2)], 1)))
        return self.cv7(torch.cat((y0, y3), dim=1))


class CSPSPPF(SimCSPSPPF):
    """CSP SPPF with SiLU (`Conv`); chosen with cspsppf=True and a ConvWrapper block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, e: float = 0.5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, e, conv=Conv)


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Official `fuse_conv_and_bn`: fold eval-mode BN into the conv (new conv with bias, no grad)."""
    fusedconv = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, groups=conv.groups, bias=True).requires_grad_(False)
    fusedconv = fusedconv.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        w_conv = conv.weight.clone().view(conv.out_channels, -1)
        w_bn = torch.diag(bn.weight.div(torch.sqrt(bn.eps + bn.running_var)))
        fusedconv.weight.copy_(torch.mm(w_bn, w_conv).view(fusedconv.weight.shape))
        b_conv = (torch.zeros(conv.weight.size(0), device=conv.weight.device, dtype=conv.weight.dtype)
                  if conv.bias is None else conv.bias)
        b_bn = bn.bias - bn.weight.mul(bn.running_mean).div(torch.sqrt(bn.running_var + bn.eps))
        fusedconv.bias.copy_(torch.mm(w_bn, b_conv.reshape(-1, 1)).reshape(-1) + b_bn)
    return fusedconv
