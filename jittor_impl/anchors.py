"""Anchor points and box <-> distance transforms (Jittor mirror of reference_torch/anchors.py).

Official sources: ``yolov6/assigners/anchor_generator.py: generate_anchors`` and
``yolov6/utils/general.py: dist2bbox, bbox2dist``. Notes: docs/gold-yolo-notes.md, "Anchors".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt


def _grid(h: int, w: int, offset: float, stride: float, dtype: str) -> tuple[jt.Var, jt.Var]:
    """Row-major (y outer, x inner) cell centres ``(arange + offset) * stride``, each flattened to [h*w].

    Built in float32 (int arange + Python float) and cast afterwards, like the official code.
    """
    shift_x = (jt.arange(w).float32() + offset) * stride
    shift_y = (jt.arange(h).float32() + offset) * stride
    # meshgrid(shift_y, shift_x, indexing='ij') flattened: x varies fastest.
    sx = shift_x.reshape(1, w).broadcast((h, w)).reshape(-1).cast(dtype)
    sy = shift_y.reshape(h, 1).broadcast((h, w)).reshape(-1).cast(dtype)
    return sx, sy


def generate_anchors(
    feats: Sequence[jt.Var],
    fpn_strides: Sequence[int],
    grid_cell_size: float = 5.0,
    grid_cell_offset: float = 0.5,
    device: str | None = None,
    is_eval: bool = False,
    mode: str = "af",
):
    """Anchors for the feature maps ``feats`` (only their shapes and dtype are read).

    Train (``is_eval=False``): ``(anchors [N,4] px xyxy squares of side grid_cell_size*stride, anchor_points [N,2] px,
    num_anchors_list, stride_tensor [N,1])`` in ``feats[0].dtype``.
    Eval: ``(anchor_points [N,2] in grid units, stride_tensor [N,1])`` in float32, like the official ``torch.float``.
    ``mode='ab'`` repeats every level 3x (fuse_ab head only). ``device`` is accepted for signature parity and ignored.
    """
    assert feats is not None
    anchors: list[jt.Var] = []
    anchor_points: list[jt.Var] = []
    stride_tensor: list[jt.Var] = []
    num_anchors_list: list[int] = []
    reps = 3 if mode == "ab" else 1
    if mode not in ("af", "ab"):
        raise ValueError(f"unknown anchor mode {mode!r}")
    if is_eval:
        for i, stride in enumerate(fpn_strides):
            _, _, h, w = feats[i].shape
            sx, sy = _grid(h, w, grid_cell_offset, 1.0, "float32")
            point = jt.stack([sx, sy], dim=-1)
            strides = jt.full((h * w, 1), float(stride), dtype="float32")
            anchor_points.append(point.repeat(reps, 1) if reps > 1 else point)
            stride_tensor.append(strides.repeat(reps, 1) if reps > 1 else strides)
        return jt.concat(anchor_points).stop_grad(), jt.concat(stride_tensor).stop_grad()

    dtype = str(feats[0].dtype)
    for i, stride in enumerate(fpn_strides):
        _, _, h, w = feats[i].shape
        half = grid_cell_size * stride * 0.5
        sx, sy = _grid(h, w, grid_cell_offset, float(stride), "float32")
        anchor = jt.stack([sx - half, sy - half, sx + half, sy + half], dim=-1).cast(dtype)
        point = jt.stack([sx, sy], dim=-1).cast(dtype)
        if reps > 1:
            anchor, point = anchor.repeat(reps, 1), point.repeat(reps, 1)
        anchors.append(anchor)
        anchor_points.append(point)
        num_anchors_list.append(int(anchor.shape[0]))
        stride_tensor.append(jt.full((num_anchors_list[-1], 1), float(stride), dtype=dtype))
    return (
        jt.concat(anchors).stop_grad(),
        jt.concat(anchor_points).stop_grad(),
        num_anchors_list,
        jt.concat(stride_tensor).stop_grad(),
    )


def dist2bbox(distance: jt.Var, anchor_points: jt.Var, box_format: str = "xyxy") -> jt.Var:
    """Distances (l, t, r, b) from ``anchor_points`` to boxes, as xyxy or xywh (official ``dist2bbox``)."""
    lt, rb = distance[..., :2], distance[..., 2:4]
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if box_format == "xyxy":
        return jt.concat([x1y1, x2y2], dim=-1)
    if box_format == "xywh":
        c_xy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        return jt.concat([c_xy, wh], dim=-1)
    raise ValueError(f"unknown box format {box_format!r}")


def bbox2dist(anchor_points: jt.Var, bbox: jt.Var, reg_max: int) -> jt.Var:
    """xyxy boxes to (l, t, r, b) distances from ``anchor_points``, clipped to [0, reg_max - 0.01] (official)."""
    x1y1, x2y2 = bbox[..., :2], bbox[..., 2:4]
    lt = anchor_points - x1y1
    rb = x2y2 - anchor_points
    dist = jt.concat([lt, rb], dim=-1)
    # faithful: upper clip reg_max - 0.01 keeps floor(t)+1 <= reg_max for the DFL right bin. The bounds are made in
    # the tensor's dtype: a Python float would be a float32 constant in Jittor (15.99 -> 15.989999771)
    low, high = jt.array(0.0, str(dist.dtype)), jt.array(reg_max - 0.01, str(dist.dtype))
    return jt.minimum(jt.maximum(dist, low), high)


def xywh2xyxy(bboxes: np.ndarray) -> np.ndarray:
    """In-place (cx, cy, w, h) -> (x1, y1, x2, y2) on a float64 numpy array, in the official operation order.

    The Jittor port builds its targets in numpy (as the official ``preprocess`` does), where float64 arithmetic is
    plain IEEE; Jittor's -Ofast kernels could fuse and reassociate ``x1 + w`` into ``cx + w/2``.
    """
    bboxes[..., 0] = bboxes[..., 0] - bboxes[..., 2] * 0.5
    bboxes[..., 1] = bboxes[..., 1] - bboxes[..., 3] * 0.5
    # faithful: x2 = x1 + w (not cx + w/2), which rounds differently
    bboxes[..., 2] = bboxes[..., 0] + bboxes[..., 2]
    bboxes[..., 3] = bboxes[..., 1] + bboxes[..., 3]
    return bboxes
