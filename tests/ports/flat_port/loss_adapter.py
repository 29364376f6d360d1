"""``--port-loss`` adapter of the flat port: the aligner's (head, targets) call in, ``detection_loss`` out.

The flat model returns a dict and its loss takes ``(outputs_dict, numpy targets, cfg)`` and returns a dict; this
adapter converts both ways and keeps the assignment of the last call for the per-image assigner comparison.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gold_yolo_flat import detection_loss, loss_config


class FlatLoss:
    """L(head, targets) -> (total, [iou, dfl, cls]) over the flat port's own loss."""

    def __init__(self, num_classes: int, img_size: int, deviations: Sequence[str]) -> None:
        self.cfg = loss_config(num_classes, img_size, deviations)
        self.assignment: dict[str, np.ndarray] | None = None

    @staticmethod
    def head(outputs: dict[str, Any]) -> tuple[list[Any], Any, Any]:
        """The model's dict -> the reference head layout (feats, pred_scores, pred_distri)."""
        return list(outputs["maps"]), outputs["scores"], outputs["boxes"]

    def __call__(self, head: Sequence[Any], targets: Any) -> tuple[Any, list[Any]]:
        feats, scores, distri = head
        rows = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
        out = detection_loss({"maps": list(feats), "scores": scores, "boxes": distri}, rows, self.cfg)
        self.assignment = out["assign"]
        return out["total"], [out["iou"], out["dfl"], out["cls"]]


def build_loss(num_classes: int = 20, img_size: int = 640, deviations: Sequence[str] = (), **_: Any) -> FlatLoss:
    return FlatLoss(num_classes, img_size, deviations)
