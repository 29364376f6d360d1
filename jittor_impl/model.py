"""GOLD-YOLO model in Jittor (mirror of reference_torch/model.py): builders, deploy conversion, parameter counts.

Paper: "Gold-YOLO: Efficient Object Detector via Gather-and-Distribute Mechanism" (NeurIPS 2023).
Origin: huawei-noah/Efficient-Computing, Detection/Gold-YOLO @ 225ddd2 (ported from reference_torch).

`Model.execute` returns exactly what the official forward does: `[head_out, featmaps]`, with head_out
`(feats, pred_scores, pred_distri)` in train mode and a [B, N, 5+nc] Var in eval mode.

Train/eval in Jittor: `model.eval()` also calls `stop_grad()` on every parameter (and `train()` restores the
recorded state), unlike torch's eval(). For eval-mode numerics that still need gradients, use
`set_train_mode(model, False)`, which only flips `is_train` on every module. All modules read
`self.training` (= `is_train`), so both ways give the same forward.
"""
from __future__ import annotations

from typing import Callable

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .backbone import CSPBepBackbone, EfficientRep
from .configs import GoldYOLOConfig, get_config, scale_config
from .head import Detect, build_effidehead_layer
from .layers import BatchNorm2d, Conv, Conv_C3, RepVGGBlock, SimConv, SyncBatchNorm2d, fuse_conv_and_bn, get_block
from .neck import GDNeck, GDNeck2, RepGDNeck

_BACKBONES: dict[str, type[nn.Module]] = {"EfficientRep": EfficientRep, "CSPBepBackbone": CSPBepBackbone}
_NECKS: dict[str, type[nn.Module]] = {"RepGDNeck": RepGDNeck, "GDNeck": GDNeck, "GDNeck2": GDNeck2}
_BUFFER_NAMES = ("running_mean", "running_var")  # the only buffers of the model (BatchNorm2d family)


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
    """Official `initialize_weights`: exact-type BatchNorm2d -> eps 1e-3 / momentum 0.03.

    Conv2d keeps the framework's default init. The SyncBN family (`SyncBatchNorm2d`, a subclass) keeps
    1e-5 / 0.1. The torch version also sets `inplace=True` on activations; Jittor's have no such flag.
    """
    for m in model.modules():
        if type(m) is BatchNorm2d:  # faithful: exact type test -> two BN families (1e-3/0.03 vs SyncBN 1e-5/0.1)
            m.eps = 1e-3
            m.momentum = 0.03


class Model(nn.Module):
    """GOLD-YOLO detector: backbone -> neck -> detect. `cfg` holds the resolved configuration."""

    export = False

    def __init__(self, cfg: GoldYOLOConfig, channels: int = 3) -> None:
        self.cfg = cfg  # frozen dataclass: num_classes, use_dfl, reg_max, iou_type, strides, ...
        self.backbone, self.neck, self.detect = build_network(cfg, channels)
        self.stride = self.detect.stride
        self.detect.initialize_biases()
        initialize_weights(self)

    def execute(self, x: jt.Var) -> list:
        x = self.backbone(x)
        x = self.neck(x)
        featmaps = list(x)  # copied before the head overwrites x[i] with the stem outputs
        return [self.detect(x), featmaps]


def build_model(name: str, num_classes: int = 80, use_dfl: bool | None = None, reg_max: int | None = None,
                iou_type: str | None = None, drop_path_rate: float | None = None,
                training_mode: str | None = None) -> Model:
    """Build `gold_yolo-{n,s,m,l}`; `None` keeps the shipped config value. Seed (jt.set_global_seed, after
    importing jittor) before calling for a fixed init; Jittor's RNG differs from torch's, so copy weights with
    `load_torch_state_dict` for parity."""
    cfg = get_config(name, num_classes=num_classes, use_dfl=use_dfl, reg_max=reg_max, iou_type=iou_type,
                     drop_path_rate=drop_path_rate, training_mode=training_mode)
    return Model(cfg)


def set_train_mode(model: nn.Module, training: bool = True) -> nn.Module:
    """Set `is_train` on every module without touching `stop_grad` (unlike Jittor's `eval()`)."""
    for m in model.modules():
        m.is_train = training
    return model


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Direct child modules (Sequential keeps them in `layers`, other modules as attributes)."""
    if isinstance(module, nn.Sequential):
        return list(module.layers.items())
    return [(k, v) for k, v in module.__dict__.items() if isinstance(v, nn.Module)]


def _set_child(module: nn.Module, name: str, child: nn.Module) -> None:
    if isinstance(module, nn.Sequential):
        module.layers[name] = child
    else:
        setattr(module, name, child)


def _convert_syncbn(module: nn.Module) -> nn.Module:
    """SyncBN family -> plain BatchNorm2d with the same eps/momentum values and statistics."""
    if type(module) is SyncBatchNorm2d:
        bn = BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum)
        for key in ("weight", "bias", "running_mean", "running_var"):
            setattr(bn, key, getattr(module, key).detach())  # new stop-grad leaf, same value and dtype
        for key in ("weight", "bias"):
            if not getattr(module, key).is_stop_grad():
                getattr(bn, key).start_grad()
        bn.is_train = module.training
        return bn
    for name, child in _children(module):
        _set_child(module, name, _convert_syncbn(child))
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


def _named_vars(module: nn.Module) -> list[tuple[nn.Module, str, jt.Var]]:
    """Every (owner, attribute, Var) that Jittor treats as a parameter: Var attributes not starting with '_'."""
    out = []
    for _, m in module.named_modules():
        for k, v in m.__dict__.items():
            if isinstance(v, jt.Var) and not k.startswith("_"):
                out.append((m, k, v))
    return out


def _is_buffer(owner: nn.Module, key: str) -> bool:
    return isinstance(owner, BatchNorm2d) and key in _BUFFER_NAMES


def count_parameters(model: nn.Module) -> dict[str, object]:
    """Parameter/buffer counts from the root, each Var counted once (deduplicated by identity).

    Same keys and meaning as reference_torch's: `total`, `trainable`, `frozen`, `tensors`, `buffers`,
    `buffer_tensors`, `per_part` = {child name: {total, trainable, frozen, tensors}} and `leaf_total` (parameters
    of leaf modules only, what thop reports). Jittor specifics: `parameters()` also returns the BN running stats,
    which are counted here as buffers, not parameters; trainable means "not stop_grad", so count before
    `model.eval()` (which stop_grads everything); Jittor has no `num_batches_tracked`, so `buffers` and
    `buffer_tensors` are smaller than torch's by one element / tensor per BN layer.
    """
    def _count(mod: nn.Module, seen: set[int]) -> dict[str, int]:
        out = {"total": 0, "trainable": 0, "frozen": 0, "tensors": 0}
        for owner, key, p in _named_vars(mod):
            if _is_buffer(owner, key) or id(p) in seen:
                continue
            seen.add(id(p))
            out["total"] += p.numel()
            out["frozen" if p.is_stop_grad() else "trainable"] += p.numel()
            out["tensors"] += 1
        return out

    result: dict[str, object] = dict(_count(model, set()))
    bufs = {id(v): v for owner, key, v in _named_vars(model) if _is_buffer(owner, key)}
    result["buffers"] = sum(b.numel() for b in bufs.values())
    result["buffer_tensors"] = len(bufs)
    leaf_seen: set[int] = set()
    leaves = [m for _, m in model.named_modules() if not _children(m)]
    result["leaf_total"] = sum(_count(m, leaf_seen)["total"] for m in leaves)
    part_seen: set[int] = set()
    result["per_part"] = {name: _count(child, part_seen) for name, child in _children(model)}
    return result
