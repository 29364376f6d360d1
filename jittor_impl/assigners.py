"""Label assigners of the official loss: `TaskAlignedAssigner` (TAL, formal) and `ATSSAssigner` (warm-up),
with the utility functions of `yolov6/assigners/assigner_utils.py` (Jittor mirror of reference_torch/assigners.py).

Dtypes follow the source: GT tensors arrive as float64 (built through numpy in `ComputeLoss.preprocess`),
predictions as the model dtype, so IoUs, masks and target scores end up float64 in TAL.

Top-k selection: `torch.topk` on CPU keeps, among values tied at the k-th place, whichever elements libstdc++'s
`std::partial_sort` (heap select, used when 64*k <= n) or `std::nth_element` (otherwise) leaves in front — not the
lowest indices (golden init state: GT (1,1) keeps anchor 1524 of the tied 1461/1524/1587/1650/1713), while
Jittor's own topk sorts. :func:`torch_topk` therefore runs torch's CPU algorithm (`ATen/native/cpu/
SortingKernel.cpp: topk_impl_loop`) verbatim in a `jt.code` C++ kernel: (value, index) pairs compared on the value
only (NaN largest). It equals torch.topk index for index, order included, on tie-heavy data (tests).
"""
from __future__ import annotations

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .iou import const, iou2d_calculator, iou_calculator

__all__ = ["TaskAlignedAssigner", "ATSSAssigner", "dist_calculator", "select_candidates_in_gts",
           "select_highest_overlaps", "iou_calculator", "torch_topk"]

_TOPK_HEADER = r"""
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>
"""
_TOPK_SRC = r"""
// ATen/native/cpu/SortingKernel.cpp topk_impl_loop, one row at a time; accscalar_t of float and double is double
typedef std::pair<double, int64> elem_t;
const int64 rows = in0_shape0, n = in0_shape1, k = out0_shape1;
std::vector<elem_t> queue(n);
auto gt = [](const elem_t& x, const elem_t& y) -> bool {
    return ((std::isnan(x.first) && !std::isnan(y.first)) || (x.first > y.first)); };
auto lt = [](const elem_t& x, const elem_t& y) -> bool {
    return ((!std::isnan(x.first) && std::isnan(y.first)) || (x.first < y.first)); };
for (int64 r = 0; r < rows; r++) {
    for (int64 j = 0; j < n; j++) queue[j] = elem_t((double)@in0(r, j), j);
    if (k * 64 <= n) {
        if (LARGEST) std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), gt);
        else std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), lt);
    } else {
        if (LARGEST) {
            std::nth_element(queue.begin(), queue.begin() + k - 1, queue.end(), gt);
            std::sort(queue.begin(), queue.begin() + k - 1, gt);
        } else {
            std::nth_element(queue.begin(), queue.begin() + k - 1, queue.end(), lt);
            std::sort(queue.begin(), queue.begin() + k - 1, lt);
        }
    }
    for (int64 j = 0; j < k; j++) @out0(r, j) = queue[j].second;
}
"""


def torch_topk(x: jt.Var, k: int, largest: bool = True) -> tuple[jt.Var, jt.Var]:
    """``torch.topk(x, k, dim=-1, largest)`` with torch's CPU tie handling: (values, int64 indices), no gradient."""
    shape = tuple(x.shape)
    rows = 1
    for s in shape[:-1]:
        rows *= s
    flat = x.reshape(rows, shape[-1])
    src = _TOPK_SRC.replace("LARGEST", "true" if largest else "false")
    idx = jt.code([(rows, k)], ["int64"], [flat], cpu_header=_TOPK_HEADER, cpu_src=src)[0].stop_grad()
    values = jt.gather(flat, 1, idx)
    return values.reshape(shape[:-1] + (k,)), idx.reshape(shape[:-1] + (k,))


def dist_calculator(gt_bboxes: jt.Var, anchor_bboxes: jt.Var) -> tuple[jt.Var, jt.Var]:
    """Centre distances [B*n_max, N] between GT boxes [B*n_max, 4] and anchor boxes [N, 4]; also anchor centres."""
    gt_cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
    gt_cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
    gt_points = jt.stack([gt_cx, gt_cy], dim=1)
    ac_cx = (anchor_bboxes[:, 0] + anchor_bboxes[:, 2]) / 2.0
    ac_cy = (anchor_bboxes[:, 1] + anchor_bboxes[:, 3]) / 2.0
    ac_points = jt.stack([ac_cx, ac_cy], dim=1)
    distances = (gt_points[:, None, :] - ac_points[None, :, :]).sqr().sum(-1).sqrt()
    return distances, ac_points


def select_candidates_in_gts(xy_centers: jt.Var, gt_bboxes: jt.Var, eps: float = 1e-9) -> jt.Var:
    """[B, n_max, N] mask (gt dtype) of anchor centres strictly inside each GT (min side distance > eps)."""
    bs, n_max_boxes, _ = gt_bboxes.shape
    # broadcasting instead of the official repeat(): the same elementwise differences
    b_lt = xy_centers[None, None, :, :] - gt_bboxes[:, :, None, 0:2]
    b_rb = gt_bboxes[:, :, None, 2:4] - xy_centers[None, None, :, :]
    bbox_deltas = jt.concat([b_lt, b_rb], dim=-1)
    return (bbox_deltas.min(dim=-1) > const(eps, bbox_deltas)).cast(gt_bboxes.dtype)


def _argmax(x: jt.Var, dim: int) -> jt.Var:
    """``torch.argmax`` (first maximum) as int64; ``jt.argmax`` returns (indices, values)."""
    return jt.argmax(x, dim % x.ndim)[0].int64()  # jt.argmax rejects negative dims


def select_highest_overlaps(mask_pos: jt.Var, overlaps: jt.Var, n_max_boxes: int) -> tuple[jt.Var, jt.Var, jt.Var]:
    """Anchors claimed by several GTs keep the GT with the largest IoU (over ALL GTs of the image)."""
    fg_mask = mask_pos.sum(dim=-2)
    if fg_mask.max().item() > 1:
        mask_multi_gts = (fg_mask.unsqueeze(1) > 1).repeat([1, n_max_boxes, 1])
        max_overlaps_idx = _argmax(overlaps, 1)
        is_max_overlaps = nn.one_hot(max_overlaps_idx, n_max_boxes)
        is_max_overlaps = is_max_overlaps.permute(0, 2, 1).cast(overlaps.dtype)
        mask_pos = jt.ternary(mask_multi_gts, is_max_overlaps, mask_pos.cast(overlaps.dtype))
        fg_mask = mask_pos.sum(dim=-2)
    # faithful: background anchors (all-zero column) get GT index 0 (first maximum)
    target_gt_idx = _argmax(mask_pos, -2)
    return target_gt_idx, fg_mask, mask_pos


class TaskAlignedAssigner(nn.Module):
    """Task-aligned assigner (TOOD): top-k anchors by ``score^alpha * IoU^beta`` inside each GT."""

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        super().__init__()
        self.topk, self.num_classes, self.bg_idx = topk, num_classes, num_classes
        self.alpha, self.beta, self.eps = alpha, beta, eps

    def execute(self, pd_scores: jt.Var, pd_bboxes: jt.Var, anc_points: jt.Var, gt_labels: jt.Var,
                gt_bboxes: jt.Var, mask_gt: jt.Var) -> tuple[jt.Var, jt.Var, jt.Var, jt.Var]:
        """Returns (target_labels [B,N], target_bboxes [B,N,4] px, target_scores [B,N,nc], fg_mask [B,N] bool)."""
        with jt.no_grad():  # the official forward is @torch.no_grad()
            return self._forward(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)

    def _forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
        self.bs = pd_scores.shape[0]
        self.n_max_boxes = gt_bboxes.shape[1]
        if self.n_max_boxes == 0:
            return (jt.full(pd_scores.shape[:-1], self.bg_idx, dtype=pd_scores.dtype),
                    jt.zeros_like(pd_bboxes), jt.zeros_like(pd_scores), jt.zeros(pd_scores.shape[:-1], pd_scores.dtype))

        # faithful: with more than 100 GT slots the batch is processed one image at a time (memory)
        cycle, step, self.bs = (1, self.bs, self.bs) if self.n_max_boxes <= 100 else (self.bs, 1, 1)
        labels_l, bboxes_l, scores_l, fg_l = [], [], [], []
        for i in range(cycle):
            start, end = i * step, (i + 1) * step
            pd_scores_, pd_bboxes_ = pd_scores[start:end, ...], pd_bboxes[start:end, ...]
            gt_labels_, gt_bboxes_ = gt_labels[start:end, ...], gt_bboxes[start:end, ...]
            mask_gt_ = mask_gt[start:end, ...]

            mask_pos, align_metric, overlaps = self.get_pos_mask(
                pd_scores_, pd_bboxes_, gt_labels_, gt_bboxes_, anc_points, mask_gt_)
            target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, self.n_max_boxes)
            target_labels, target_bboxes, target_scores = self.get_targets(
                gt_labels_, gt_bboxes_, target_gt_idx, fg_mask)

            # normalise: each GT's best positive gets its best IoU as the target score
            align_metric = align_metric * mask_pos
            pos_align_metrics = align_metric.max(dim=-1, keepdims=True)
            pos_overlaps = (overlaps * mask_pos).max(dim=-1, keepdims=True)
            norm_align_metric = (align_metric * pos_overlaps / (pos_align_metrics + const(self.eps, align_metric))
                                 ).max(dim=-2).unsqueeze(-1)
            target_scores = target_scores * norm_align_metric

            labels_l.append(target_labels)
            bboxes_l.append(target_bboxes)
            scores_l.append(target_scores)
            fg_l.append(fg_mask)
        return (jt.concat(labels_l, 0), jt.concat(bboxes_l, 0), jt.concat(scores_l, 0),
                jt.concat(fg_l, 0) > 0)

    def get_pos_mask(self, pd_scores, pd_bboxes, gt_labels, gt_bboxes, anc_points, mask_gt):
        align_metric, overlaps = self.get_box_metrics(pd_scores, pd_bboxes, gt_labels, gt_bboxes)
        mask_in_gts = select_candidates_in_gts(anc_points, gt_bboxes)
        mask_topk = self.select_topk_candidates(
            align_metric * mask_in_gts, topk_mask=mask_gt.repeat([1, 1, self.topk]) > 0)
        mask_pos = mask_topk * mask_in_gts * mask_gt
        return mask_pos, align_metric, overlaps

    def get_box_metrics(self, pd_scores, pd_bboxes, gt_labels, gt_bboxes):
        pd_scores = pd_scores.permute(0, 2, 1)
        gt_labels = gt_labels.int64().squeeze(-1)
        # faithful: padded GTs have label -1, which (Python indexing) is the last class; masked out later by mask_gt
        gt_labels = jt.ternary(gt_labels < 0, gt_labels + pd_scores.shape[1], gt_labels)
        batch_ind = jt.arange(self.bs).int64().reshape(-1, 1).repeat(1, self.n_max_boxes)
        bbox_scores = pd_scores[batch_ind, gt_labels]
        overlaps = iou_calculator(gt_bboxes, pd_bboxes)
        align_metric = bbox_scores.pow(self.alpha) * overlaps.pow(self.beta)
        return align_metric, overlaps

    def select_topk_candidates(self, metrics, largest: bool = True, topk_mask=None):
        num_anchors = metrics.shape[-1]
        # faithful: tie order at the k-th value is whatever torch.topk (CPU) returns; torch_topk reproduces it
        topk_metrics, topk_idxs = torch_topk(metrics, self.topk, largest=largest)
        if topk_mask is None:
            topk_mask = (topk_metrics.max(dim=-1, keepdims=True) > self.eps).repeat([1, 1, self.topk])
        # faithful: masked (padded-GT) rows point every slot at anchor 0, removed by the ">1 -> 0" rule below
        topk_idxs = jt.ternary(topk_mask, topk_idxs, jt.zeros_like(topk_idxs))
        is_in_topk = nn.one_hot(topk_idxs, num_anchors).sum(dim=-2)
        is_in_topk = jt.ternary(is_in_topk > 1, jt.zeros_like(is_in_topk), is_in_topk)
        return is_in_topk.cast(metrics.dtype)

    def get_targets(self, gt_labels, gt_bboxes, target_gt_idx, fg_mask):
        batch_ind = jt.arange(self.bs).int64()[..., None]
        target_gt_idx = target_gt_idx + batch_ind * self.n_max_boxes
        target_labels = gt_labels.int64().flatten()[target_gt_idx]
        target_bboxes = gt_bboxes.reshape([-1, 4])[target_gt_idx]
        target_labels = jt.ternary(target_labels < 0, jt.zeros_like(target_labels), target_labels)
        target_scores = nn.one_hot(target_labels, self.num_classes)
        fg_scores_mask = fg_mask[:, :, None].repeat(1, 1, self.num_classes)
        target_scores = jt.ternary(fg_scores_mask > 0, target_scores, jt.zeros_like(target_scores))
        return target_labels, target_bboxes, target_scores


class ATSSAssigner(nn.Module):
    """Adaptive Training Sample Selection: per level the top-k anchors by centre distance, IoU > mean + std."""

    def __init__(self, topk: int = 9, num_classes: int = 80) -> None:
        super().__init__()
        self.topk = topk
        self.num_classes = num_classes
        self.bg_idx = num_classes

    def execute(self, anc_bboxes: jt.Var, n_level_bboxes: list[int], gt_labels: jt.Var, gt_bboxes: jt.Var,
                mask_gt: jt.Var, pd_bboxes: jt.Var | None) -> tuple[jt.Var, jt.Var, jt.Var, jt.Var]:
        """Returns (target_labels [B,N] (bg = nc), target_bboxes [B,N,4] px, target_scores [B,N,nc] float32,
        fg_mask [B,N] bool)."""
        with jt.no_grad():  # the official forward is @torch.no_grad()
            return self._forward(anc_bboxes, n_level_bboxes, gt_labels, gt_bboxes, mask_gt, pd_bboxes)

    def _forward(self, anc_bboxes, n_level_bboxes, gt_labels, gt_bboxes, mask_gt, pd_bboxes):
        self.n_anchors = anc_bboxes.shape[0]
        self.bs = gt_bboxes.shape[0]
        self.n_max_boxes = gt_bboxes.shape[1]
        if self.n_max_boxes == 0:
            return (jt.full([self.bs, self.n_anchors], self.bg_idx, dtype="int64"),
                    jt.zeros([self.bs, self.n_anchors, 4]),
                    jt.zeros([self.bs, self.n_anchors, self.num_classes]),
                    jt.zeros([self.bs, self.n_anchors]))

        overlaps = iou2d_calculator(gt_bboxes.reshape([-1, 4]), anc_bboxes)
        overlaps = overlaps.reshape([self.bs, -1, self.n_anchors])
        distances, ac_points = dist_calculator(gt_bboxes.reshape([-1, 4]), anc_bboxes)
        distances = distances.reshape([self.bs, -1, self.n_anchors])

        is_in_candidate, candidate_idxs = self.select_topk_candidates(distances, n_level_bboxes, mask_gt)
        overlaps_thr_per_gt, iou_candidates = self.thres_calculator(is_in_candidate, candidate_idxs, overlaps)
        # faithful: strict ">" against mean + unbiased std
        is_pos = jt.ternary(iou_candidates > overlaps_thr_per_gt.repeat([1, 1, self.n_anchors]),
                            is_in_candidate, jt.zeros_like(is_in_candidate))
        is_in_gts = select_candidates_in_gts(ac_points, gt_bboxes)
        mask_pos = is_pos * is_in_gts * mask_gt
        target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, self.n_max_boxes)
        target_labels, target_bboxes, target_scores = self.get_targets(gt_labels, gt_bboxes, target_gt_idx, fg_mask)

        if pd_bboxes is not None:  # soft labels: IoU between the assigned GT and the predicted box
            ious = iou_calculator(gt_bboxes, pd_bboxes) * mask_pos
            ious = ious.max(dim=-2).unsqueeze(-1)
            # faithful: the official in-place product keeps target_scores float32 (rounds the float64 IoU)
            target_scores = (target_scores * ious).cast(target_scores.dtype)
        return target_labels.int64(), target_bboxes, target_scores, fg_mask > 0

    def select_topk_candidates(self, distances, n_level_bboxes, mask_gt):
        mask_gt = mask_gt.repeat(1, 1, self.topk) > 0
        is_in_candidate_list, candidate_idxs = [], []
        start_idx = 0
        for per_level_boxes in n_level_bboxes:
            end_idx = start_idx + per_level_boxes
            per_level_distances = distances[:, :, start_idx:end_idx]
            selected_k = min(self.topk, per_level_boxes)
            _, per_level_topk_idxs = torch_topk(per_level_distances, selected_k, largest=False)
            candidate_idxs.append(per_level_topk_idxs + start_idx)
            per_level_topk_idxs = jt.ternary(mask_gt, per_level_topk_idxs, jt.zeros_like(per_level_topk_idxs))
            is_in_candidate = nn.one_hot(per_level_topk_idxs, per_level_boxes).sum(dim=-2)
            is_in_candidate = jt.ternary(is_in_candidate > 1, jt.zeros_like(is_in_candidate), is_in_candidate)
            is_in_candidate_list.append(is_in_candidate.cast(distances.dtype))
            start_idx = end_idx
        return jt.concat(is_in_candidate_list, dim=-1), jt.concat(candidate_idxs, dim=-1)

    def thres_calculator(self, is_in_candidate, candidate_idxs, overlaps):
        n_bs_max_boxes = self.bs * self.n_max_boxes
        _candidate_overlaps = jt.ternary(is_in_candidate > 0, overlaps, jt.zeros_like(overlaps))
        candidate_idxs = candidate_idxs.reshape([n_bs_max_boxes, -1])
        assist_idxs = self.n_anchors * jt.arange(n_bs_max_boxes).int64()
        flatten_idxs = candidate_idxs + assist_idxs[:, None]
        candidate_overlaps = _candidate_overlaps.reshape(-1)[flatten_idxs]
        candidate_overlaps = candidate_overlaps.reshape([self.bs, self.n_max_boxes, -1])
        overlaps_mean_per_gt = candidate_overlaps.mean(dim=-1, keepdims=True)
        # faithful: unbiased std like torch.std (jt.std would also clamp the variance at 1e-6)
        n = candidate_overlaps.shape[-1]
        var = (candidate_overlaps - overlaps_mean_per_gt).sqr().sum(dim=-1, keepdims=True) / (n - 1)
        return overlaps_mean_per_gt + var.sqrt(), _candidate_overlaps

    def get_targets(self, gt_labels, gt_bboxes, target_gt_idx, fg_mask):
        # faithful: batch index built in the label dtype (float64), then cast to long
        batch_idx = jt.arange(self.bs).cast(gt_labels.dtype)[..., None]
        target_gt_idx = (target_gt_idx + batch_idx * self.n_max_boxes).int64()
        target_labels = gt_labels.flatten()[target_gt_idx.flatten()].reshape([self.bs, self.n_anchors])
        target_labels = jt.ternary(fg_mask > 0, target_labels, jt.full_like(target_labels, self.bg_idx))
        target_bboxes = gt_bboxes.reshape([-1, 4])[target_gt_idx.flatten()].reshape([self.bs, self.n_anchors, 4])
        # faithful: `.float()` makes the ATSS target scores float32 even in a float64 run
        target_scores = nn.one_hot(target_labels.int64(), self.num_classes + 1).float32()
        target_scores = target_scores[:, :, :self.num_classes]
        return target_labels, target_bboxes, target_scores
