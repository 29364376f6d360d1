"""Port "C"'s own training loss: ``Criterion(cfg)(scores, dists, anchors, gt) -> (loss, parts)``.

VFL classification + SIoU box loss (GOLD-YOLO-N: no DFL) with a task-aligned assigner written in numpy (the
assignment carries no gradient). ``build_loss`` is the adapter of the ``--port-loss`` contract: it turns the
reference layout (feats, scores, distri) and the [n, 6] targets into this criterion's arguments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import aligner.env  # noqa: F401  (Jittor's process environment, when this port is imported on its own)
import jittor as jt

STRIDES = (8, 16, 32)
EPS = 1e-9


@dataclass
class LossConfig:
    num_classes: int = 20
    img_size: int | None = None  # None: the stride-8 map times 8
    topk: int = 13
    alpha: float = 1.0  # TAL: score ** alpha * IoU ** beta
    beta: float = 6.0
    weights: dict[str, float] = field(default_factory=lambda: {"cls": 1.0, "iou": 2.5, "dfl": 0.5})
    angle_shift: float = math.pi / 2  # SIoU angle cost: cos(2 * asin(sin_alpha) - angle_shift)


def make_anchors(shapes: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Anchor centres in pixels [A, 2] and their strides [A, 1], level-major and row-major."""
    points, strides = [], []
    for (h, w), s in zip(shapes, STRIDES):
        ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
        points.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((h * w, 1), s, dtype=np.float64))
    return {"points": np.concatenate(points).astype(np.float32), "strides": np.concatenate(strides).astype(np.float32)}


def pad_targets(targets: np.ndarray, batch: int, img_size: int) -> np.ndarray:
    """[n, 6] (image, class, cx, cy, w, h normalised) -> [B, G, 5] (class, x1, y1, x2, y2 px), class -1 padding."""
    per_image = [[r[1:] for r in targets if int(r[0]) == b] for b in range(batch)]
    g = max(1, max(len(rows) for rows in per_image))
    gt = np.zeros((batch, g, 5), dtype=np.float64)
    gt[:, :, 0] = -1
    for b, rows in enumerate(per_image):
        for i, (c, cx, cy, w, h) in enumerate(np.asarray(rows, dtype=np.float64).reshape(-1, 5)):
            cx, cy, w, h = cx * img_size, cy * img_size, w * img_size, h * img_size
            x1, y1 = cx - w * 0.5, cy - h * 0.5
            gt[b, i] = (c, x1, y1, x1 + w, y1 + h)  # x2 = x1 + w, the official rounding
    return gt


def assign(scores: np.ndarray, boxes: np.ndarray, points: np.ndarray, gt: np.ndarray, cfg: LossConfig
           ) -> dict[str, np.ndarray]:
    """Task-aligned assignment. scores [B, A, nc], boxes [B, A, 4] px, points [A, 2] px, gt [B, G, 5]."""
    bsz, n_anchor, nc = scores.shape
    labels, gboxes = gt[..., 0].astype(np.int64), gt[..., 1:]
    valid = gboxes.sum(-1) > 0  # [B, G]
    # IoU of every GT with every prediction [B, G, A] (eps added to the union)
    lt = np.maximum(gboxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = np.minimum(gboxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_g = np.clip(gboxes[..., 2:] - gboxes[..., :2], 0, None).prod(-1)[:, :, None]
    area_p = np.clip(boxes[..., 2:] - boxes[..., :2], 0, None).prod(-1)[:, None, :]
    iou = inter / (area_g + area_p - inter + EPS)
    cls_score = np.take_along_axis(scores.transpose(0, 2, 1), labels[:, :, None] % nc, axis=1)  # [B, G, A]
    metric = cls_score.astype(np.float64) ** cfg.alpha * iou ** cfg.beta
    d = np.concatenate([points[None, None] - gboxes[:, :, None, :2], gboxes[:, :, None, 2:] - points[None, None]], -1)
    inside = (d.min(-1) > EPS).astype(np.float64)
    ranked = np.argsort(-(metric * inside), axis=-1, kind="stable")[..., :cfg.topk]
    top = np.zeros_like(metric)
    np.put_along_axis(top, ranked, 1.0, axis=-1)
    pos = top * inside * valid[:, :, None]
    # an anchor claimed by several GTs keeps the one it overlaps most
    claims = pos.sum(1)
    multi = claims > 1
    if multi.any():
        best = np.eye(pos.shape[1])[iou.argmax(1)].transpose(0, 2, 1)  # [B, G, A]
        pos = np.where(multi[:, None, :], best, pos)
    fg = pos.sum(1) > 0
    gt_idx = pos.argmax(1)  # [B, A]
    t_labels = np.take_along_axis(labels, gt_idx, 1)
    t_boxes = np.take_along_axis(gboxes, gt_idx[..., None].repeat(4, -1), 1)
    t_labels = np.where(t_labels < 0, 0, t_labels)
    t_scores = np.eye(nc)[t_labels] * fg[..., None]
    metric = metric * pos
    norm = (metric * (iou * pos).max(-1, keepdims=True) / (metric.max(-1, keepdims=True) + EPS)).max(1)
    return {"target_labels": t_labels, "target_bboxes": t_boxes, "target_scores": t_scores * norm[..., None],
            "fg_mask": fg}


def siou_loss(pred: jt.Var, target: jt.Var, angle_shift: float, eps: float = 1e-10) -> jt.Var:
    """1 - SIoU of matched xyxy boxes [P, 4] -> [P] (eps on heights and union, as in YOLOv6)."""
    px1, py1, px2, py2 = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    tx1, ty1, tx2, ty2 = target[:, 0], target[:, 1], target[:, 2], target[:, 3]
    inter = (jt.minimum(px2, tx2) - jt.maximum(px1, tx1)).clamp(min_v=0) * \
        (jt.minimum(py2, ty2) - jt.maximum(py1, ty1)).clamp(min_v=0)
    w1, h1 = px2 - px1, py2 - py1 + eps
    w2, h2 = tx2 - tx1, ty2 - ty1 + eps
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = jt.maximum(px2, tx2) - jt.minimum(px1, tx1)
    ch = jt.maximum(py2, ty2) - jt.minimum(py1, ty1)
    dx = (tx1 + tx2 - px1 - px2) * 0.5 + eps
    dy = (ty1 + ty2 - py1 - py2) * 0.5 + eps
    sigma = jt.sqrt(dx * dx + dy * dy)
    sin_x, sin_y = jt.abs(dx) / sigma, jt.abs(dy) / sigma
    sin_alpha = jt.ternary(sin_x > math.sqrt(2) / 2, sin_y, sin_x)
    angle = jt.cos(jt.asin(sin_alpha) * 2 - angle_shift)
    gamma = angle - 2
    distance = 2 - jt.exp(gamma * (dx / cw) ** 2) - jt.exp(gamma * (dy / ch) ** 2)
    om_w = jt.abs(w1 - w2) / jt.maximum(w1, w2)
    om_h = jt.abs(h1 - h2) / jt.maximum(h1, h2)
    shape = (1 - jt.exp(-om_w)) ** 4 + (1 - jt.exp(-om_h)) ** 4
    return 1 - (iou - 0.5 * (distance + shape))


class TorchBCE(jt.Function):
    """torch's binary cross-entropy on probabilities: logs clamped at -100 and the gradient
    (p - q) / max(p (1 - p), 1e-12), finite at saturated p (the clamped log's own derivative is not)."""

    def execute(self, p: jt.Var, q: jt.Var) -> jt.Var:
        self.p, self.q = p, q
        return -(q * jt.log(p).clamp(min_v=-100.0) + (1 - q) * jt.log(1 - p).clamp(min_v=-100.0))

    def grad(self, g: jt.Var) -> tuple[jt.Var, None]:
        p, q = self.p, self.q
        return g * (p - q) / ((1 - p) * p).clamp(min_v=1e-12), None


def varifocal(p: jt.Var, q: jt.Var, label: jt.Var, alpha: float = 0.75, gamma: float = 2.0) -> jt.Var:
    """Varifocal loss on probabilities, summed (the weight is not detached, as in YOLOv6)."""
    weight = alpha * p ** gamma * (1 - label) + q * label
    return (TorchBCE()(p, q) * weight).sum()


class Criterion:
    """``(scores [B,A,nc] probabilities, dists [B,A,4] grid units, anchors {points, strides}, gt [B,G,5] px)``
    -> (total loss, parts with the weighted ``iou`` / ``dfl`` / ``cls`` terms and the ``assignment``)."""

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def __call__(self, scores: jt.Var, dists: jt.Var, anchors: dict[str, np.ndarray], gt: np.ndarray
                 ) -> tuple[jt.Var, dict[str, Any]]:
        cfg, (bsz, n_anchor, nc) = self.cfg, scores.shape
        points, strides = anchors["points"], anchors["strides"]
        grid = jt.array(points / strides)
        boxes = jt.concat([grid - dists[..., :2], grid + dists[..., 2:]], -1)  # xyxy, grid units
        a = assign(scores.numpy(), boxes.numpy() * strides, points, gt, cfg)
        fg = a["fg_mask"]
        t_scores = jt.array(a["target_scores"].astype(np.float32))
        onehot = jt.array((np.eye(nc + 1)[np.where(fg, a["target_labels"], nc)][..., :nc]).astype(np.float32))
        score_sum = float(a["target_scores"].sum())
        loss_cls = varifocal(scores, t_scores, onehot)
        if score_sum > 0:
            loss_cls = loss_cls / score_sum
        idx = np.flatnonzero(fg.reshape(-1))
        if len(idx):
            pos = jt.array(idx.astype(np.int32))
            t_boxes = (a["target_bboxes"] / strides[None]).reshape(-1, 4)[idx].astype(np.float32)
            weight = jt.array(a["target_scores"].sum(-1).reshape(-1)[idx].astype(np.float32))
            loss_iou = (siou_loss(boxes.reshape(-1, 4)[pos], jt.array(t_boxes), cfg.angle_shift) * weight).sum()
            if score_sum > 0:
                loss_iou = loss_iou / score_sum
        else:
            loss_iou = dists.sum() * 0.0
        loss_dfl = dists.sum() * 0.0  # no DFL in GOLD-YOLO-N; keeps the graph connected
        w = cfg.weights
        parts = {"iou": w["iou"] * loss_iou, "dfl": w["dfl"] * loss_dfl, "cls": w["cls"] * loss_cls,
                 "assignment": a}
        return parts["cls"] + parts["iou"] + parts["dfl"], parts


class PortLoss:
    """``--port-loss`` adapter: ``L(head, targets) -> (total, [iou, dfl, cls])``; ``L.assignment`` after a call."""

    def __init__(self, num_classes: int, img_size: int | None, deviations: Sequence[str]) -> None:
        cfg = LossConfig(num_classes=num_classes, img_size=img_size)
        if "siou_angle" in deviations:
            cfg.angle_shift = math.pi / 4
        if "assigner_alpha_beta" in deviations:
            cfg.alpha, cfg.beta = cfg.beta, cfg.alpha
        self.cfg = cfg
        self.criterion = Criterion(cfg)
        self.assignment: dict[str, np.ndarray] | None = None

    def head(self, outputs: Sequence[Any]) -> tuple[list[jt.Var], jt.Var, jt.Var]:
        feats, scores, distri = outputs
        return list(feats), scores, distri

    def __call__(self, head: Sequence[Any], targets: jt.Var) -> tuple[jt.Var, list[jt.Var]]:
        feats, scores, distri = head
        shapes = [tuple(f.shape[2:]) for f in feats]
        img_size = self.cfg.img_size or shapes[0][0] * STRIDES[0]
        gt = pad_targets(np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets, dtype=np.float64),
                         scores.shape[0], img_size)
        total, parts = self.criterion(scores, distri, make_anchors(shapes), gt)
        a = parts["assignment"]
        self.assignment = {k: a[k] for k in ("fg_mask", "target_labels", "target_bboxes", "target_scores")}
        return total, [parts["iou"], parts["dfl"], parts["cls"]]


def build_loss(num_classes: int = 20, img_size: int | None = None, deviations: Sequence[str] = (), **_: Any
               ) -> PortLoss:
    """The ``--port-loss tests/ports/gd_port/criterion.py:build_loss`` factory."""
    try:
        from .nets import check_deviations
    except ImportError:  # loaded as a file next to nets.py
        from nets import check_deviations  # type: ignore[no-redef]
    return PortLoss(num_classes, img_size, check_deviations(deviations))
