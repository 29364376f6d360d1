"""IoU functions used by the official loss and assigners.

* `IOUloss` — `yolov6/utils/figure_iou.py` (giou / diou / ciou / siou; any other type falls back to plain IoU,
  as in the source; the official file has no eiou).
* `iou2d_calculator` / `bbox_overlaps` — `yolov6/assigners/iou2d_calculator.py` (mmdet copy, used by ATSS).
* `iou_calculator` — `yolov6/assigners/assigner_utils.py` (batched GT x prediction IoU, used by TAL and ATSS).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class IOUloss:
    """IoU loss `1 - iou_variant(box1, box2)`, elementwise over matched boxes ([P,4] -> [P,1])."""

    def __init__(self, box_format: str = "xywh", iou_type: str = "ciou", reduction: str = "none",
                 eps: float = 1e-7) -> None:
        self.box_format = box_format
        self.iou_type = iou_type.lower()
        self.reduction = reduction
        self.eps = eps

    def __call__(self, box1: Tensor, box2: Tensor) -> Tensor:
        if box1.shape[0] != box2.shape[0]:
            # faithful: mismatched counts are treated as column-major boxes (box2 transposed)
            box2 = box2.T
            if self.box_format == "xyxy":
                b1_x1, b1_y1, b1_x2, b1_y2 = box1[0], box1[1], box1[2], box1[3]
                b2_x1, b2_y1, b2_x2, b2_y2 = box2[0], box2[1], box2[2], box2[3]
            else:
                b1_x1, b1_x2 = box1[0] - box1[2] / 2, box1[0] + box1[2] / 2
                b1_y1, b1_y2 = box1[1] - box1[3] / 2, box1[1] + box1[3] / 2
                b2_x1, b2_x2 = box2[0] - box2[2] / 2, box2[0] + box2[2] / 2
                b2_y1, b2_y2 = box2[1] - box2[3] / 2, box2[1] + box2[3] / 2
        elif self.box_format == "xyxy":
            b1_x1, b1_y1, b1_x2, b1_y2 = torch.split(box1, 1, dim=-1)
            b2_x1, b2_y1, b2_x2, b2_y2 = torch.split(box2, 1, dim=-1)
        else:
            b1_x1, b1_y1, b1_w, b1_h = torch.split(box1, 1, dim=-1)
            b2_x1, b2_y1, b2_w, b2_h = torch.split(box2, 1, dim=-1)
            b1_x1, b1_x2 = b1_x1 - b1_w / 2, b1_x1 + b1_w / 2
            b1_y1, b1_y2 = b1_y1 - b1_h / 2, b1_y1 + b1_h / 2
            b2_x1, b2_x2 = b2_x1 - b2_w / 2, b2_x1 + b2_w / 2
            b2_y1, b2_y2 = b2_y1 - b2_h / 2, b2_y1 + b2_h / 2

        inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
                (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
        # faithful: eps is added to the heights only, and once more to the union
        w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + self.eps
        w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + self.eps
        union = w1 * h1 + w2 * h2 - inter + self.eps
        iou = inter / union

        cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing width
        ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)  # enclosing height
        if self.iou_type == "giou":
            c_area = cw * ch + self.eps  # faithful: eps inside the enclosing area (numerator and denominator)
            iou = iou - (c_area - union) / c_area
        elif self.iou_type in ("diou", "ciou"):
            c2 = cw ** 2 + ch ** 2 + self.eps
            rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
            if self.iou_type == "diou":
                iou = iou - rho2 / c2
            else:
                v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
                with torch.no_grad():
                    alpha = v / (v - iou + (1 + self.eps))
                iou = iou - (rho2 / c2 + v * alpha)
        elif self.iou_type == "siou":
            # faithful: eps added to the centre offsets, threshold sqrt(2)/2 picks the smaller sine
            s_cw = (b2_x1 + b2_x2 - b1_x1 - b1_x2) * 0.5 + self.eps
            s_ch = (b2_y1 + b2_y2 - b1_y1 - b1_y2) * 0.5 + self.eps
            sigma = torch.pow(s_cw ** 2 + s_ch ** 2, 0.5)
            sin_alpha_1 = torch.abs(s_cw) / sigma
            sin_alpha_2 = torch.abs(s_ch) / sigma
            threshold = pow(2, 0.5) / 2
            sin_alpha = torch.where(sin_alpha_1 > threshold, sin_alpha_2, sin_alpha_1)
            angle_cost = torch.cos(torch.arcsin(sin_alpha) * 2 - math.pi / 2)
            rho_x = (s_cw / cw) ** 2
            rho_y = (s_ch / ch) ** 2
            gamma = angle_cost - 2
            distance_cost = 2 - torch.exp(gamma * rho_x) - torch.exp(gamma * rho_y)
            omiga_w = torch.abs(w1 - w2) / torch.max(w1, w2)
            omiga_h = torch.abs(h1 - h2) / torch.max(h1, h2)
            shape_cost = torch.pow(1 - torch.exp(-1 * omiga_w), 4) + torch.pow(1 - torch.exp(-1 * omiga_h), 4)
            iou = iou - 0.5 * (distance_cost + shape_cost)
        loss = 1.0 - iou

        if self.reduction == "sum":
            loss = loss.sum()
        elif self.reduction == "mean":
            loss = loss.mean()
        return loss


def _fp16_clamp(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:
    if not x.is_cuda and x.dtype == torch.float16:
        return x.float().clamp(min, max).half()  # CPU half has no clamp
    return x.clamp(min, max)


def bbox_overlaps(bboxes1: Tensor, bboxes2: Tensor, mode: str = "iou", is_aligned: bool = False,
                  eps: float = 1e-6) -> Tensor:
    """mmdet `bbox_overlaps`: IoU / IoF / GIoU between xyxy boxes ([..., m, 4] x [..., n, 4] -> [..., m, n])."""
    assert mode in ("iou", "iof", "giou"), f"Unsupported mode {mode}"
    assert bboxes1.size(-1) == 4 or bboxes1.size(0) == 0
    assert bboxes2.size(-1) == 4 or bboxes2.size(0) == 0
    assert bboxes1.shape[:-2] == bboxes2.shape[:-2]
    batch_shape = bboxes1.shape[:-2]
    rows, cols = bboxes1.size(-2), bboxes2.size(-2)
    if is_aligned:
        assert rows == cols
    if rows * cols == 0:
        return bboxes1.new(batch_shape + ((rows,) if is_aligned else (rows, cols)))

    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
    if is_aligned:
        lt = torch.max(bboxes1[..., :2], bboxes2[..., :2])
        rb = torch.min(bboxes1[..., 2:], bboxes2[..., 2:])
        wh = _fp16_clamp(rb - lt, min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1 + area2 - overlap if mode in ("iou", "giou") else area1
        if mode == "giou":
            enclosed_lt = torch.min(bboxes1[..., :2], bboxes2[..., :2])
            enclosed_rb = torch.max(bboxes1[..., 2:], bboxes2[..., 2:])
    else:
        lt = torch.max(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
        rb = torch.min(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])
        wh = _fp16_clamp(rb - lt, min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1[..., None] + area2[..., None, :] - overlap if mode in ("iou", "giou") else area1[..., None]
        if mode == "giou":
            enclosed_lt = torch.min(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
            enclosed_rb = torch.max(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])

    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)  # faithful: union floored at eps (not eps added)
    ious = overlap / union
    if mode in ("iou", "iof"):
        return ious
    enclose_wh = _fp16_clamp(enclosed_rb - enclosed_lt, min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


def iou2d_calculator(bboxes1: Tensor, bboxes2: Tensor, mode: str = "iou", is_aligned: bool = False,
                     scale: float = 1.0, dtype: str | None = None) -> Tensor:
    """mmdet `BboxOverlaps2D.__call__` as copied into yolov6 (accepts an optional 5th score column)."""
    assert bboxes1.size(-1) in (0, 4, 5)
    assert bboxes2.size(-1) in (0, 4, 5)
    if bboxes2.size(-1) == 5:
        bboxes2 = bboxes2[..., :4]
    if bboxes1.size(-1) == 5:
        bboxes1 = bboxes1[..., :4]
    if dtype == "fp16":
        overlaps = bbox_overlaps((bboxes1 / scale).half(), (bboxes2 / scale).half(), mode, is_aligned)
        if not overlaps.is_cuda and overlaps.dtype == torch.float16:
            overlaps = overlaps.float()
        return overlaps
    return bbox_overlaps(bboxes1, bboxes2, mode, is_aligned)


def iou_calculator(box1: Tensor, box2: Tensor, eps: float = 1e-9) -> Tensor:
    """Batched IoU: box1 [B, M1, 4] (GTs), box2 [B, M2, 4] (predictions) -> [B, M1, M2]."""
    box1 = box1.unsqueeze(2)
    box2 = box2.unsqueeze(1)
    px1y1, px2y2 = box1[:, :, :, 0:2], box1[:, :, :, 2:4]
    gx1y1, gx2y2 = box2[:, :, :, 0:2], box2[:, :, :, 2:4]
    x1y1 = torch.maximum(px1y1, gx1y1)
    x2y2 = torch.minimum(px2y2, gx2y2)
    overlap = (x2y2 - x1y1).clip(0).prod(-1)
    area1 = (px2y2 - px1y1).clip(0).prod(-1)
    area2 = (gx2y2 - gx1y1).clip(0).prod(-1)
    union = area1 + area2 - overlap + eps  # faithful: eps added to the union (TAL), unlike bbox_overlaps' floor
    return overlap / union
