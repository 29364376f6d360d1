"""The nested port's training loss: varifocal class loss + SIoU box loss with a task-aligned assigner (the
official GOLD-YOLO-N recipe: no DFL, iou weight 2.5, top-k 13, alpha 1, beta 6).

Own interface: ``DetLoss(LossConfig(...)).compute(preds, gt_boxes)`` with ``preds`` a dict of the model's
outputs and ``gt_boxes`` one array of (class, cx, cy, w, h) rows per image, normalised to [0, 1]. The ground
truth is kept in float64, as the official loss builds it through numpy; predictions stay float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import aligner.env  # noqa: F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt
from jittor import nn
# torch.topk's CPU order among tied values (the assigner's metrics tie whenever predicted boxes sit wholly
# inside a ground-truth box, as at the official init); Jittor's own topk orders ties otherwise
from jittor_impl.assigners import torch_topk


@dataclass(frozen=True)
class LossConfig:
    num_classes: int = 20
    img_size: int = 640
    strides: tuple[int, ...] = (8, 16, 32)
    cell_offset: float = 0.5
    topk: int = 13
    alpha: float = 1.0
    beta: float = 6.0
    weights: dict[str, float] = field(default_factory=lambda: {"cls": 1.0, "iou": 2.5, "dfl": 0.5})


def anchor_grid(feats: Sequence[jt.Var], strides: Sequence[int], offset: float) -> tuple[jt.Var, jt.Var]:
    """Cell centres in pixels [A, 2] (level-major, rows outer) and each anchor's stride [A, 1]."""
    points, scale = [], []
    for f, s in zip(feats, strides):
        h, w = f.shape[2], f.shape[3]
        xs = (jt.arange(w).float32() + offset) * s
        ys = (jt.arange(h).float32() + offset) * s
        points.append(jt.stack([xs.reshape(1, w).broadcast((h, w)), ys.reshape(h, 1).broadcast((h, w))],
                               dim=-1).reshape(-1, 2))
        scale.append(jt.full((h * w, 1), float(s), "float32"))
    return jt.concat(points).stop_grad(), jt.concat(scale).stop_grad()


def box_iou(gt: jt.Var, pred: jt.Var, eps: float = 1e-9) -> jt.Var:
    """IoU of every ground-truth box [B, G, 4] with every predicted box [B, A, 4] -> [B, G, A] (xyxy)."""
    g, p = gt.unsqueeze(2), pred.unsqueeze(1)
    lt = jt.maximum(g[..., :2], p[..., :2])
    rb = jt.minimum(g[..., 2:], p[..., 2:])
    inter = (rb - lt).clamp(min_v=0).prod(-1)
    area_g = (g[..., 2:] - g[..., :2]).clamp(min_v=0).prod(-1)
    area_p = (p[..., 2:] - p[..., :2]).clamp(min_v=0).prod(-1)
    return inter / (area_g + area_p - inter + eps)


def siou_loss(pred: jt.Var, target: jt.Var, eps: float = 1e-10) -> jt.Var:
    """``1 - SIoU`` of matched xyxy boxes [P, 4] -> [P] (official figure_iou, siou branch)."""
    px1, py1, px2, py2 = (pred[:, i] for i in range(4))
    tx1, ty1, tx2, ty2 = (target[:, i] for i in range(4))
    inter = ((jt.minimum(px2, tx2) - jt.maximum(px1, tx1)).clamp(min_v=0)
             * (jt.minimum(py2, ty2) - jt.maximum(py1, ty1)).clamp(min_v=0))
    w1, h1 = px2 - px1, py2 - py1 + eps
    w2, h2 = tx2 - tx1, ty2 - ty1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = jt.maximum(px2, tx2) - jt.minimum(px1, tx1)
    ch = jt.maximum(py2, ty2) - jt.minimum(py1, ty1)
    dx = (tx1 + tx2 - px1 - px2) * 0.5 + eps
    dy = (ty1 + ty2 - py1 - py2) * 0.5 + eps
    sigma = jt.sqrt(dx * dx + dy * dy)
    sin_x, sin_y = jt.abs(dx) / sigma, jt.abs(dy) / sigma
    sin_alpha = jt.ternary(sin_x > math.sqrt(2) / 2, sin_y, sin_x)
    angle = jt.cos(jt.asin(sin_alpha) * 2 - math.pi / 2)
    gamma = angle - 2
    distance = 2 - jt.exp(gamma * (dx / cw) ** 2) - jt.exp(gamma * (dy / ch) ** 2)
    omega_w = jt.abs(w1 - w2) / jt.maximum(w1, w2)
    omega_h = jt.abs(h1 - h2) / jt.maximum(h1, h2)
    shape = (1 - jt.exp(-omega_w)) ** 4 + (1 - jt.exp(-omega_h)) ** 4
    return 1.0 - (iou - 0.5 * (distance + shape))


class TorchBCE(jt.Function):
    """Elementwise binary cross-entropy on probabilities as torch computes it: logs clamped at -100 in the
    forward, and torch's own gradient ``g * (p - y) / max((1 - p) * p, 1e-12)`` in the backward (the derivative
    of the clamped forward would be 0 * inf at saturated probabilities)."""

    def execute(self, p: jt.Var, y: jt.Var) -> jt.Var:
        self.saved = (p, y)
        return (y - 1) * jt.log(1 - p).clamp(min_v=-100.0) - y * jt.log(p).clamp(min_v=-100.0)

    def grad(self, g: jt.Var) -> tuple[jt.Var, None]:
        p, y = self.saved
        return g * (p - y) / ((1 - p) * p).clamp(min_v=1e-12), None


class AlignedAssigner:
    """Task-aligned assignment: inside each ground-truth box, the ``topk`` anchors with the largest
    ``score ** alpha * iou ** beta``; an anchor claimed twice keeps the box it overlaps most."""

    def __init__(self, topk: int, num_classes: int, alpha: float, beta: float, eps: float = 1e-9) -> None:
        self.topk, self.num_classes, self.alpha, self.beta, self.eps = topk, num_classes, alpha, beta, eps

    def __call__(self, scores: jt.Var, boxes: jt.Var, points: jt.Var, gt_cls: jt.Var, gt_box: jt.Var,
                 gt_valid: jt.Var) -> dict[str, jt.Var]:
        with jt.no_grad():
            return self._assign(scores, boxes, points, gt_cls, gt_box, gt_valid)

    def _assign(self, scores, boxes, points, gt_cls, gt_box, gt_valid):
        b, n_gt = gt_box.shape[0], gt_box.shape[1]
        n_anchor = points.shape[0]
        cls_idx = gt_cls.int64().reshape(b, n_gt)
        cls_idx = jt.ternary(cls_idx < 0, cls_idx + self.num_classes, cls_idx)  # padding rows: -1 -> last class
        img_idx = jt.arange(b).int64().reshape(b, 1).broadcast((b, n_gt))
        gt_scores = scores.permute(0, 2, 1)[img_idx, cls_idx]                     # [B, G, A]
        overlaps = box_iou(gt_box, boxes)                                        # [B, G, A]
        metric = gt_scores.pow(self.alpha) * overlaps.pow(self.beta)

        offsets = jt.concat([points[None, None] - gt_box[:, :, None, :2], gt_box[:, :, None, 2:] - points[None, None]],
                            dim=-1)
        inside = (offsets.min(dim=-1) > self.eps).cast(gt_box.dtype)            # [B, G, A]
        _, top_idx = torch_topk(metric * inside, self.topk)                      # [B, G, k]
        valid = gt_valid.reshape(b, n_gt, 1) > 0
        top_idx = jt.ternary(valid.broadcast(top_idx.shape), top_idx, jt.zeros_like(top_idx))
        picked = nn.one_hot(top_idx, n_anchor).sum(dim=-2)
        picked = jt.ternary(picked > 1, jt.zeros_like(picked), picked).cast(metric.dtype)
        positive = picked * inside * gt_valid.reshape(b, n_gt, 1).cast(metric.dtype)

        claims = positive.sum(dim=-2)                                            # [B, A]
        if claims.max().item() > 1:
            best_gt = jt.argmax(overlaps, 1)[0]
            best = nn.one_hot(best_gt, n_gt).permute(0, 2, 1).cast(positive.dtype)
            multi = (claims > 1).unsqueeze(1).broadcast(positive.shape)
            positive = jt.ternary(multi, best, positive)
            claims = positive.sum(dim=-2)
        gt_of_anchor = jt.argmax(positive, 1)[0].int64()                         # first maximum: 0 for background
        fg = claims > 0

        flat = gt_of_anchor + jt.arange(b).int64().reshape(b, 1) * n_gt
        labels = gt_cls.int64().reshape(-1)[flat.reshape(-1)].reshape(b, n_anchor)
        labels = jt.ternary(labels < 0, jt.zeros_like(labels), labels)
        target_boxes = gt_box.reshape(-1, 4)[flat.reshape(-1)].reshape(b, n_anchor, 4)
        one_hot = jt.ternary(fg.unsqueeze(-1).broadcast((b, n_anchor, self.num_classes)),
                             nn.one_hot(labels, self.num_classes), jt.zeros((b, n_anchor, self.num_classes), "int64"))

        metric = metric * positive
        best_metric = metric.max(dim=-1, keepdims=True)
        best_iou = (overlaps * positive).max(dim=-1, keepdims=True)
        norm = (metric * best_iou / (best_metric + self.eps)).max(dim=-2).unsqueeze(-1)
        return {"target_labels": labels, "target_bboxes": target_boxes, "target_scores": one_hot * norm,
                "fg_mask": fg}


class DetLoss:
    """``compute(preds, gt_boxes)`` -> {"total", "iou", "dfl", "cls"} (weighted terms); the last assignment
    stays in ``last_assignment``."""

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.assigner = AlignedAssigner(cfg.topk, cfg.num_classes, cfg.alpha, cfg.beta)
        self.last_assignment: dict[str, jt.Var] | None = None

    def _ground_truth(self, gt_boxes: Sequence[np.ndarray], batch: int) -> np.ndarray:
        """[B, G, 5] float64 rows (class, x1, y1, x2, y2 in px), padded with (-1, 0, 0, 0, 0)."""
        n_gt = max([len(g) for g in gt_boxes] + [0])
        out = np.zeros((batch, n_gt, 5), np.float64)
        out[:, :, 0] = -1
        for i, g in enumerate(gt_boxes):
            g = np.asarray(g, np.float64).reshape(-1, 5)
            xywh = g[:, 1:5] * np.float64(self.cfg.img_size)
            x1 = xywh[:, 0] - xywh[:, 2] * 0.5
            y1 = xywh[:, 1] - xywh[:, 3] * 0.5
            # x2 = x1 + w, the official operation order (not cx + w / 2, which rounds differently)
            out[i, :len(g)] = np.stack([g[:, 0], x1, y1, x1 + xywh[:, 2], y1 + xywh[:, 3]], axis=1)
        return out

    def compute(self, preds: dict[str, Any], gt_boxes: Sequence[np.ndarray]) -> dict[str, jt.Var]:
        scores, distri, feats = preds["scores"], preds["distri"], preds["feats"]
        cfg = self.cfg
        points, stride = anchor_grid(feats, cfg.strides, cfg.cell_offset)
        gt = jt.array(self._ground_truth(gt_boxes, scores.shape[0]), "float64")
        gt_cls, gt_box = gt[:, :, :1], gt[:, :, 1:]
        gt_valid = (gt_box.sum(-1, keepdims=True) > 0).float32()

        grid_points = points / stride
        # no DFL: the head predicts the four distances directly, in grid units
        pred_box = jt.concat([grid_points - distri[..., :2], grid_points + distri[..., 2:]], dim=-1)
        assign = self.assigner(scores.detach(), pred_box.detach() * stride, points, gt_cls, gt_box, gt_valid)
        self.last_assignment = assign
        fg = assign["fg_mask"]
        target_scores = assign["target_scores"]
        score_sum = target_scores.sum()

        # varifocal loss: negatives weighted by alpha * p^2, positives by their target score
        labels = jt.ternary(fg, assign["target_labels"], jt.full(fg.shape, cfg.num_classes, "int64"))
        positive = nn.one_hot(labels, cfg.num_classes + 1)[..., :-1]
        weight = 0.75 * scores * scores * (1 - positive).float32() + target_scores * positive.float64()
        cls_loss = (TorchBCE.apply(scores, target_scores.float32()).float64() * weight).sum()
        if score_sum.item() > 0:
            cls_loss = cls_loss / score_sum

        fg_idx = jt.where(fg.reshape(-1))[0]
        if fg_idx.shape[0] > 0:
            target_box = (assign["target_bboxes"] / stride).reshape(-1, 4)[fg_idx]
            box_weight = target_scores.sum(-1).reshape(-1)[fg_idx]
            iou_loss = (siou_loss(pred_box.reshape(-1, 4)[fg_idx], target_box) * box_weight).sum()
            if score_sum.item() > 0:
                iou_loss = iou_loss / score_sum
        else:
            iou_loss = distri.sum() * 0.0
        dfl_loss = distri.sum() * 0.0  # no DFL in this configuration; keeps the graph connected

        w = cfg.weights
        terms = {"iou": iou_loss * w["iou"], "dfl": dfl_loss * w["dfl"], "cls": cls_loss * w["cls"]}
        return {"total": terms["cls"] + terms["iou"] + terms["dfl"], **terms}
