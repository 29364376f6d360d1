"""GOLD-YOLO size configurations (official `configs/gold_yolo-{n,s,m,l}.py`) and the scaling builder.

Sizes are data: each variant is a frozen `GoldYOLOConfig`; `scale_config` applies the depth/width
multiples exactly like `yolov6/models/yolo.py: build_network`. `extra_cfg` dimensions are absolute
(never scaled by the width multiple).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NeckExtraCfg:
    """`model.neck.extra_cfg` of the official configs (absolute widths)."""

    depths: int  # number of top_Blocks in high_IFM
    fusion_in: int  # low_FAM output channels = c2+c3+c4+c5
    fuse_block_num: int  # rep blocks inside low_IFM
    embed_dim_p: int  # low_IFM hidden width
    embed_dim_n: int  # high_FAM output channels = p3+p4+c5
    key_dim: int
    num_heads: int
    mlp_ratios: float
    attn_ratios: float
    c2t_stride: int  # PyramidPoolAgg stride
    drop_path_rate: float
    trans_channels: tuple[int, int, int, int]  # split sizes of low_IFM / conv_1x1_n outputs
    pool_mode: str = "torch"  # 'torch' (adaptive_avg_pool2d) or 'onnx' (fixed-kernel AvgPool2d)
    norm_cfg_type: str = "SyncBN"  # the transformer/inject norms (eps 1e-5, momentum 0.1)
    # fusion_act / ppa_in exist in the config files but are unused by the code.


@dataclass(frozen=True)
class GoldYOLOConfig:
    """One GOLD-YOLO variant; field names follow the official config keys."""

    name: str
    depth_multiple: float
    width_multiple: float
    backbone_type: str  # 'EfficientRep' | 'CSPBepBackbone'
    backbone_num_repeats: tuple[int, ...]
    backbone_out_channels: tuple[int, ...]
    fuse_P2: bool
    cspsppf: bool
    backbone_csp_e: float  # only used by CSPBepBackbone
    neck_type: str  # 'RepGDNeck' | 'GDNeck' | 'GDNeck2'
    neck_num_repeats: tuple[int, ...]
    neck_out_channels: tuple[int, ...]
    neck_csp_e: float  # only used by GDNeck/GDNeck2
    extra_cfg: NeckExtraCfg
    training_mode: str  # 'repvgg' -> RepVGGBlock, 'conv_silu' -> ConvWrapper
    num_classes: int = 80
    num_layers: int = 3
    strides: tuple[int, ...] = (8, 16, 32)
    iou_type: str = "giou"
    use_dfl: bool = True
    reg_max: int = 16
    atss_warmup_epoch: int = 0
    # solver (official values; the reference train loop may use them)
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1


_REPEATS = (1, 6, 12, 18, 6)
_OUTS = (64, 128, 256, 512, 1024)
_NECK_REPEATS = (12, 12, 12, 12)
_NECK_OUTS = (256, 128, 128, 256, 256, 512)


def _variant(name: str, depth: float, width: float, backbone: str, neck: str, cspsppf: bool, csp_e: float,
             neck_widths: tuple[int, int, int, tuple[int, int, int, int]], depths: int = 2, num_heads: int = 4,
             **fields: object) -> GoldYOLOConfig:
    """One shipped config from what differs between N/S/M/L; every other value is common to the four.

    ``neck_widths`` = (fusion_in, embed_dim_p, embed_dim_n, trans_channels) of ``extra_cfg``; ``fields``
    override the remaining `GoldYOLOConfig` defaults (training mode, loss settings, solver).
    """
    fusion_in, embed_dim_p, embed_dim_n, trans_channels = neck_widths
    extra = NeckExtraCfg(depths=depths, fusion_in=fusion_in, fuse_block_num=3, embed_dim_p=embed_dim_p,
                         embed_dim_n=embed_dim_n, key_dim=8, num_heads=num_heads, mlp_ratios=1, attn_ratios=2,
                         c2t_stride=2, drop_path_rate=0.1, trans_channels=trans_channels)
    settings: dict[str, object] = {"training_mode": "repvgg", "iou_type": "giou", "use_dfl": True, "reg_max": 16,
                                   **fields}
    return GoldYOLOConfig(name=name, depth_multiple=depth, width_multiple=width, backbone_type=backbone,
                          backbone_num_repeats=_REPEATS, backbone_out_channels=_OUTS, fuse_P2=True, cspsppf=cspsppf,
                          backbone_csp_e=csp_e, neck_type=neck, neck_num_repeats=_NECK_REPEATS,
                          neck_out_channels=_NECK_OUTS, neck_csp_e=csp_e, extra_cfg=extra,
                          **settings)  # type: ignore[arg-type]


# one row per size: depth/width multiples, backbone and neck types, cspsppf, csp_e, neck widths, then the rest
VARIANTS: dict[str, GoldYOLOConfig] = {cfg.name: cfg for cfg in (
    _variant("gold_yolo-n", 0.33, 0.25, "EfficientRep", "RepGDNeck", True, 0.5, (480, 96, 352, (64, 32, 64, 128)),
             iou_type="siou", use_dfl=False, reg_max=0, lr0=0.02),
    _variant("gold_yolo-s", 0.33, 0.50, "EfficientRep", "RepGDNeck", True, 0.5, (960, 128, 704, (128, 64, 128, 256))),
    _variant("gold_yolo-m", 0.60, 0.75, "CSPBepBackbone", "GDNeck", False, 2 / 3, (1440, 192, 1056, (192, 96, 192, 384))),
    _variant("gold_yolo-l", 1.0, 1.0, "CSPBepBackbone", "GDNeck2", False, 1 / 2, (1920, 192, 1408, (256, 128, 256, 512)),
             depths=3, num_heads=8, training_mode="conv_silu"),
)}


def make_divisible(x: float, divisor: int) -> int:
    """Upward revision of `x` to a multiple of `divisor` (official `make_divisible`)."""
    return math.ceil(x / divisor) * divisor


def scale_config(cfg: GoldYOLOConfig) -> tuple[list[int], list[int]]:
    """Return `(num_repeat[9], channels_list[11])` as `build_network` computes them."""
    num_repeat = [(max(round(i * cfg.depth_multiple), 1) if i > 1 else i)
                  for i in (cfg.backbone_num_repeats + cfg.neck_num_repeats)]
    channels_list = [make_divisible(i * cfg.width_multiple, 8)
                     for i in (cfg.backbone_out_channels + cfg.neck_out_channels)]
    return num_repeat, channels_list


def get_config(name: str, **overrides: object) -> GoldYOLOConfig:
    """Variant `name` ('gold_yolo-n' or just 'n') with `None`-free overrides applied.

    `drop_path_rate` is routed into `extra_cfg`; every other key must be a `GoldYOLOConfig` field.
    """
    key = name if name.startswith("gold_yolo-") else f"gold_yolo-{name}"
    if key not in VARIANTS:
        raise KeyError(f"unknown GOLD-YOLO variant {name!r}; choose from {sorted(VARIANTS)}")
    cfg = VARIANTS[key]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "drop_path_rate" in overrides:
        extra = dataclasses.replace(cfg.extra_cfg, drop_path_rate=float(overrides.pop("drop_path_rate")))
        cfg = dataclasses.replace(cfg, extra_cfg=extra)
    if "pool_mode" in overrides:
        extra = dataclasses.replace(cfg.extra_cfg, pool_mode=str(overrides.pop("pool_mode")))
        cfg = dataclasses.replace(cfg, extra_cfg=extra)
    return dataclasses.replace(cfg, **overrides)
