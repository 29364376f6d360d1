"""Official YOLOv6 / GOLD-YOLO training loss (`yolov6/models/losses/loss.py`): VFL + IoU + DFL with the TAL
assigner (ATSS during warm-up epochs).

Precision follows the source: `preprocess` builds the targets through numpy as float64, so GT boxes, IoUs,
target scores, the VFL weight and the total loss are float64 even when the model runs in float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import bbox2dist, dist2bbox, generate_anchors, xywh2xyxy
from .assigners import ATSSAssigner, TaskAlignedAssigner
from .configs import get_config
from .iou import IOUloss

__all__ = ["VarifocalLoss", "BboxLoss", "ComputeLoss", "build_loss"]


class VarifocalLoss(nn.Module):
    """Varifocal loss on probabilities (the head already applied the sigmoid), summed."""

    def forward(self, pred_score: Tensor, gt_score: Tensor, label: Tensor, alpha: float = 0.75,
                gamma: float = 2.0) -> Tensor:
        # faithful: the weight is NOT detached, so gradient also flows through alpha*p^gamma
        weight = alpha * pred_score.pow(gamma) * (1 - label) + gt_score * label
        with torch.autocast(device_type=pred_score.device.type, enabled=False):
            # faithful: BCE computed in float32 via .float(), even in a float64 run
            bce = F.binary_cross_entropy(pred_score.float(), gt_score.float(), reduction="none")
            loss = (bce * weight).sum()
        return loss


class BboxLoss(nn.Module):
    """IoU loss and distribution focal loss on the positive anchors, weighted by their target score."""

    def __init__(self, num_classes: int, reg_max: int, use_dfl: bool = False, iou_type: str = "giou") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.iou_loss = IOUloss(box_format="xyxy", iou_type=iou_type, eps=1e-10)
        self.reg_max = reg_max
        self.use_dfl = use_dfl

    def forward(self, pred_dist: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, target_bboxes: Tensor,
                target_scores: Tensor, target_scores_sum: Tensor, fg_mask: Tensor) -> tuple[Tensor, Tensor]:
        num_pos = fg_mask.sum()
        if num_pos > 0:
            bbox_mask = fg_mask.unsqueeze(-1).repeat([1, 1, 4])
            pred_bboxes_pos = torch.masked_select(pred_bboxes, bbox_mask).reshape([-1, 4])
            target_bboxes_pos = torch.masked_select(target_bboxes, bbox_mask).reshape([-1, 4])
            bbox_weight = torch.masked_select(target_scores.sum(-1), fg_mask).unsqueeze(-1)
            loss_iou = self.iou_loss(pred_bboxes_pos, target_bboxes_pos) * bbox_weight
            loss_iou = loss_iou.sum() if target_scores_sum == 0 else loss_iou.sum() / target_scores_sum

            if self.use_dfl:
                dist_mask = fg_mask.unsqueeze(-1).repeat([1, 1, (self.reg_max + 1) * 4])
                pred_dist_pos = torch.masked_select(pred_dist, dist_mask).reshape([-1, 4, self.reg_max + 1])
                target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max)
                target_ltrb_pos = torch.masked_select(target_ltrb, bbox_mask).reshape([-1, 4])
                loss_dfl = self._df_loss(pred_dist_pos, target_ltrb_pos) * bbox_weight
                loss_dfl = loss_dfl.sum() if target_scores_sum == 0 else loss_dfl.sum() / target_scores_sum
            else:
                loss_dfl = pred_dist.sum() * 0.0  # keeps the graph connected
        else:
            loss_iou = pred_dist.sum() * 0.0
            loss_dfl = pred_dist.sum() * 0.0
        return loss_iou, loss_dfl

    def _df_loss(self, pred_dist: Tensor, target: Tensor) -> Tensor:
        target_left = target.to(torch.long)  # truncation == floor (targets are clipped to >= 0)
        target_right = target_left + 1
        # faithful: float32 right bin minus the float64 target -> float64 weights
        weight_left = target_right.to(torch.float) - target
        weight_right = 1 - weight_left
        logits = pred_dist.view(-1, self.reg_max + 1)
        loss_left = F.cross_entropy(logits, target_left.view(-1), reduction="none").view(target_left.shape) * weight_left
        loss_right = F.cross_entropy(logits, target_right.view(-1), reduction="none").view(target_left.shape) * weight_right
        return (loss_left + loss_right).mean(-1, keepdim=True)


class ComputeLoss:
    """Loss computation (official `ComputeLoss`). Call with `(feats, pred_scores, pred_distri)`."""

    def __init__(self, fpn_strides: Sequence[int] = (8, 16, 32), grid_cell_size: float = 5.0,
                 grid_cell_offset: float = 0.5, num_classes: int = 80, ori_img_size: int = 640,
                 warmup_epoch: int = 4, use_dfl: bool = True, reg_max: int = 16, iou_type: str = "giou",
                 loss_weight: dict[str, float] | None = None) -> None:
        self.fpn_strides = list(fpn_strides)
        self.grid_cell_size = grid_cell_size
        self.grid_cell_offset = grid_cell_offset
        self.num_classes = num_classes
        self.ori_img_size = ori_img_size
        self.warmup_epoch = warmup_epoch
        self.warmup_assigner = ATSSAssigner(9, num_classes=num_classes)
        self.formal_assigner = TaskAlignedAssigner(topk=13, num_classes=num_classes, alpha=1.0, beta=6.0)
        self.use_dfl = use_dfl
        self.reg_max = reg_max
        # float32 like the source; a float64 run must replace it by a float64 copy (golden step 7)
        self.proj = nn.Parameter(torch.linspace(0, reg_max, reg_max + 1), requires_grad=False)
        self.iou_type = iou_type
        self.varifocal_loss = VarifocalLoss()
        self.bbox_loss = BboxLoss(num_classes, reg_max, use_dfl, iou_type)
        self.loss_weight = dict(loss_weight or {"class": 1.0, "iou": 2.5, "dfl": 0.5})

    def __call__(self, outputs: Sequence, targets: Tensor, epoch_num: int, step_num: int) -> tuple[Tensor, Tensor]:
        """Returns (loss, [2.5*iou, 0.5*dfl, 1.0*cls] detached). `targets` [M,6] rows (img, cls, cx, cy, w, h)."""
        feats, pred_scores, pred_distri = outputs[0], outputs[1], outputs[2]
        anchors, anchor_points, n_anchors_list, stride_tensor = generate_anchors(
            feats, self.fpn_strides, self.grid_cell_size, self.grid_cell_offset, device=feats[0].device)
        assert pred_scores.type() == pred_distri.type()
        gt_bboxes_scale = torch.full((1, 4), self.ori_img_size).type_as(pred_scores)
        batch_size = pred_scores.shape[0]

        targets = self.preprocess(targets, batch_size, gt_bboxes_scale)
        gt_labels = targets[:, :, :1]
        gt_bboxes = targets[:, :, 1:]  # xyxy px, float64
        mask_gt = (gt_bboxes.sum(-1, keepdim=True) > 0).float()

        anchor_points_s = anchor_points / stride_tensor
        pred_bboxes = self.bbox_decode(anchor_points_s, pred_distri)  # xyxy, grid units

        # The source wraps the assignment in `try/except RuntimeError` (CUDA OOM -> rerun on CPU) and calls
        # torch.cuda.empty_cache() every 10 steps; both are device housekeeping with no numerical effect.
        if epoch_num < self.warmup_epoch:
            target_labels, target_bboxes, target_scores, fg_mask = self.warmup_assigner(
                anchors, n_anchors_list, gt_labels, gt_bboxes, mask_gt, pred_bboxes.detach() * stride_tensor)
        else:
            target_labels, target_bboxes, target_scores, fg_mask = self.formal_assigner(
                pred_scores.detach(), pred_bboxes.detach() * stride_tensor, anchor_points,
                gt_labels, gt_bboxes, mask_gt)

        target_bboxes /= stride_tensor  # in place, like the source

        target_labels = torch.where(fg_mask > 0, target_labels, torch.full_like(target_labels, self.num_classes))
        one_hot_label = F.one_hot(target_labels.long(), self.num_classes + 1)[..., :-1]
        loss_cls = self.varifocal_loss(pred_scores, target_scores, one_hot_label)

        target_scores_sum = target_scores.sum()
        if target_scores_sum > 0:  # avoid dividing by zero (loss_cls is 0 then anyway)
            loss_cls /= target_scores_sum

        loss_iou, loss_dfl = self.bbox_loss(pred_distri, pred_bboxes, anchor_points_s, target_bboxes,
                                            target_scores, target_scores_sum, fg_mask)
        w = self.loss_weight
        loss = w["class"] * loss_cls + w["iou"] * loss_iou + w["dfl"] * loss_dfl
        items = torch.cat(((w["iou"] * loss_iou).unsqueeze(0), (w["dfl"] * loss_dfl).unsqueeze(0),
                           (w["class"] * loss_cls).unsqueeze(0))).detach()
        return loss, items

    def preprocess(self, targets: Tensor, batch_size: int, scale_tensor: Tensor) -> Tensor:
        """[M,6] -> [B, n_max, 5] (cls, x1, y1, x2, y2 px), padded with (-1, 0, 0, 0, 0)."""
        # faithful: built through Python lists / numpy, hence float64 whatever the model dtype
        targets_list = np.zeros((batch_size, 1, 5)).tolist()
        for item in targets.cpu().numpy().tolist():
            targets_list[int(item[0])].append(item[1:])
        max_len = max(len(lst) for lst in targets_list)
        padded = np.array([lst + [[-1, 0, 0, 0, 0]] * (max_len - len(lst)) for lst in targets_list])
        out = torch.from_numpy(padded[:, 1:, :]).to(targets.device)
        batch_target = out[:, :, 1:5].mul_(scale_tensor)
        out[..., 1:] = xywh2xyxy(batch_target)
        return out

    def bbox_decode(self, anchor_points: Tensor, pred_dist: Tensor) -> Tensor:
        """Predicted distances (DFL expectation if use_dfl) -> xyxy boxes in grid units."""
        if self.use_dfl:
            batch_size, n_anchors, _ = pred_dist.shape
            pred_dist = F.softmax(pred_dist.view(batch_size, n_anchors, 4, self.reg_max + 1), dim=-1).matmul(
                self.proj.to(pred_dist.device))
        return dist2bbox(pred_dist, anchor_points)


def build_loss(name: str, num_classes: int = 80, img_size: int = 640, use_dfl: bool | None = None,
               reg_max: int | None = None, iou_type: str | None = None,
               warmup_epoch: int | None = None) -> ComputeLoss:
    """`ComputeLoss` as the official engine builds it for variant `name`; `None` means the config value."""
    cfg = get_config(name, use_dfl=use_dfl, reg_max=reg_max, iou_type=iou_type, atss_warmup_epoch=warmup_epoch)
    return ComputeLoss(fpn_strides=cfg.strides, num_classes=num_classes, ori_img_size=img_size,
                       warmup_epoch=cfg.atss_warmup_epoch, use_dfl=cfg.use_dfl, reg_max=cfg.reg_max,
                       iou_type=cfg.iou_type)
