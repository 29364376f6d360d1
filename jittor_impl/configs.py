"""GOLD-YOLO size configurations for the Jittor port: the same data as reference_torch/configs.py.

The configs are framework-free frozen dataclasses, so both ports share one source of truth instead of two
copies that could drift; this module re-exports them under the mirrored file name. Importing it loads neither
torch nor jittor.
"""
from __future__ import annotations

from reference_torch.configs import (VARIANTS, GoldYOLOConfig, NeckExtraCfg, get_config, make_divisible,
                                     scale_config)

__all__ = ["VARIANTS", "GoldYOLOConfig", "NeckExtraCfg", "get_config", "make_divisible", "scale_config"]
