"""Shared GOLD-YOLO building blocks in Jittor (mirror of reference_torch/layers.py).

Module and attribute names are the official ones: they define the state_dict keys. Besides the blocks, this
file holds the torch-semantics primitives that Jittor 1.3.11 lacks or gets wrong (see
docs/jittor-notes.md, "Numerics against PyTorch"):

* `BatchNorm2d` / `SyncBatchNorm2d`: torch's batch norm (two-pass variance, unbiased running_var, torch's
  momentum formula, constants in the input's precision). Jittor's own BatchNorm uses E[x^2]-E[x]^2 in the input
  dtype and updates running_var with the biased variance.
* `adaptive_avg_pool2d`: torch's floor/ceil windows. Jittor's `nn.AdaptiveAvgPool2d` is the fixed-kernel (onnx)
  pool, which differs whenever the size is not divisible (several pools at a 500x500 input), and
  `nn.resize(mode='area')` gets some window bounds wrong (float32 bounds).
* `MaxPool2d`: Jittor's pool raises when the map is not larger than the kernel (a 5x5 c5 map at 160x160 input);
  torch pads with -inf and works.

Parameters are plain float32 `jt.Var` attributes like Jittor's own layers. A Var attribute whose name does not
start with `_` is a "parameter" for Jittor (`parameters()`, `state_dict()`), so BN running statistics are
`stop_grad` and nothing else of that kind is stored on a module.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn, pool


def scalar_like(value: float, x: jt.Var) -> float | jt.Var:
    """`value` as an operand in `x`'s precision.

    Jittor turns a Python float into a float32 constant even when the other operand is float64 (0.03 becomes
    0.0299999993); in float64 runs the constant is therefore passed as a one-element float64 Var.
    """
    if str(x.dtype) == "float64":
        return jt.array(float(value), "float64").stop_grad()
    return float(value)


class BatchNorm2d(nn.Module):
    """`torch.nn.BatchNorm2d` (affine, tracking running stats) with torch's CPU arithmetic.

    Train mode: batch mean, then the variance as sum((x - mean)^2) / n (two passes, like torch; Jittor's own
    E[x^2]-E[x]^2 cancels catastrophically when |mean| >> std). torch's CPU kernel accumulates both sums, forms
    `invstd = 1 / sqrt(var + eps)` and updates the running stats in double (its acc_type for float), so they are
    computed in float64 here too and cast back at the same points. Running stats are updated lazily with
    `update()`: `(1 - momentum) * old + momentum * batch`, running_var from the unbiased variance sum / (n - 1),
    as torch does (Jittor uses the biased one). The update carries no gradient and forces no sync.
    Output `(x - mean) * alpha + bias` with `alpha = invstd * weight` (the centred form of torch's backward).
    Eval mode (`is_train` False): running statistics, `invstd` in the input's precision and
    `x * alpha + (bias - running_mean * alpha)`, torch's eval kernel.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = jt.ones((num_features,), "float32")
        self.bias = jt.zeros((num_features,), "float32")
        self.running_mean = jt.zeros((num_features,), "float32").stop_grad()
        self.running_var = jt.ones((num_features,), "float32").stop_grad()

    def execute(self, x: jt.Var) -> jt.Var:
        dims = [0] + list(range(2, x.ndim))
        shape = [1, self.num_features] + [1] * (x.ndim - 2)
        if self.training:
            n = x.numel() // self.num_features
            if n <= 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            # torch sums in double (CPU acc_type) and stores mean / var_sum in the input dtype; Jittor would
            # sum float32 maps in float32 (1e-5 relative error over a 2x250x250 map). sum / n, not jt.mean:
            # jt.mean's backward scales by a float32 1/n even for float64 (4.6e-10 relative error at n=126)
            mean = (x.float64().sum(dims=dims) / n).cast(x.dtype)
            centred = x - mean.reshape(shape)
            var_sum = (centred * centred).float64().sum(dims=dims).cast(x.dtype)
            self._update_running_stats(mean, var_sum, n)
            eps64 = jt.array(float(self.eps), "float64").stop_grad()
            invstd = (1.0 / jt.sqrt(var_sum.float64() / n + eps64)).cast(x.dtype)
            # (x - mean) * alpha + bias: the centred form torch's backward uses (x * alpha + beta would make the
            # autograd weight/mean gradients cancel when |mean| >> std)
            alpha = invstd * self.weight
            return centred * alpha.reshape(shape) + self.bias.reshape(shape)
        invstd = 1.0 / jt.sqrt(self.running_var + scalar_like(self.eps, self.running_var))
        alpha = invstd * self.weight
        beta = self.bias - self.running_mean * alpha
        return x * alpha.reshape(shape) + beta.reshape(shape)

    def _update_running_stats(self, mean: jt.Var, var_sum: jt.Var, n: int) -> None:
        """torch: `running = momentum * batch + (1 - momentum) * running` in double, unbiased running_var."""
        rm, rv = self.running_mean, self.running_var
        m = jt.array(float(self.momentum), "float64").stop_grad()
        keep = jt.array(1.0 - float(self.momentum), "float64").stop_grad()
        # detach(): new stop-grad Vars, so the forward graph through mean/var_sum is untouched
        batch_mean = mean.detach().float64()
        unbiased_var = var_sum.detach().float64() / (n - 1)
        rm.update((m * batch_mean + keep * rm.float64()).cast(rm.dtype))
        rv.update((m * unbiased_var + keep * rv.float64()).cast(rv.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class SyncBatchNorm2d(BatchNorm2d):
    """Stand-in for mmcv `build_norm_layer(dict(type='SyncBN'))` on one process (plain batch norm).

    A subclass on purpose: `initialize_weights` matches `type(m) is BatchNorm2d` exactly, so this family
    keeps eps 1e-5 / momentum 0.1 like `torch.nn.SyncBatchNorm` does in the official model.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)


def window_average(x: jt.Var, rows: Sequence[tuple[int, int]], cols: Sequence[tuple[int, int]]) -> jt.Var:
    """Mean of `x` [N, C, H, W] over the windows rows[i] x cols[j] (half-open [start, end) pairs), differentiable.

    Gathers every window with one reindex (cells beyond a short window read 0), sums it and divides by the
    window height and width, as torch's CPU adaptive pooling does (`sum / kh / kw`). The window bounds are exact
    integers computed in Python.
    """
    n, c = x.shape[0], x.shape[1]
    dtype = str(x.dtype)
    max_h = max(e - s for s, e in rows)
    max_w = max(e - s for s, e in cols)
    start_h = jt.array(np.array([s for s, _ in rows], dtype=np.int32))
    len_h = jt.array(np.array([e - s for s, e in rows], dtype=np.int32))
    start_w = jt.array(np.array([s for s, _ in cols], dtype=np.int32))
    len_w = jt.array(np.array([e - s for s, e in cols], dtype=np.int32))
    windows = x.reindex(
        [n, c, len(rows), len(cols), max_h, max_w],
        ["i0", "i1", "@e0(i2)+i4", "@e2(i3)+i5"],
        extras=[start_h, len_h, start_w, len_w],
        overflow_conditions=["i4>=@e1(i2)", "i5>=@e3(i3)"],
        overflow_value=0,
    )
    kh = jt.array(np.array([e - s for s, e in rows], dtype=np.float64), dtype).reshape(1, 1, -1, 1).stop_grad()
    kw = jt.array(np.array([e - s for s, e in cols], dtype=np.float64), dtype).reshape(1, 1, 1, -1).stop_grad()
    return windows.sum(dims=[4, 5]) / kh / kw


def adaptive_windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows [floor(i*n/o), ceil((i+1)*n/o)), in exact integer arithmetic."""
    return [((i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)) for i in range(size_out)]


def adaptive_avg_pool2d(x: jt.Var, output_size: Sequence[int]) -> jt.Var:
    """`torch.nn.functional.adaptive_avg_pool2d`: windows [floor(i*H/o), ceil((i+1)*H/o)).

    Neither Jittor alternative is exact: `nn.AdaptiveAvgPool2d` is the fixed-kernel (onnx) pool, and
    `nn.resize(mode='area')` computes the window bounds in float32 (`(i+1)*h/H` rounds above an exact integer,
    e.g. the last window of 125 -> 63 takes a third, zero cell: 82.3 instead of 123.5 on an arange). The windows
    are therefore computed here in integer arithmetic and averaged explicitly.
    """
    out_h, out_w = int(output_size[0]), int(output_size[1])
    _, _, h, w = x.shape
    if (h, w) == (out_h, out_w):
        return x
    return window_average(x, adaptive_windows(h, out_h), adaptive_windows(w, out_w))


class MaxPool2d(nn.Module):
    """`torch.nn.MaxPool2d(kernel_size, stride, padding)`, also for maps not larger than the kernel.

    Jittor's pool raises when H or W <= kernel_size; padding with -inf explicitly first gives torch's result
    (the padded cells never win the max, and the gradient goes to the first maximum as in torch). The pool is
    called functionally so that no extra child module appears in `named_modules()`.
    """

    def __init__(self, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    def execute(self, x: jt.Var) -> jt.Var:
        _, _, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if h > k and w > k:
            return pool.max_pool2d(x, k, stride=s, padding=p)
        padded = nn.pad(x, (p, p, p, p), mode="constant", value=-math.inf)
        return pool.max_pool2d(padded, k, stride=s, padding=0)


class _ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> ``act_type`` (padding ``kernel_size // 2`` unless given): the body that yolov6's
    `Conv` and `SimConv` and gold_yolo's `Conv` share. They stay separate types, as in the official code, because
    `fuse_model` and `initialize_weights` test exact types."""

    act_type: type = nn.SiLU

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1,
                 bias: bool = False, padding: int | None = None) -> None:
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, groups=groups, bias=bias)
        self.bn = BatchNorm2d(out_channels)
        self.act = self.act_type()

    def execute(self, x: jt.Var) -> jt.Var:
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
    """Rep-style cell: `Sequential(conv=Conv2d(bias=False), bn=BatchNorm2d)`.

    Children go through `add_module` (into `layers`): a module set as a plain attribute of a Jittor Sequential
    would be invisible to `parameters()`.
    """
    result = nn.Sequential()
    result.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                        padding=padding, groups=groups, bias=False))
    result.add_module("bn", BatchNorm2d(num_features=out_channels))
    return result


class RepVGGBlock(nn.Module):
    """RepVGG block: ReLU(3x3 conv_bn + 1x1 conv_bn + identity BN); `switch_to_deploy` fuses to one 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, padding_mode: str = "zeros",
                 deploy: bool = False, use_se: bool = False) -> None:
        self.deploy = deploy
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        assert kernel_size == 3 and padding == 1
        assert padding_mode == "zeros"  # Jittor's Conv2d has no padding_mode
        padding_11 = padding - kernel_size // 2
        self.nonlinearity = nn.ReLU()
        if use_se:
            raise NotImplementedError("se block not supported")
        self.se = nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                         groups, bias=True)
        else:
            self.rbr_identity = (BatchNorm2d(num_features=in_channels)
                                 if out_channels == in_channels and stride == 1 else None)
            self.rbr_dense = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups)
            self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, padding_11, groups)

    def execute(self, inputs: jt.Var) -> jt.Var:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.se(self.rbr_reparam(inputs)))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.nonlinearity(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out))

    def get_equivalent_kernel_bias(self) -> tuple[jt.Var, jt.Var]:
        """Fused 3x3 kernel and bias of the three branches (uses BN running statistics)."""
        k3, b3 = self._fuse_bn_tensor(self.rbr_dense)
        k1, b1 = self._fuse_bn_tensor(self.rbr_1x1)
        kid, bid = self._fuse_bn_tensor(self.rbr_identity)
        return k3 + self._pad_1x1_to_3x3_tensor(k1) + kid, b3 + b1 + bid

    @staticmethod
    def _pad_1x1_to_3x3_tensor(kernel1x1: jt.Var | int) -> jt.Var | int:
        if isinstance(kernel1x1, int):
            return 0
        return nn.pad(kernel1x1, [1, 1, 1, 1])

    def _fuse_bn_tensor(self, branch: nn.Module | None) -> tuple[jt.Var | int, jt.Var | int]:
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            kernel, bn = branch.conv.weight, branch.bn
        else:
            assert isinstance(branch, BatchNorm2d)
            input_dim = self.in_channels // self.groups
            kernel_value = np.zeros((self.in_channels, input_dim, 3, 3), dtype=np.float64)
            for i in range(self.in_channels):
                kernel_value[i, i % input_dim, 1, 1] = 1
            # NOTE: not kept as `self.id_tensor` (torch caches it): a Var attribute would become a parameter
            kernel, bn = jt.array(kernel_value, str(branch.weight.dtype)), branch
        std = jt.sqrt(bn.running_var + scalar_like(bn.eps, bn.running_var))
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    def switch_to_deploy(self) -> None:
        """Replace the branches by `rbr_reparam` (3x3 conv with bias); exact only for the eval-mode block."""
        if hasattr(self, "rbr_reparam"):
            return
        with jt.no_grad():
            kernel, bias = self.get_equivalent_kernel_bias()
        c = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(c.in_channels, c.out_channels, kernel_size=c.kernel_size, stride=c.stride,
                                     padding=c.padding, dilation=c.dilation, groups=c.groups, bias=True)
        self.rbr_reparam.weight = kernel.detach()
        self.rbr_reparam.bias = bias.detach()
        # torch's `para.detach_()` on a leaf sets requires_grad=False: the deployed conv is frozen there too
        for para in self.parameters():
            para.stop_grad()
        self.__delattr__("rbr_dense")
        self.__delattr__("rbr_1x1")
        if hasattr(self, "rbr_identity"):
            self.__delattr__("rbr_identity")
        self.deploy = True


class ConvWrapper(nn.Module):
    """`training_mode='conv_silu'` block: `block = Conv(k=3, bias=True)`.

    # faithful: conv bias=True followed by BN (the bias is mathematically dead in train mode)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        self.block = Conv(in_channels, out_channels, kernel_size, stride, groups, bias)

    def execute(self, x: jt.Var) -> jt.Var:
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
        self.conv1 = basic_block(in_channels, out_channels)
        self.conv2 = basic_block(out_channels, out_channels)
        self.shortcut = in_channels == out_channels
        if weight:
            self.alpha = jt.ones((1,), "float32")
        else:
            self.alpha = 1.0

    def execute(self, x: jt.Var) -> jt.Var:
        outputs = self.conv2(self.conv1(x))
        return outputs + self.alpha * x if self.shortcut else outputs


class RepBlock(nn.Module):
    """Stage of `n` rep-style blocks (or n//2 BottleReps when `block is BottleRep`)."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1,
                 block: Callable[..., nn.Module] = RepVGGBlock,
                 basic_block: Callable[..., nn.Module] = RepVGGBlock) -> None:
        # faithful: the official code always builds the plain stage first and, for BottleRep, rebuilds it
        self.conv1 = block(in_channels, out_channels)
        self.block = nn.Sequential(*(block(out_channels, out_channels) for _ in range(n - 1))) if n > 1 else None
        if block is BottleRep:
            self.conv1 = BottleRep(in_channels, out_channels, basic_block=basic_block, weight=True)
            n = n // 2
            self.block = (nn.Sequential(*(BottleRep(out_channels, out_channels, basic_block=basic_block,
                                                    weight=True) for _ in range(n - 1))) if n > 1 else None)

    def execute(self, x: jt.Var) -> jt.Var:
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
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = BatchNorm2d(c2)
        self.act = nn.ReLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def execute(self, x: jt.Var) -> jt.Var:
        if not hasattr(self, "bn"):  # after fuse_model
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class BepC3(nn.Module):
    """Beer-mug RepC3: `cv3(cat(m(cv1(x)), cv2(x)))` with `m` a RepBlock of BottleReps."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, e: float = 0.5, concat: bool = True,
                 block: Callable[..., nn.Module] = RepVGGBlock) -> None:
        c_ = int(out_channels * e)
        self.cv1 = Conv_C3(in_channels, c_, 1, 1)
        self.cv2 = Conv_C3(in_channels, c_, 1, 1)
        self.cv3 = Conv_C3(2 * c_, out_channels, 1, 1)
        if block is ConvWrapper:
            # faithful: rebuilt with SiLU for conv_silu
            self.cv1 = Conv_C3(in_channels, c_, 1, 1, act=nn.SiLU())
            self.cv2 = Conv_C3(in_channels, c_, 1, 1, act=nn.SiLU())
            self.cv3 = Conv_C3(2 * c_, out_channels, 1, 1, act=nn.SiLU())
        self.m = RepBlock(in_channels=c_, out_channels=c_, n=n, block=BottleRep, basic_block=block)
        self.concat = concat
        if not concat:
            self.cv3 = Conv_C3(c_, out_channels, 1, 1)

    def execute(self, x: jt.Var) -> jt.Var:
        if self.concat:
            return self.cv3(jt.concat((self.m(self.cv1(x)), self.cv2(x)), dim=1))
        return self.cv3(self.m(self.cv1(x)))


class SimSPPF(nn.Module):
    """Simplified SPPF with ReLU (SimConv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, conv: type = SimConv) -> None:
        c_ = in_channels // 2
        self.cv1 = conv(in_channels, c_, 1, 1)
        self.cv2 = conv(c_ * 4, out_channels, 1, 1)
        self.m = MaxPool2d(kernel_size=kernel_size, stride=1, padding=kernel_size // 2)

    def execute(self, x: jt.Var) -> jt.Var:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(jt.concat([x, y1, y2, self.m(y2)], 1))


class SPPF(SimSPPF):
    """SPPF with SiLU (`Conv`); used by the backbone when the block is ConvWrapper (L)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, conv=Conv)


class SimCSPSPPF(nn.Module):
    """CSP version of SimSPPF (ReLU, SimConv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, e: float = 0.5,
                 conv: type = SimConv) -> None:
        c_ = int(out_channels * e)
        self.cv1 = conv(in_channels, c_, 1, 1)
        self.cv2 = conv(in_channels, c_, 1, 1)
        self.cv3 = conv(c_, c_, 3, 1)
        self.cv4 = conv(c_, c_, 1, 1)
        self.m = MaxPool2d(kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
        self.cv5 = conv(4 * c_, c_, 1, 1)
        self.cv6 = conv(c_, c_, 3, 1)
        self.cv7 = conv(2 * c_, out_channels, 1, 1)

    def execute(self, x: jt.Var) -> jt.Var:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y0 = self.cv2(x)
        y1 = self.m(x1)
        y2 = self.m(y1)
        y3 = self.cv6(self.cv5(jt.concat([x1, y1, y2, self.m(y2)], 1)))
        return self.cv7(jt.concat((y0, y3), dim=1))


class CSPSPPF(SimCSPSPPF):
    """CSP SPPF with SiLU (`Conv`); chosen with cspsppf=True and a ConvWrapper block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, e: float = 0.5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, e, conv=Conv)


def fuse_conv_and_bn(conv: nn.Conv2d, bn: BatchNorm2d) -> nn.Conv2d:
    """Official `fuse_conv_and_bn`: fold eval-mode BN into the conv (new conv with bias, no grad)."""
    fusedconv = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, groups=conv.groups, bias=True)
    with jt.no_grad():
        dtype = str(conv.weight.dtype)
        w_conv = conv.weight.reshape(conv.out_channels, -1)
        scale = bn.weight / jt.sqrt(bn.running_var + scalar_like(bn.eps, bn.running_var))
        # torch multiplies by diag(scale); a row scaling is the same arithmetic (the extra terms are exact 0s)
        fused_w = (scale.reshape(-1, 1) * w_conv).reshape(conv.weight.shape)
        b_conv = jt.zeros((conv.out_channels,), dtype) if conv.bias is None else conv.bias
        b_bn = bn.bias - bn.weight * bn.running_mean / jt.sqrt(bn.running_var + scalar_like(bn.eps, bn.running_var))
        fused_b = scale * b_conv + b_bn
    fusedconv.weight = fused_w.detach().stop_grad()
    fusedconv.bias = fused_b.detach().stop_grad()
    return fusedconv
