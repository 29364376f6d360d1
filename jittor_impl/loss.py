"""Official YOLOv6 / GOLD-YOLO training loss (`yolov6/models/losses/loss.py`): VFL + IoU + DFL with the TAL
assigner (ATSS during warm-up epochs). Jittor mirror of reference_torch/loss.py.

Precision follows the source: `preprocess` builds the targets through numpy as float64, so GT boxes, IoUs,
target scores, the VFL weight and the total loss are float64 even when the model runs in float32; the BCE inside
VFL is float32. Jittor differs from torch in ways this file works around explicitly (docs/jittor-notes.md, "Numerics against PyTorch"):
`jt.array(float64 ndarray)` is float32 unless the dtype is given, Python scalars are float32 constants,
int64 x float32 promotes to float64, a float32 x float64 op hands a float64 gradient to its float32 input (`iou.up`
casts explicitly, as torch does), float32 sums are sequential (see `total_sum`), and `nn.bce_loss` clamps p at
1e-20 instead of torch's log clamp at -100.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt
from jittor import nn

from .anchors import bbox2dist, dist2bbox, generate_anchors, xywh2xyxy
from .assigners import ATSSAssigner, TaskAlignedAssigner
from .iou import IOUloss, const, result_dtype, up

__all__ = ["VarifocalLoss", "BboxLoss", "ComputeLoss", "build_loss", "binary_cross_entropy"]

# torch's CPU binary_cross_entropy forward and backward kernels (ATen/native/Loss.cpp), elementwise, verbatim.
# Jittor compiles its kernels with -Ofast (FMA contraction, reassociation, vector math); these two functions are
# compiled without fast-math so that every float32 operation rounds exactly as in torch (bit-identical, tested).
_BCE_HEADER = r"""
#include <algorithm>
#include <cmath>
__attribute__((noinline, optimize("no-fast-math", "fp-contract=off")))
static float torch_bce_forward(float x, float y) {
    return (y - 1.0f) * std::max(std::log1p(-x), -100.0f) - y * std::max(std::log(x), -100.0f);
}
__attribute__((noinline, optimize("no-fast-math", "fp-contract=off")))
static float torch_bce_backward(float g, float x, float y) {
    return g * (x - y) / std::max((1.0f - x) * x, 1e-12f);
}
"""


class _BinaryCrossEntropy(jt.Function):
    """Elementwise ``F.binary_cross_entropy(x, y, reduction='none')`` on float32, with torch's gradient
    ``g * (x - y) / max((1 - x) * x, 1e-12)`` (not the derivative of the clamped forward)."""

    def execute(self, x: jt.Var, y: jt.Var) -> jt.Var:
        self.saved = (x, y)
        flat_x, flat_y = x.reshape(-1), y.reshape(-1)
        out = jt.code(flat_x.shape, "float32", [flat_x, flat_y], cpu_header=_BCE_HEADER,
                      cpu_src="for (int64 i = 0; i < in0_shape0; i++) @out(i) = torch_bce_forward(@in0(i), @in1(i));")
        return out.reshape(x.shape)

    def grad(self, grad_out: jt.Var) -> tuple[jt.Var, None]:
        x, y = self.saved
        g = grad_out.float32().reshape(-1)
        out = jt.code(g.shape, "float32", [g, x.reshape(-1), y.reshape(-1)], cpu_header=_BCE_HEADER,
                      cpu_src="for (int64 i = 0; i < in0_shape0; i++) "
                              "@out(i) = torch_bce_backward(@in0(i), @in1(i), @in2(i));")
        return out.reshape(x.shape), None  # like torch here: the target never needs a gradient


def binary_cross_entropy(x: jt.Var, y: jt.Var) -> jt.Var:
    """torch ``F.binary_cross_entropy(x, y, reduction='none')`` for float32 probabilities (log clamped at -100)."""
    assert str(x.dtype) == "float32" and str(y.dtype) == "float32", "the official BCE runs in float32"
    return _BinaryCrossEntropy.apply(x, y)


def total_sum(x: jt.Var) -> jt.Var:
    """``x.sum()`` with torch's accuracy. Jittor reduces float32 sequentially: on the 210k VFL terms of the ATSS
    golden that is 4e-4 off, while torch's cascade summation is within 1e-7. A float32 sum is therefore
    accumulated in float64 and rounded back to float32 (the result dtype torch has)."""
    if str(x.dtype) == "float32":
        return x.float64().sum().float32()
    return x.sum()


def cross_entropy(logits: jt.Var, target: jt.Var) -> jt.Var:
    """torch ``F.cross_entropy(logits [R,C], target [R] int, reduction='none')`` = -log_softmax[target]."""
    log_prob = nn.softmax(logits, dim=-1, log=True)  # x - max - log(sum(exp(x - max))), like torch's log_softmax
    pick = nn.one_hot(target, logits.shape[-1]).cast(logits.dtype)  # exact: one term times 1, the rest times 0
    return -(log_prob * pick).sum(-1)


class VarifocalLoss(nn.Module):
    """Varifocal loss on probabilities (the head already applied the sigmoid), summed."""

    def execute(self, pred_score: jt.Var, gt_score: jt.Var, label: jt.Var, alpha: float = 0.75,
                gamma: float = 2.0) -> jt.Var:
        # faithful: the weight is NOT detached, so gradient also flows through alpha*p^gamma
        # torch promotion: alpha*p^gamma*(1-label) stays in the prediction dtype, gt_score*label in the target dtype
        # (Jittor would make int64 x float32 float64, so the label is cast explicitly)
        p_gamma = pred_score * pred_score if gamma == 2.0 else pred_score.pow(gamma)  # torch computes pow(x, 2) as x*x
        focal = const(alpha, pred_score) * p_gamma * (1 - label).cast(pred_score.dtype)
        target = gt_score * label.cast(gt_score.dtype)
        dt = result_dtype(focal, target)
        weight = up(focal, dt) + up(target, dt)
        # faithful: BCE computed in float32 via .float(), even in a float64 run
        bce = binary_cross_entropy(pred_score.float32(), gt_score.float32())
        return total_sum(up(bce, dt) * weight)


class BboxLoss(nn.Module):
    """IoU loss and distribution focal loss on the positive anchors, weighted by their target score."""

    def __init__(self, num_classes: int, reg_max: int, use_dfl: bool = False, iou_type: str = "giou") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.iou_loss = IOUloss(box_format="xyxy", iou_type=iou_type, eps=1e-10)
        self.reg_max = reg_max
        self.use_dfl = use_dfl

    def execute(self, pred_dist: jt.Var, pred_bboxes: jt.Var, anchor_points: jt.Var, target_bboxes: jt.Var,
                target_scores: jt.Var, target_scores_sum: jt.Var, fg_mask: jt.Var) -> tuple[jt.Var, jt.Var]:
        num_pos = int(fg_mask.sum().item())
        if num_pos > 0:
            # masked_select == gather of the positive anchors in row-major order (fg_mask carries no gradient)
            pos = jt.where(fg_mask.reshape(-1))[0]
            pred_bboxes_pos = pred_bboxes.reshape([-1, 4])[pos]
            target_bboxes_pos = target_bboxes.reshape([-1, 4])[pos]
            bbox_weight = target_scores.sum(-1).reshape(-1)[pos].unsqueeze(-1)
            loss_iou = self.iou_loss(pred_bboxes_pos, target_bboxes_pos) * bbox_weight
            loss_iou = loss_iou.sum() if target_scores_sum.item() == 0 else loss_iou.sum() / target_scores_sum

            if self.use_dfl:
                pred_dist_pos = pred_dist.reshape([-1, 4 * (self.reg_max + 1)])[pos].reshape([-1, 4, self.reg_max + 1])
                target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max)
                target_ltrb_pos = target_ltrb.reshape([-1, 4])[pos]
                loss_dfl = self._df_loss(pred_dist_pos, target_ltrb_pos) * bbox_weight
                loss_dfl = loss_dfl.sum() if target_scores_sum.item() == 0 else loss_dfl.sum() / target_scores_sum
            else:
                loss_dfl = pred_dist.sum() * 0.0  # keeps the graph connected
        else:
            loss_iou = pred_dist.sum() * 0.0
            loss_dfl = pred_dist.sum() * 0.0
        return loss_iou, loss_dfl

    def _df_loss(self, pred_dist: jt.Var, target: jt.Var) -> jt.Var:
        target_left = target.int64()  # truncation == floor (targets are clipped to >= 0); no gradient
        target_right = target_left + 1
        # faithful: float32 right bin minus the float64 target -> float64 weights
        weight_left = target_right.float32() - target
        weight_right = 1 - weight_left
        logits = pred_dist.reshape([-1, self.reg_max + 1])
        dt = result_dtype(logits, weight_left)
        loss_left = up(cross_entropy(logits, target_left.reshape(-1)).reshape(target_left.shape), dt) * weight_left
        loss_right = up(cross_entropy(logits, target_right.reshape(-1)).reshape(target_left.shape), dt) * weight_right
        return (loss_left + loss_right).mean(-1, keepdims=True)


class ComputeLoss:
    """Loss computation (official `ComputeLoss`). Call with ``(feats, pred_scores, pred_distri)``."""

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
        # float32 like the source (a frozen Parameter there); bbox_decode uses it in the prediction dtype, which is
        # what a float64 run does after replacing it by a float64 copy (golden step 7)
        self.proj = jt.linspace(0, reg_max, reg_max + 1).float32().stop_grad()
        self.iou_type = iou_type
        self.varifocal_loss = VarifocalLoss()
        self.bbox_loss = BboxLoss(num_classes, reg_max, use_dfl, iou_type)
        self.loss_weight = dict(loss_weight or {"class": 1.0, "iou": 2.5, "dfl": 0.5})

    def __call__(self, outputs: Sequence, targets: Any, epoch_num: int, step_num: int) -> tuple[jt.Var, jt.Var]:
        """Returns (loss, [2.5*iou, 0.5*dfl, 1.0*cls] detached). ``targets`` [M,6] rows (img, cls, cx, cy, w, h)."""
        feats, pred_scores, pred_distri = outputs[0], outputs[1], outputs[2]
        anchors, anchor_points, n_anchors_list, stride_tensor = generate_anchors(
            feats, self.fpn_strides, self.grid_cell_size, self.grid_cell_offset)
        assert pred_scores.dtype == pred_distri.dtype
        batch_size = pred_scores.shape[0]

        targets = self.preprocess(targets, batch_size, float(self.ori_img_size))
        gt_labels = targets[:, :, :1]
        gt_bboxes = targets[:, :, 1:]  # xyxy px, float64
        mask_gt = (gt_bboxes.sum(-1, keepdims=True) > 0).float32()

        anchor_points_s = anchor_points / stride_tensor
        pred_bboxes = self.bbox_decode(anchor_points_s, pred_distri)  # xyxy, grid units

        if epoch_num < self.warmup_epoch:
            target_labels, target_bboxes, target_scores, fg_mask = self.warmup_assigner(
                anchors, n_anchors_list, gt_labels, gt_bboxes, mask_gt, pred_bboxes.detach() * stride_tensor)
        else:
            target_labels, target_bboxes, target_scores, fg_mask = self.formal_assigner(
                pred_scores.detach(), pred_bboxes.detach() * stride_tensor, anchor_points,
                gt_labels, gt_bboxes, mask_gt)

        target_bboxes = target_bboxes / stride_tensor  # the source divides in place

        target_labels = jt.ternary(fg_mask > 0, target_labels.int64(),
                                   jt.full(target_labels.shape, self.num_classes, dtype="int64"))
        one_hot_label = nn.one_hot(target_labels, self.num_classes + 1)[..., :-1]
        loss_cls = self.varifocal_loss(pred_scores, target_scores, one_hot_label)

        target_scores_sum = total_sum(target_scores)
        if target_scores_sum.item() > 0:  # avoid dividing by zero (loss_cls is 0 then anyway)
            loss_cls = loss_cls / target_scores_sum

        loss_iou, loss_dfl = self.bbox_loss(pred_distri, pred_bboxes, anchor_points_s, target_bboxes,
                                            target_scores, target_scores_sum, fg_mask)
        w = self.loss_weight
        # float64 (TAL); in the ATSS path loss_cls is float32 (float32 target scores) and promotes here
        terms = [const(w[k], term) * term for k, term in (("class", loss_cls), ("iou", loss_iou), ("dfl", loss_dfl))]
        dt = result_dtype(*terms)
        cls_term, iou_term, dfl_term = (up(term, dt) for term in terms)
        loss = cls_term + iou_term + dfl_term
        # torch: .detach() of a fresh cat; stop_grad marks the fresh concat only
        items = jt.concat([iou_term.reshape(1), dfl_term.reshape(1), cls_term.reshape(1)]).stop_grad()
        return loss, items

    def preprocess(self, targets: Any, batch_size: int, scale: float) -> jt.Var:
        """[M,6] -> [B, n_max, 5] float64 (cls, x1, y1, x2, y2 px), padded with (-1, 0, 0, 0, 0)."""
        # faithful: built through Python lists / numpy, hence float64 whatever the model dtype. The targets carry no
        # gradient; numpy also keeps the float64 arithmetic exactly torch's (no fused/reassociated kernels).
        rows = targets.numpy() if isinstance(targets, jt.Var) else np.asarray(targets)
        targets_list = np.zeros((batch_size, 1, 5)).tolist()
        for item in rows.tolist():
            targets_list[int(item[0])].append(item[1:])
        max_len = max(len(lst) for lst in targets_list)
        padded = np.array([lst + [[-1, 0, 0, 0, 0]] * (max_len - len(lst)) for lst in targets_list])
        out = padded[:, 1:, :].copy()
        out[:, :, 1:5] *= np.float64(scale)
        out[..., 1:] = xywh2xyxy(out[:, :, 1:5])
        return jt.array(out, "float64")

    def bbox_decode(self, anchor_points: jt.Var, pred_dist: jt.Var) -> jt.Var:
        """Predicted distances (DFL expectation if use_dfl) -> xyxy boxes in grid units."""
        if self.use_dfl:
            batch_size, n_anchors, _ = pred_dist.shape
            prob = nn.softmax(pred_dist.reshape([batch_size, n_anchors, 4, self.reg_max + 1]), dim=-1)
            pred_dist = (prob * self.proj.cast(pred_dist.dtype)).sum(-1)  # softmax @ linspace(0, reg_max)
        return dist2bbox(pred_dist, anchor_points)


def build_loss(name: str, num_classes: int = 80, img_size: int = 640, use_dfl: bool | None = None,
               reg_max: int | None = None, iou_type: str | None = None,
               warmup_epoch: int | None = None) -> ComputeLoss:
    """`ComputeLoss` as the official engine builds it for variant `name`; `None` means the config value."""
    from .configs import get_config  # pure-Python config data

    cfg = get_config(name, use_dfl=use_dfl, reg_max=reg_max, iou_type=iou_type, atss_warmup_epoch=warmup_epoch)
    return ComputeLoss(fpn_strides=cfg.strides, num_classes=num_classes, ori_img_size=img_size,
                       warmup_epoch=cfg.atss_warmup_epoch, use_dfl=cfg.use_dfl, reg_max=cfg.reg_max,
                       iou_type=cfg.iou_type)
