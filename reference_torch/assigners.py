"""Label assigners of the official loss: `TaskAlignedAssigner` (TAL, formal) and `ATSSAssigner` (warm-up),
with the utility functions of `yolov6/assigners/assigner_utils.py`.

Dtypes follow the source: GT tensors arrive as float64 (built through numpy in `ComputeLoss.preprocess`),
predictions as the model dtype, so IoUs, masks and target scores end up float64 in TAL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .iou import iou2d_calculator, iou_calculator

__all__ = ["TaskAlignedAssigner", "ATSSAssigner", "dist_calculator", "select_candidates_in_gts",
           "select_highest_overlaps", "iou_calculator"]


def dist_calculator(gt_bboxes: Tensor, anchor_bboxes: Tensor) -> tuple[Tensor, Tensor]:
    """Centre distances [B*n_max, N] between GT boxes [B*n_max, 4] and anchor boxes [N, 4]; also anchor centres."""
    gt_cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
    gt_cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
    gt_points = torch.stack([gt_cx, gt_cy], dim=1)
    ac_cx = (anchor_bboxes[:, 0] + anchor_bboxes[:, 2]) / 2.0
    ac_cy = (anchor_bboxes[:, 1] + anchor_bboxes[:, 3]) / 2.0
    ac_points = torch.stack([ac_cx, ac_cy], dim=1)
    distances = (gt_points[:, None, :] - ac_points[None, :, :]).pow(2).sum(-1).sqrt()
    return distances, ac_points


def select_candidates_in_gts(xy_centers: Tensor, gt_bboxes: Tensor, eps: float = 1e-9) -> Tensor:
    """[B, n_max, N] mask (gt dtype) of anchor centres strictly inside each GT (min side distance > eps)."""
    n_anchors = xy_centers.size(0)
    bs, n_max_boxes, _ = gt_bboxes.size()
    _gt_bboxes = gt_bboxes.reshape([-1, 4])
    xy_centers = xy_centers.unsqueeze(0).repeat(bs * n_max_boxes, 1, 1)
    gt_bboxes_lt = _gt_bboxes[:, 0:2].unsqueeze(1).repeat(1, n_anchors, 1)
    gt_bboxes_rb = _gt_bboxes[:, 2:4].unsqueeze(1).repeat(1, n_anchors, 1)
    b_lt = xy_centers - gt_bboxes_lt
    b_rb = gt_bboxes_rb - xy_centers
    bbox_deltas = torch.cat([b_lt, b_rb], dim=-1).reshape([bs, n_max_boxes, n_anchors, -1])
    return (bbox_deltas.min(dim=-1)[0] > eps).to(gt_bboxes.dtype)


def select_highest_overlaps(mask_pos: Tensor, overlaps: Tensor, n_max_boxes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Anchors claimed by several GTs keep the GT with the largest IoU (over ALL GTs of the image)."""
    fg_mask = mask_pos.sum(dim=-2)
    if fg_mask.max() > 1:
        mask_multi_gts = (fg_mask.unsqueeze(1) > 1).repeat([1, n_max_boxes, 1])
        max_overlaps_idx = overlaps.argmax(dim=1)
        is_max_overlaps = F.one_hot(max_overlaps_idx, n_max_boxes)
        is_max_overlaps = is_max_overlaps.permute(0, 2, 1).to(overlaps.dtype)
        mask_pos = torch.where(mask_multi_gts, is_max_overlaps, mask_pos)
        fg_mask = mask_pos.sum(dim=-2)
    # faithful: background anchors (all-zero column) get GT index 0 (first maximum)
    target_gt_idx = mask_pos.argmax(dim=-2)
    return target_gt_idx, fg_mask, mask_pos


class TaskAlignedAssigner(nn.Module):
    """Task-aligned assigner (TOOD): top-k anchors by `score^alpha * IoU^beta` inside each GT."""

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        super().__init__()
        self.topk, self.num_classes, self.bg_idx = topk, num_classes, num_classes
        self.alpha, self.beta, self.eps = alpha, beta, eps

    @torch.no_grad()
    def forward(self, pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                gt_bboxes: Tensor, mask_gt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (target_labels [B,N], target_bboxes [B,N,4] px, target_scores [B,N,nc], fg_mask [B,N] bool)."""
        self.bs = pd_scores.size(0)
        self.n_max_boxes = gt_bboxes.size(1)
        if self.n_max_boxes == 0:
            device = gt_bboxes.device
            return (torch.full_like(pd_scores[..., 0], self.bg_idx).to(device), torch.zeros_like(pd_bboxes).to(device),
                    torch.zeros_like(pd_scores).to(device), torch.zeros_like(pd_scores[..., 0]).to(device))

        # faithful: with more than 100 GT slots the batch is processed one image at a time (memory)
        cycle, step, self.bs = (1, self.bs, self.bs) if self.n_max_boxes <= 100 else (self.bs, 1, 1)
        labels_l, bboxes_l, scores_l, fg_l = [], [], [], []
        for i in range(cycle):
            start, end = i * step, (i + 1) * step
            pd_scores_, pd_bboxes_ = pd_scores[start:end, ...], pd_bboxes[start:end, ...]
            gt_labels_, gt_bboxes_, mask_gt_ = gt_labels[start:end, ...], gt_bboxes[start:end, ...], mask_gt[start:end, ...]

            mask_pos, align_metric, overlaps = self.get_pos_mask(
                pd_scores_, pd_bboxes_, gt_labels_, gt_bboxes_, anc_points, mask_gt_)
            target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, self.n_max_boxes)
            target_labels, target_bboxes, target_scores = self.get_targets(
                gt_labels_, gt_bboxes_, target_gt_idx, fg_mask)

            # normalise: each GT's best positive gets its best IoU as the target score
            align_metric *= mask_pos
            pos_align_metrics = align_metric.max(dim=-1, keepdim=True)[0]
            pos_overlaps = (overlaps * mask_pos).max(dim=-1, keepdim=True)[0]
            norm_align_metric = (align_metric * pos_overlaps / (pos_align_metrics + self.eps)).max(-2)[0].unsqueeze(-1)
            target_scores = target_scores * norm_align_metric

            labels_l.append(target_labels)
            bboxes_l.append(target_bboxes)
            scores_l.append(target_scores)
            fg_l.append(fg_mask)
        return torch.cat(labels_l, 0), torch.cat(bboxes_l, 0), torch.cat(scores_l, 0), torch.cat(fg_l, 0).bool()

    def get_pos_mask(self, pd_scores: Tensor, pd_bboxes: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
                     anc_points: Tensor, mask_gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        align_metric, overlaps = self.get_box_metrics(pd_scores, pd_bboxes, gt_labels, gt_bboxes)
        mask_in_gts = select_candidates_in_gts(anc_points, gt_bboxes)
        mask_topk = self.select_topk_candidates(
            align_metric * mask_in_gts, topk_mask=mask_gt.repeat([1, 1, self.topk]).bool())
        mask_pos = mask_topk * mask_in_gts * mask_gt
        return mask_pos, align_metric, overlaps

    def get_box_metrics(self, pd_scores: Tensor, pd_bboxes: Tensor, gt_labels: Tensor,
                        gt_bboxes: Tensor) -> tuple[Tensor, Tensor]:
        pd_scores = pd_scores.permute(0, 2, 1)
        gt_labels = gt_labels.to(torch.long)
        ind = torch.zeros([2, self.bs, self.n_max_boxes], dtype=torch.long)
        ind[0] = torch.arange(end=self.bs).view(-1, 1).repeat(1, self.n_max_boxes)
        ind[1] = gt_labels.squeeze(-1)
        # faithful: padded GTs have label -1, which indexes the last class; masked out later by mask_gt
        bbox_scores = pd_scores[ind[0], ind[1]]
        overlaps = iou_calculator(gt_bboxes, pd_bboxes)
        align_metric = bbox_scores.pow(self.alpha) * overlaps.pow(self.beta)
        return align_metric, overlaps

    def select_topk_candidates(self, metrics: Tensor, largest: bool = True, topk_mask: Tensor | None = None) -> Tensor:
        num_anchors = metrics.shape[-1]
        # faithful: tie order at the k-th value is whatever torch.topk (CPU) returns for this exact call
        topk_metrics, topk_idxs = torch.topk(metrics, self.topk, dim=-1, largest=largest)
        if topk_mask is None:
            topk_mask = (topk_metrics.max(dim=-1, keepdim=True)[0] > self.eps).tile([1, 1, self.topk])
        # faithful: masked (padded-GT) rows point every slot at anchor 0, removed by the ">1 -> 0" rule below
        topk_idxs = torch.where(topk_mask, topk_idxs, torch.zeros_like(topk_idxs))
        is_in_topk = F.one_hot(topk_idxs, num_anchors).sum(dim=-2)
        is_in_topk = torch.where(is_in_topk > 1, torch.zeros_like(is_in_topk), is_in_topk)
        return is_in_topk.to(metrics.dtype)

    def get_targets(self, gt_labels: Tensor, gt_bboxes: Tensor, target_gt_idx: Tensor,
                    fg_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch_ind = torch.arange(end=self.bs, dtype=torch.int64, device=gt_labels.device)[..., None]
        target_gt_idx = target_gt_idx + batch_ind * self.n_max_boxes
        target_labels = gt_labels.long().flatten()[target_gt_idx]
        target_bboxes = gt_bboxes.reshape([-1, 4])[target_gt_idx]
        target_labels[target_labels < 0] = 0
        target_scores = F.one_hot(target_labels, self.num_classes)
        fg_scores_mask = fg_mask[:, :, None].repeat(1, 1, self.num_classes)
        target_scores = torch.where(fg_scores_mask > 0, target_scores, torch.full_like(target_scores, 0))
        return target_labels, target_bboxes, target_scores


class ATSSAssigner(nn.Module):
    """Adaptive Training Sample Selection: per level the top-k anchors by centre distance, IoU > mean + std."""

    def __init__(self, topk: int = 9, num_classes: int = 80) -> None:
        super().__init__()
        self.topk = topk
        self.num_classes = num_classes
        self.bg_idx = num_classes

    @torch.no_grad()
    def forward(self, anc_bboxes: Tensor, n_level_bboxes: list[int], gt_labels: Tensor, gt_bboxes: Tensor,
                mask_gt: Tensor, pd_bboxes: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (target_labels [B,N] (bg = nc), target_bboxes [B,N,4] px, target_scores [B,N,nc] float32, fg_mask)."""
        self.n_anchors = anc_bboxes.size(0)
        self.bs = gt_bboxes.size(0)
        self.n_max_boxes = gt_bboxes.size(1)
        if self.n_max_boxes == 0:
            device = gt_bboxes.device
            return (torch.full([self.bs, self.n_anchors], self.bg_idx).to(device),
                    torch.zeros([self.bs, self.n_anchors, 4]).to(device),
                    torch.zeros([self.bs, self.n_anchors, self.num_classes]).to(device),
                    torch.zeros([self.bs, self.n_anchors]).to(device))

        overlaps = iou2d_calculator(gt_bboxes.reshape([-1, 4]), anc_bboxes)
        overlaps = overlaps.reshape([self.bs, -1, self.n_anchors])
        distances, ac_points = dist_calculator(gt_bboxes.reshape([-1, 4]), anc_bboxes)
        distances = distances.reshape([self.bs, -1, self.n_anchors])

        is_in_candidate, candidate_idxs = self.select_topk_candidates(distances, n_level_bboxes, mask_gt)
        overlaps_thr_per_gt, iou_candidates = self.thres_calculator(is_in_candidate, candidate_idxs, overlaps)
        # faithful: strict ">" against mean + unbiased std
        is_pos = torch.where(iou_candidates > overlaps_thr_per_gt.repeat([1, 1, self.n_anchors]),
                             is_in_candidate, torch.zeros_like(is_in_candidate))
        is_in_gts = select_candidates_in_gts(ac_points, gt_bboxes)
        mask_pos = is_pos * is_in_gts * mask_gt
        target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, self.n_max_boxes)
        target_labels, target_bboxes, target_scores = self.get_targets(gt_labels, gt_bboxes, target_gt_idx, fg_mask)

        if pd_bboxes is not None:  # soft labels: IoU between the assigned GT and the predicted box
            ious = iou_calculator(gt_bboxes, pd_bboxes) * mask_pos
            ious = ious.max(dim=-2)[0].unsqueeze(-1)
            # faithful: in-place product keeps target_scores float32 (rounds the float64 IoU)
            target_scores *= ious
        return target_labels.long(), target_bboxes, target_scores, fg_mask.bool()

    def select_topk_candidates(self, distances: Tensor, n_level_bboxes: list[int],
                               mask_gt: Tensor) -> tuple[Tensor, Tensor]:
        mask_gt = mask_gt.repeat(1, 1, self.topk).bool()
        level_distances = torch.split(distances, n_level_bboxes, dim=-1)
        is_in_candidate_list, candidate_idxs = [], []
        start_idx = 0
        for per_level_distances, per_level_boxes in zip(level_distances, n_level_bboxes):
            end_idx = start_idx + per_level_boxes
            selected_k = min(self.topk, per_level_boxes)
            _, per_level_topk_idxs = per_level_distances.topk(selected_k, dim=-1, largest=False)
            candidate_idxs.append(per_level_topk_idxs + start_idx)
            per_level_topk_idxs = torch.where(mask_gt, per_level_topk_idxs, torch.zeros_like(per_level_topk_idxs))
            is_in_candidate = F.one_hot(per_level_topk_idxs, per_level_boxes).sum(dim=-2)
            is_in_candidate = torch.where(is_in_candidate > 1, torch.zeros_like(is_in_candidate), is_in_candidate)
            is_in_candidate_list.append(is_in_candidate.to(distances.dtype))
            start_idx = end_idx
        return torch.cat(is_in_candidate_list, dim=-1), torch.cat(candidate_idxs, dim=-1)

    def thres_calculator(self, is_in_candidate: Tensor, candidate_idxs: Tensor,
                         overlaps: Tensor) -> tuple[Tensor, Tensor]:
        n_bs_max_boxes = self.bs * self.n_max_boxes
        _candidate_overlaps = torch.where(is_in_candidate > 0, overlaps, torch.zeros_like(overlaps))
        candidate_idxs = candidate_idxs.reshape([n_bs_max_boxes, -1])
        assist_idxs = self.n_anchors * torch.arange(n_bs_max_boxes, device=candidate_idxs.device)
        flatten_idxs = candidate_idxs + assist_idxs[:, None]
        candidate_overlaps = _candidate_overlaps.reshape(-1)[flatten_idxs]
        candidate_overlaps = candidate_overlaps.reshape([self.bs, self.n_max_boxes, -1])
        overlaps_mean_per_gt = candidate_overlaps.mean(dim=-1, keepdim=True)
        overlaps_std_per_gt = candidate_overlaps.std(dim=-1, keepdim=True)  # faithful: unbiased std
        return overlaps_mean_per_gt + overlaps_std_per_gt, _candidate_overlaps

    def get_targets(self, gt_labels: Tensor, gt_bboxes: Tensor, target_gt_idx: Tensor,
                    fg_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # faithful: batch index built in the label dtype (float64), then cast to long
        batch_idx = torch.arange(self.bs, dtype=gt_labels.dtype, device=gt_labels.device)[..., None]
        target_gt_idx = (target_gt_idx + batch_idx * self.n_max_boxes).long()
        target_labels = gt_labels.flatten()[target_gt_idx.flatten()].reshape([self.bs, self.n_anchors])
        target_labels = torch.where(fg_mask > 0, target_labels, torch.full_like(target_labels, self.bg_idx))
        target_bboxes = gt_bboxes.reshape([-1, 4])[target_gt_idx.flatten()].reshape([self.bs, self.n_anchors, 4])
        # faithful: `.float()` makes the ATSS target scores float32 even in a float64 run
        target_scores = F.one_hot(target_labels.long(), self.num_classes + 1).float()
        target_scores = target_scores[:, :, :self.num_classes]
        return target_labels, target_bboxes, target_scores
