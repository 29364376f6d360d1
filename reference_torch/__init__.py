"""Faithful PyTorch re-implementation of the official GOLD-YOLO (N/S/M/L), loss, assigners and anchors.

Public entry points: build_model, build_loss, train_step. Attributes load lazily so that importing the
package stays cheap and each file can be used on its own.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "model",
    "Model": "model",
    "switch_to_deploy": "model",
    "fuse_model": "model",
    "count_parameters": "model",
    "get_config": "configs",
    "build_loss": "loss",
    "ComputeLoss": "loss",
    "train_step": "train",
    "build_optimizer": "train",
    "generate_anchors": "anchors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
