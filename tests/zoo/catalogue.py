"""The zoo's pairs and planted faults as data, and one function that aligns a cell.

A :class:`ZooPair` builds a torch model and its independently written Jittor port (same attribute
paths), seeded inputs at a given image size and, optionally, its own loss on both sides. A
:class:`ZooFault` names a pair, the Jittor-side fault option and where the aligner should find it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import data

__all__ = ["ZooPair", "ZooFault", "PAIRS", "FAULTS", "get_pair", "get_fault", "build", "align_cell",
           "location_matches"]


@dataclass(frozen=True)
class ZooPair:
    name: str
    model: str                       # class name, identical in torch_nets and jittor_nets
    covers: str                      # what the pair exercises (table text)
    options: dict[str, Any] = field(default_factory=dict)  # constructor options, both sides
    loss: str | None = None          # loss function name in both modules; None: the aligner's probe loss

    def inputs(self, size: int, seed: int = 0) -> tuple[list[np.ndarray], Any]:
        """(model inputs, loss targets) at ``size`` x ``size``, batch 2."""
        targets = data.det_targets(self.options.get("num_classes", 4), seed) if self.loss else None
        return [data.image(size, seed)], targets


@dataclass(frozen=True)
class ZooFault:
    name: str
    pair: str
    description: str
    expected_type: str               # FindingType value of the first error finding we expect
    expected_location: str           # module path: the finding's location must be it or below it
    size: int = 64
    jittor_options: dict[str, Any] = field(default_factory=dict)  # fault option of the Jittor model
    loss_options: dict[str, Any] = field(default_factory=dict)    # options of the Jittor loss


PAIRS: tuple[ZooPair, ...] = (
    ZooPair("conv_bn", "ConvBNStack", "5 x [Conv3x3 32ch, no bias + BN + ReLU] + pool + Linear", {"bias": False}),
    ZooPair("conv_bias_bn", "ConvBNStack", "5 x [Conv3x3 32ch with bias + BN + ReLU] + pool + Linear",
            {"bias": True}),
    ZooPair("depthwise", "DepthwiseNet", "depthwise 3x3/5x5 and grouped 1x1/3x3 convs, BN, SiLU/Hardswish/ReLU/GELU"),
    ZooPair("act_pool", "ActPoolNet", "ReLU/SiLU/Hardswish/GELU, max-pool, adaptive avg-pool to 5x5"),
    ZooPair("attention", "AttentionNet",
            "patch embedding, 2 pre-norm transformer blocks (LayerNorm, softmax attention, GELU MLP)"),
    ZooPair("fpn", "FpnNet", "strided convs, nearest and bilinear upsample + concat"),
    ZooPair("norms", "NormNet", "GroupNorm (4, 8, 1 groups), channel LayerNorm"),
    ZooPair("resnet", "ResNet", "residual basic blocks, 1x1 strided shortcut"),
    ZooPair("det_topk", "DetNet", "dense cls/box head, top-k assignment loss (BCE + L1)", {"num_classes": 4},
            loss="det_loss"),
)

FAULTS: tuple[ZooFault, ...] = (
    ZooFault("bn_eps", "conv_bn", "BatchNorm eps 1e-3 instead of 1e-5 in features.4", "mode_mismatch",
             "features.4", jittor_options={"fault": "bn_eps"}),
    ZooFault("no_residual", "resnet", "layer1.1 drops its shortcut", "forward_divergence", "layer1.1",
             jittor_options={"fault": "no_residual"}),
    ZooFault("detach_lateral", "fpn", "fuse1 detaches its lateral input (no gradient back into c1 through it)",
             "backward_divergence", "fuse1", jittor_options={"fault": "detach_lateral"}),
    ZooFault("softmax_dim", "attention", "blocks.0.attn normalises over the queries (dim -2)",
             "forward_divergence", "blocks.0.attn", jittor_options={"fault": "softmax_dim"}),
    ZooFault("align_corners", "fpn", "fuse1.up bilinear with align_corners=True", "forward_divergence",
             "fuse1.up", jittor_options={"fault": "align_corners"}),
    ZooFault("gelu_tanh", "act_pool", "b3.act uses the tanh approximation of GELU", "forward_divergence",
             "b3.act", jittor_options={"fault": "gelu_tanh"}),
    ZooFault("jittor_adaptive_pool", "act_pool", "Jittor's own AdaptiveAvgPool2d (fixed window) for 32 -> 5",
             "forward_divergence", "pool", size=128, jittor_options={"fault": "jittor_adaptive_pool"}),
    ZooFault("gn_groups", "norms", "stem.gn with 8 groups instead of 4", "forward_divergence", "stem.gn",
             jittor_options={"fault": "gn_groups"}),
    ZooFault("dw_padding", "depthwise", "depthwise conv dw.conv without padding", "shape_mismatch", "dw",
             jittor_options={"fault": "dw_padding"}),
    ZooFault("topk_k", "det_topk", "the Jittor loss selects the top 9 anchors per box instead of 10",
             "loss_divergence", "loss", loss_options={"topk": 9}),
)


def get_pair(name: str) -> ZooPair:
    for p in PAIRS:
        if p.name == name:
            return p
    raise KeyError(f"no zoo pair {name!r} (known: {', '.join(p.name for p in PAIRS)})")


def get_fault(name: str) -> ZooFault:
    for f in FAULTS:
        if f.name == name:
            return f
    raise KeyError(f"no zoo fault {name!r} (known: {', '.join(f.name for f in FAULTS)})")


def location_matches(expected: str, location: str) -> bool:
    """The finding's location is the expected module or lies below it."""
    return location == expected or location.startswith(expected + ".")


def build(pair: ZooPair, seed: int = 0, jittor_options: dict[str, Any] | None = None,
          loss_options: dict[str, Any] | None = None) -> tuple[Any, Any, tuple[Callable, Callable] | None]:
    """(torch model, Jittor model, (torch loss, Jittor loss) or None), each side seeded with ``seed``."""
    import torch  # noqa: PLC0415 - lazy: the catalogue is data until a cell runs

    from . import jittor_nets, torch_nets  # noqa: PLC0415
    import jittor as jt  # noqa: PLC0415 - after aligner.env (imported by jittor_nets)

    torch.manual_seed(seed)
    tm = getattr(torch_nets, pair.model)(**pair.options)
    jt.set_global_seed(seed)
    jm = getattr(jittor_nets, pair.model)(**pair.options, **(jittor_options or {}))
    loss = None
    if pair.loss:
        loss = (getattr(torch_nets, pair.loss),
                functools.partial(getattr(jittor_nets, pair.loss), **(loss_options or {})))
    return tm, jm, loss


def align_cell(pair: ZooPair, size: int, seed: int = 0, fault: ZooFault | None = None, **align_options: Any) -> Any:
    """``aligner.align`` on one zoo pair at one size (default mode unless ``align_options`` say otherwise)."""
    import aligner  # noqa: PLC0415

    tm, jm, loss = build(pair, seed, fault.jittor_options if fault else None, fault.loss_options if fault else None)
    inputs, targets = pair.inputs(size, seed)
    return aligner.align(tm, jm, inputs, loss=loss, targets=targets, seed=seed, **align_options)
