"""IoU functions used by the official loss and assigners (Jittor mirror of reference_torch/iou.py).

* `IOUloss` — `yolov6/utils/figure_iou.py` (giou / diou / ciou / siou; any other type falls back to plain IoU).
* `iou2d_calculator` / `bbox_overlaps` — `yolov6/assigners/iou2d_calculator.py` (mmdet copy, used by ATSS).
* `iou_calculator` — `yolov6/assigners/assigner_utils.py` (batched GT x prediction IoU, used by TAL and ATSS).

Two Jittor/torch differences are handled explicitly (docs/jittor-notes.md, "Numerics against PyTorch"):
* a Python float is a float32 constant even next to a float64 tensor, so constants go through :func:`const`;
* a float32 x float64 op gives float64 in both, but Jittor then also hands a float64 gradient to the float32
  input (and everything upstream of it back-propagates in float64), where torch casts the gradient back to
  float32 at that op. :func:`up` casts the float32 operand explicitly at each such op, whose backward is the cast
  back, so the dtype of every forward and backward value matches torch.
"""
from __future__ import annotations

import math

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt


def result_dtype(*xs: jt.Var) -> str:
    """torch's type promotion for float Vars: float64 if any operand is float64, else float32."""
    return "float64" if any(str(x.dtype) == "float64" for x in xs) else "float32"


def up(x: jt.Var, dtype: str) -> jt.Var:
    """``x`` promoted to ``dtype`` for one mixed-dtype op (torch's implicit promotion, gradient cast back)."""
    return x if str(x.dtype) == dtype else x.cast(dtype)


def const(value: float, like: jt.Var | str) -> jt.Var:
    """The Python number ``value`` as a [1] Var in ``like``'s dtype (torch's scalar semantics)."""
    return jt.array(value, like if isinstance(like, str) else str(like.dtype))


# Differentiable min/max/clamp/abs with torch's gradients. Jittor's own versions differ exactly at ties:
# jt.maximum/minimum give the whole gradient to the second input (torch: half to each), clamp passes no
# gradient at the bound (torch: x >= min passes) and abs'(0) is 1 (torch: 0). Forward values are identical.
def maximum(a: jt.Var, b: jt.Var) -> jt.Var:
    """``torch.maximum`` (a tie sends half of the gradient to each input)."""
    dt = result_dtype(a, b)
    a, b = up(a, dt), up(b, dt)
    return jt.ternary(a > b, a, jt.ternary(a < b, b, (a + b) * 0.5))


def minimum(a: jt.Var, b: jt.Var) -> jt.Var:
    """``torch.minimum`` (a tie sends half of the gradient to each input)."""
    dt = result_dtype(a, b)
    a, b = up(a, dt), up(b, dt)
    return jt.ternary(a < b, a, jt.ternary(a > b, b, (a + b) * 0.5))


def clamp_min(x: jt.Var, low: float) -> jt.Var:
    """``x.clamp(low)`` (gradient passes where x >= low)."""
    lo = const(low, x).broadcast(x.shape)
    return jt.ternary(x >= lo, x, lo)


def abs_(x: jt.Var) -> jt.Var:
    """``torch.abs`` (zero gradient at 0)."""
    return jt.ternary(x > 0, x, jt.ternary(x < 0, -x, x * 0))


def _split4(box: jt.Var) -> tuple[jt.Var, jt.Var, jt.Var, jt.Var]:
    """``torch.split(box, 1, dim=-1)`` for the 4 box columns."""
    return box[..., 0:1], box[..., 1:2], box[..., 2:3], box[..., 3:4]


class IOUloss:
    """IoU loss ``1 - iou_variant(box1, box2)``, elementwise over matched boxes ([P,4] -> [P,1])."""

    def __init__(self, box_format: str = "xywh", iou_type: str = "ciou", reduction: str = "none",
                 eps: float = 1e-7) -> None:
        self.box_format = box_format
        self.iou_type = iou_type.lower()
        self.reduction = reduction
        self.eps = eps

    def __call__(self, box1: jt.Var, box2: jt.Var) -> jt.Var:
        if box1.shape[0] != box2.shape[0]:
            # faithful: mismatched counts are treated as column-major boxes (box2 transposed)
            box2 = box2.transpose()
            if self.box_format == "xyxy":
                b1_x1, b1_y1, b1_x2, b1_y2 = box1[0], box1[1], box1[2], box1[3]
                b2_x1, b2_y1, b2_x2, b2_y2 = box2[0], box2[1], box2[2], box2[3]
            else:
                b1_x1, b1_x2 = box1[0] - box1[2] / 2, box1[0] + box1[2] / 2
                b1_y1, b1_y2 = box1[1] - box1[3] / 2, box1[1] + box1[3] / 2
                b2_x1, b2_x2 = box2[0] - box2[2] / 2, box2[0] + box2[2] / 2
                b2_y1, b2_y2 = box2[1] - box2[3] / 2, box2[1] + box2[3] / 2
        elif self.box_format == "xyxy":
            b1_x1, b1_y1, b1_x2, b1_y2 = _split4(box1)
            b2_x1, b2_y1, b2_x2, b2_y2 = _split4(box2)
        else:
            b1_x1, b1_y1, b1_w, b1_h = _split4(box1)
            b2_x1, b2_y1, b2_w, b2_h = _split4(box2)
            b1_x1, b1_x2 = b1_x1 - b1_w / 2, b1_x1 + b1_w / 2
            b1_y1, b1_y2 = b1_y1 - b1_h / 2, b1_y1 + b1_h / 2
            b2_x1, b2_x2 = b2_x1 - b2_w / 2, b2_x1 + b2_w / 2
            b2_y1, b2_y2 = b2_y1 - b2_h / 2, b2_y1 + b2_h / 2

        ref = result_dtype(b1_x1, b2_x1)  # float32 prediction vs float64 target -> float64, as in torch
        eps = const(self.eps, ref)
        inter = clamp_min(minimum(b1_x2, b2_x2) - maximum(b1_x1, b2_x1), 0) * \
                clamp_min(minimum(b1_y2, b2_y2) - maximum(b1_y1, b2_y1), 0)
        # faithful: eps is added to the heights only, and once more to the union
        w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + const(self.eps, b1_y1)
        w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + const(self.eps, b2_y1)
        # promotions below mirror torch's: w1, h1 and w1*h1 are float32 for a float32 prediction, the rest mixes
        union = up(w1 * h1, ref) + w2 * h2 - inter + eps
        iou = inter / union

        cw = maximum(b1_x2, b2_x2) - minimum(b1_x1, b2_x1)  # enclosing width
        ch = maximum(b1_y2, b2_y2) - minimum(b1_y1, b2_y1)  # enclosing height
        if self.iou_type == "giou":
            c_area = cw * ch + eps  # faithful: eps inside the enclosing area (numerator and denominator)
            iou = iou - (c_area - union) / c_area
        elif self.iou_type in ("diou", "ciou"):
            c2 = cw.sqr() + ch.sqr() + eps
            rho2 = ((b2_x1 + b2_x2 - up(b1_x1, ref) - up(b1_x2, ref)).sqr() +
                    (b2_y1 + b2_y2 - up(b1_y1, ref) - up(b1_y2, ref)).sqr()) / 4
            if self.iou_type == "diou":
                iou = iou - rho2 / c2
            else:
                v = const(4 / math.pi ** 2, ref) * (jt.atan(w2 / h2) - up(jt.atan(w1 / h1), ref)).sqr()
                with jt.no_grad():
                    alpha = v / (v - iou + const(1 + self.eps, ref))
                iou = iou - (rho2 / c2 + v * alpha)
        elif self.iou_type == "siou":
            # faithful: eps added to the centre offsets, threshold sqrt(2)/2 picks the smaller sine
            s_cw = (b2_x1 + b2_x2 - up(b1_x1, ref) - up(b1_x2, ref)) * 0.5 + eps
            s_ch = (b2_y1 + b2_y2 - up(b1_y1, ref) - up(b1_y2, ref)) * 0.5 + eps
            sigma = (s_cw.sqr() + s_ch.sqr()).sqrt()  # torch.pow(., 0.5) is computed as sqrt
            sin_alpha_1 = abs_(s_cw) / sigma
            sin_alpha_2 = abs_(s_ch) / sigma
            threshold = const(pow(2, 0.5) / 2, ref)
            sin_alpha = jt.ternary(sin_alpha_1 > threshold, sin_alpha_2, sin_alpha_1)
            angle_cost = jt.cos(jt.arcsin(sin_alpha) * 2 - const(math.pi / 2, ref))
            rho_x = (s_cw / cw).sqr()
            rho_y = (s_ch / ch).sqr()
            gamma = angle_cost - 2
            distance_cost = 2 - jt.exp(gamma * rho_x) - jt.exp(gamma * rho_y)
            omiga_w = abs_(up(w1, ref) - w2) / maximum(w1, w2)
            omiga_h = abs_(up(h1, ref) - h2) / maximum(h1, h2)
            shape_cost = (1 - jt.exp(-1 * omiga_w)).pow(4) + (1 - jt.exp(-1 * omiga_h)).pow(4)
            iou = iou - 0.5 * (distance_cost + shape_cost)
        loss = 1.0 - iou

        if self.reduction == "sum":
            loss = loss.sum()
        elif self.reduction == "mean":
            loss = loss.mean()
        return loss


def bbox_overlaps(bboxes1: jt.Var, bboxes2: jt.Var, mode: str = "iou", is_aligned: bool = False,
                  eps: float = 1e-6) -> jt.Var:
    """mmdet ``bbox_overlaps``: IoU / IoF / GIoU between xyxy boxes ([..., m, 4] x [..., n, 4] -> [..., m, n])."""
    assert mode in ("iou", "iof", "giou"), f"Unsupported mode {mode}"
    assert bboxes1.shape[-1] == 4 or bboxes1.shape[0] == 0
    assert bboxes2.shape[-1] == 4 or bboxes2.shape[0] == 0
    assert tuple(bboxes1.shape[:-2]) == tuple(bboxes2.shape[:-2])
    batch_shape = tuple(bboxes1.shape[:-2])
    rows, cols = bboxes1.shape[-2], bboxes2.shape[-2]
    if is_aligned:
        assert rows == cols
    if rows * cols == 0:
        return jt.zeros(batch_shape + ((rows,) if is_aligned else (rows, cols)), dtype=bboxes1.dtype)

    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
    if is_aligned:
        lt = jt.maximum(bboxes1[..., :2], bboxes2[..., :2])
        rb = jt.minimum(bboxes1[..., 2:], bboxes2[..., 2:])
        wh = (rb - lt).clamp(min_v=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1 + area2 - overlap if mode in ("iou", "giou") else area1
        if mode == "giou":
            enclosed_lt = jt.minimum(bboxes1[..., :2], bboxes2[..., :2])
            enclosed_rb = jt.maximum(bboxes1[..., 2:], bboxes2[..., 2:])
    else:
        lt = jt.maximum(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
        rb = jt.minimum(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])
        wh = (rb - lt).clamp(min_v=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1[..., None] + area2[..., None, :] - overlap if mode in ("iou", "giou") else area1[..., None]
        if mode == "giou":
            enclosed_lt = jt.minimum(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
            enclosed_rb = jt.maximum(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])

    eps_t = const(eps, union)
    union = jt.maximum(union, eps_t)  # faithful: union floored at eps (not eps added)
    ious = overlap / union
    if mode in ("iou", "iof"):
        return ious
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min_v=0)
    enclose_area = jt.maximum(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


def iou2d_calculator(bboxes1: jt.Var, bboxes2: jt.Var, mode: str = "iou", is_aligned: bool = False,
                     scale: float = 1.0, dtype: str | None = None) -> jt.Var:
    """mmdet ``BboxOverlaps2D.__call__`` as copied into yolov6 (accepts an optional 5th score column)."""
    assert bboxes1.shape[-1] in (0, 4, 5)
    assert bboxes2.shape[-1] in (0, 4, 5)
    if bboxes2.shape[-1] == 5:
        bboxes2 = bboxes2[..., :4]
    if bboxes1.shape[-1] == 5:
        bboxes1 = bboxes1[..., :4]
    if dtype == "fp16":
        return bbox_overlaps((bboxes1 / scale).float16(), (bboxes2 / scale).float16(), mode, is_aligned).float32()
    return bbox_overlaps(bboxes1, bboxes2, mode, is_aligned)


def iou_calculator(box1: jt.Var, box2: jt.Var, eps: float = 1e-9) -> jt.Var:
    """Batched IoU: box1 [B, M1, 4] (GTs), box2 [B, M2, 4] (predictions) -> [B, M1, M2]."""
    box1 = box1.unsqueeze(2)
    box2 = box2.unsqueeze(1)
    px1y1, px2y2 = box1[:, :, :, 0:2], box1[:, :, :, 2:4]
    gx1y1, gx2y2 = box2[:, :, :, 0:2], box2[:, :, :, 2:4]
    x1y1 = jt.maximum(px1y1, gx1y1)
    x2y2 = jt.minimum(px2y2, gx2y2)
    wh = (x2y2 - x1y1).clamp(min_v=0)
    overlap = wh[..., 0] * wh[..., 1]  # prod(-1) over the 2 sides
    wh1 = (px2y2 - px1y1).clamp(min_v=0)
    wh2 = (gx2y2 - gx1y1).clamp(min_v=0)
    area1 = wh1[..., 0] * wh1[..., 1]
    area2 = wh2[..., 0] * wh2[..., 1]
    union = area1 + area2 - overlap + const(eps, overlap)  # faithful: eps added to the union (TAL)
    return overlap / union
