"""A user's own GOLD-YOLO loss with its own signature, and the few-line adapter the aligner's --port-loss needs.

``DetectionLoss`` stands for the loss of someone's Jittor port: it takes a dict of predictions and returns a
dict of named terms. Inside it is jittor_impl's loss (correct), with switches that plant the faults the tests
look for: another IoU weight, another TAL top-k, the targets of every image given to image 0 (a batch-indexing
bug) and a BCE without the reference's log clamp. ``make_loss`` builds the adapter: ``L(head, targets) ->
(total, items)``, ``L.assignment`` set during the call.
"""
from __future__ import annotations

from typing import Any

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
import jittor_impl
from jittor_impl import loss as jloss


class _NaiveVarifocal(jt.nn.Module):
    """VFL with the textbook BCE: no clamp of log(p) at -100, so p of exactly 0 or 1 gives inf and NaN."""

    def execute(self, pred_score: jt.Var, gt_score: jt.Var, label: jt.Var, alpha: float = 0.75,
                gamma: float = 2.0) -> jt.Var:
        weight = alpha * pred_score * pred_score * (1 - label).float32() + gt_score * label.float64()
        p, y = pred_score.float32(), gt_score.float32()
        bce = -(y * jt.log(p) + (1 - y) * jt.log(1 - p))
        return jloss.total_sum(bce.float64() * weight)


class DetectionLoss:
    """The user's loss: ``compute(preds, labels)`` with ``preds = {"feats", "cls", "box"}``."""

    def __init__(self, num_classes: int, image_size: int, iou_weight: float = 2.5, topk: int = 13,
                 images_to_first: bool = False, naive_bce: bool = False) -> None:
        self.inner = jittor_impl.build_loss("gold_yolo-n", num_classes=num_classes, img_size=image_size,
                                            warmup_epoch=0)
        self.inner.loss_weight["iou"] = iou_weight
        self.inner.formal_assigner.topk = topk
        if naive_bce:
            self.inner.varifocal_loss = _NaiveVarifocal()
        self.images_to_first = images_to_first
        self.last_assignment: dict[str, Any] | None = None
        assigner = self.inner.formal_assigner

        def tapped(*args: Any) -> Any:
            out = type(assigner).__call__(assigner, *args)
            self.last_assignment = dict(zip(("target_labels", "target_bboxes", "target_scores", "fg_mask"), out))
            return out
        self.inner.formal_assigner = tapped

    def compute(self, preds: dict[str, Any], labels: Any) -> dict[str, Any]:
        if self.images_to_first:
            labels = labels.clone()
            labels[:, 0] = 0
        total, items = self.inner((preds["feats"], preds["cls"], preds["box"]), labels, epoch_num=10, step_num=0)
        return {"total": total, "iou": items[0], "dfl": items[1], "cls": items[2]}


class PortLoss:
    """The adapter: the reference layout in, (total, [iou, dfl, cls]) out, the assignment kept."""

    def __init__(self, **options: Any) -> None:
        self.loss = DetectionLoss(**options)
        self.assignment: dict[str, Any] | None = None

    def __call__(self, head: Any, targets: Any) -> tuple[Any, list[Any]]:
        feats, scores, distri = head
        out = self.loss.compute({"feats": feats, "cls": scores, "box": distri}, targets)
        self.assignment = self.loss.last_assignment
        return out["total"], [out["iou"], out["dfl"], out["cls"]]


def make_loss(**options: Any) -> PortLoss:
    return PortLoss(**options)
