"""The Jittor port of GOLD-YOLO (N/S/M/L): a file-for-file mirror of reference_torch.

Public entry points: build_model, build_loss, train_step, load_torch_state_dict. Attributes load lazily so that importing the
package stays cheap and each file can be used on its own.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "model",
    "Model": "model",
    "switch_to_deploy": "model",
    "build_loss": "loss",
    "ComputeLoss": "loss",
    "train_step": "train",
    "build_optimizer": "train",
    "generate_anchors": "anchors",
    "load_torch_state_dict": "weights",
    "count_parameters": "model",
    "fuse_model": "model",
    "get_config": "configs",
    "set_train_mode": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
