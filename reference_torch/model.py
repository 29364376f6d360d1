"""GOLD-YOLO model (official `yolov6/models/yolo.py`), builders, deploy conversion and parameter counts.

Paper: "Gold-YOLO: Efficient Object Detector via Gather-and-Distribute Mechanism" (NeurIPS 2023).
Origin: huawei-noah/Efficient-Computing, Detection/Gold-YOLO @ 225ddd2 (re-implemented from the spec).

`Model.forward` returns exactly what the official one does: `[head_out, featmaps]`, with head_out
`(feats, pred_scores, pred_distri)` in train mode and a [B, N, 5+nc] tensor in eval mode.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .backbone import CSPBepBackbone, EfficientRep
from .configs import GoldYOLOConfig, get_config, scale_config
from .head import Detect, build_effidehead_layer
from .layers import Conv, Conv_C3, RepVGGBlock, SimConv, SyncBatchNorm2d, fuse_conv_and_bn, get_block
from .neck import GDNeck, GDNeck2, RepGDNeck

_BACKBONES: dict[str, type[nn.Module]] = {"EfficientRep": EfficientRep, "CSPBepBackbone": CSPBepBackbone}
_NECKS: dict[str, type[nn.Module]] = {"RepGDNeck": RepGDNeck, "GDNeck": GDNeck, "GDNeck2": GDNeck2}


def build_network(cfg: GoldYOLOConfig, channels: int = 3) -> tuple[nn.Module, nn.Module, Detect]:
    """Backbone, neck and plain EffiDeHead in the official construction order."""
    num_repeat, channels_list = scale_config(cfg)
    block: Callable[..., nn.Module] = get_block(cfg.training_mode)
    backbone_cls, neck_cls = _BACKBONES[cfg.backbone_type], _NECKS[cfg.neck_type]
    if "CSP" in cfg.backbone_type:
        backbone = backbone_cls(in_channels=channels, channels_list=channels_list, num_repeats=num_repeat,
                                block=block, csp_e=cfg.backbone_csp_e, fuse_P2=cfg.fuse_P2, cspsppf=cfg.cspsppf)
        neck = neck_cls(channels_list=channels_list, num_repeats=num_repeat, block=block, csp_e=cfg.neck_csp_e,
                        extra_cfg=cfg.extra_cfg)
    else:
        backbone = backbone_cls(in_channels=channels, channels_list=channels_list, num_repeats=num_repeat,
                                block=block, fuse_P2=cfg.fuse_P2, cspsppf=cfg.cspsppf)
        neck = neck_cls(channels_list=channels_list, num_repeats=num_repeat, block=block, extra_cfg=cfg.extra_cfg)
    head_layers = build_effidehead_layer(channels_list, 1, cfg.num_classes, reg_max=cfg.reg_max,
                                         num_layers=cfg.num_layers)
    # faithful: Detect gets no reg_max (stays 16 for proj/proj_conv); the pred convs use cfg.reg_max
    head = Detect(cfg.num_classes, cfg.num_layers, head_layers=head_layers, use_dfl=cfg.use_dfl)
    return backbone, neck, head


def initialize_weights(model: nn.Module) -> None:
    """Official `initialize_weights`: exact-type BatchNorm2d -> eps 1e-3 / momentum 0.03; in-place activations.

    Conv2d keeps PyTorch's default init. The SyncBN family (`SyncBatchNorm2d`, a subclass) keeps 1e-5 / 0.1.
    """
    for m in model.modules():
        t = type(m)
        if t is nn.Conv2d:
            pass
        elif t is nn.BatchNorm2d:  # faithful: exact type test -> two BN families (1e-3/0.03 vs SyncBN 1e-5/0.1)
            m.eps = 1e-3
            m.momentum = 0.03
        elif t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU):
            m.inplace = True


class Model(nn.Module):
    """GOLD-YOLO detector: backbone -> neck -> detect. `cfg` holds the resolved configuration."""

    export = False

    def __init__(self, cfg: GoldYOLOConfig, channels: int = 3) -> None:
        super().__init__()
        self.cfg = cfg  # frozen dataclass: num_classes, use_dfl, reg_max, iou_type, strides, ...
        self.backbone, self.neck, self.detect = build_network(cfg, channels)
        self.stride = self.detect.stride
        self.detect.initialize_biases()
        initialize_weights(self)

    def forward(self, x: Tensor) -> list:
        x = self.backbone(x)
        x = self.neck(x)
        featmaps = list(x)  # copied before the head overwrites x[i] with the stem outputs
        return [self.detect(x), featmaps]

    def _apply(self, fn: Callable, *args: object, **kwargs: object) -> "Model":
        self = super()._apply(fn, *args, **kwargs)
        self.detect.stride = fn(self.detect.stride)
        self.detect.grid = list(map(fn, self.detect.grid))
        return self


def build_model(name: str, num_classes: int = 80, use_dfl: bool | None = None, reg_max: int | None = None,
                iou_type: str | None = None, drop_path_rate: float | None = None,
                training_mode: str | None = None) -> Model:
    """Build `gold_yolo-{n,s,m,l}`; `None` keeps the shipped config value. Seed before calling for a fixed init."""
    cfg = get_config(name, num_classes=num_classes, use_dfl=use_dfl, reg_max=reg_max, iou_type=iou_type,
                     drop_path_rate=drop_path_rate, training_mode=training_mode)
    return Model(cfg)


def _convert_syncbn(module: nn.Module) -> nn.Module:
    """SyncBN family -> plain nn.BatchNorm2d with the same eps/momentum/affine values and statistics."""
    if type(module) is SyncBatchNorm2d:
        bn = nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                            affine=module.affine, track_running_stats=module.track_running_stats)
        bn = bn.to(device=module.weight.device, dtype=module.weight.dtype)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, _convert_syncbn(child))
    return module


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """Official `gold_yolo/switch_tool.switch_to_deploy`: SyncBN -> BN and RepVGG re-parameterisation.

    In place; uses running statistics, so the result equals the eval-mode model only.
    """
    _convert_syncbn(model)
    for layer in model.modules():
        if isinstance(layer, RepVGGBlock):
            layer.switch_to_deploy()
    return model


def fuse_model(model: nn.Module) -> nn.Module:
    """Official `fuse_model`: fold BN into yolov6 `Conv`/`SimConv`/`Conv_C3` (exact types only).

    # faithful: gold_yolo.layers.Conv (low_IFM), Conv2d_BN and ConvModule stay unfused
    """
    for m in model.modules():
        if type(m) in (Conv, SimConv, Conv_C3) and hasattr(m, "bn"):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
    return model


def count_parameters(model: nn.Module) -> dict[str, object]:
    """Parameter/buffer counts from the root, each tensor counted once (deduplicated by identity).

    Returns `total`, `trainable`, `frozen`, `tensors`, `buffers` (elements, incl. num_batches_tracked),
    `buffer_tensors`, `per_part` = {child name: {total, trainable, frozen, tensors}} and `leaf_total`: the
    parameters held by leaf modules only, which is what thop (the official `get_model_info`) reports; it
    leaves out parameters set directly on container modules (`BottleRep.alpha`, `detect.proj`).
    """
    def _count(mod: nn.Module, seen: set[int]) -> dict[str, int]:
        out = {"total": 0, "trainable": 0, "frozen": 0, "tensors": 0}
        for p in mod.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            out["total"] += p.numel()
            out["trainable" if p.requires_grad else "frozen"] += p.numel()
            out["tensors"] += 1
        return out

    result: dict[str, object] = dict(_count(model, set()))
    bufs = {id(b): b for b in model.buffers()}
    result["buffers"] = sum(b.numel() for b in bufs.values())
    result["buffer_tensors"] = len(bufs)
    leaf_seen: set[int] = set()
    result["leaf_total"] = sum(_count(m, leaf_seen)["total"] for m in model.modules() if not list(m.children()))
    part_seen: set[int] = set()
    result["per_part"] = {name: _count(child, part_seen) for name, child in model.named_children()}
    return result
