"""The few lines between the aligner's ``--port-loss`` contract and this port's own loss.

``build_loss(...)`` returns an object L: ``L(head, targets) -> (total, [iou, dfl, cls])`` with ``head`` in the
reference layout (feats, pred_scores, pred_distri) and ``targets`` [n, 6] rows (image, class, cx, cy, w, h);
``L.head(outputs)`` reorders this port's model outputs into that layout; ``L.assignment`` is the assigner's
last result.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
if _PACKAGE_PARENT not in sys.path:
    sys.path.insert(0, _PACKAGE_PARENT)

import numpy as np  # noqa: E402

import aligner.env  # noqa: E402,F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt  # noqa: E402

from nested_port import DEVIATIONS  # noqa: E402
from nested_port.loss import DetLoss, LossConfig  # noqa: E402


class PortLoss:
    def __init__(self, loss: DetLoss) -> None:
        self.loss = loss
        self.assignment: dict[str, jt.Var] | None = None

    @staticmethod
    def head(outputs: Any) -> tuple[list[jt.Var], jt.Var, jt.Var]:
        scores, distri, feats = outputs[:3]  # the fpn maps after them are not the loss's
        return list(feats), scores, distri

    def __call__(self, head: Any, targets: Any) -> tuple[jt.Var, list[jt.Var]]:
        feats, scores, distri = head
        rows = targets.numpy() if isinstance(targets, jt.Var) else np.asarray(targets)
        per_image = [rows[rows[:, 0] == i, 1:6] for i in range(scores.shape[0])]
        out = self.loss.compute({"scores": scores, "distri": distri, "feats": feats}, per_image)
        self.assignment = self.loss.last_assignment
        return out["total"], [out["iou"], out["dfl"], out["cls"]]


def build_loss(*, img_size: int, num_classes: int = 20, deviations: Iterable[str] = (), **_: Any) -> PortLoss:
    """The port's loss for GOLD-YOLO-N at input size ``img_size`` (no default: the ground truth is scaled by
    it); ``deviations`` may name planted ones (model-side names are ignored)."""
    deviations = list(deviations)
    unknown = [d for d in deviations if d not in DEVIATIONS]
    if unknown:
        raise ValueError(f"unknown deviations {unknown}; choose from {sorted(DEVIATIONS)}")
    cfg = LossConfig(num_classes=num_classes, img_size=img_size,
                     topk=9 if "assigner_topk" in deviations else 13,
                     weights={"cls": 1.0, "iou": 2.0 if "loss_iou_weight" in deviations else 2.5, "dfl": 0.5})
    return PortLoss(DetLoss(cfg))
