"""Anchor points and box <-> distance transforms (official `yolov6/assigners/anchor_generator.py`,
`yolov6/utils/general.py`).

Anchors are level-major and row-major inside a level (y outer, x inner), the order of the head's flatten(2).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def generate_anchors(
    feats: Sequence[Tensor],
    fpn_strides: Sequence[int],
    grid_cell_size: float = 5.0,
    grid_cell_offset: float = 0.5,
    device: torch.device | str = "cpu",
    is_eval: bool = False,
    mode: str = "af",
) -> tuple[Tensor, ...] | tuple[Tensor, Tensor]:
    """Generate anchors from feature map shapes.

    Train mode returns `(anchors [N,4] px xyxy, anchor_points [N,2] px, num_anchors_list, stride_tensor [N,1])`;
    eval mode returns `(anchor_points [N,2] in grid units, stride_tensor [N,1])`.
    """
    anchors: list[Tensor] = []
    anchor_points: list[Tensor] = []
    stride_tensor: list[Tensor] = []
    num_anchors_list: list[int] = []
    assert feats is not None
    if is_eval:
        for i, stride in enumerate(fpn_strides):
            _, _, h, w = feats[i].shape
            shift_x = torch.arange(end=w, device=device) + grid_cell_offset
            shift_y = torch.arange(end=h, device=device) + grid_cell_offset
            shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            # faithful: eval anchor points are float32 whatever the feature dtype (`.to(torch.float)`)
            anchor_point = torch.stack([shift_x, shift_y], dim=-1).to(torch.float)
            if mode == "af":
                anchor_points.append(anchor_point.reshape([-1, 2]))
                stride_tensor.append(torch.full((h * w, 1), stride, dtype=torch.float, device=device))
            elif mode == "ab":
                anchor_points.append(anchor_point.reshape([-1, 2]).repeat(3, 1))
                stride_tensor.append(
                    torch.full((h * w, 1), stride, dtype=torch.float, device=device).repeat(3, 1))
        return torch.cat(anchor_points), torch.cat(stride_tensor)

    for i, stride in enumerate(fpn_strides):
        _, _, h, w = feats[i].shape
        cell_half_size = grid_cell_size * stride * 0.5
        # faithful: computed in the default float dtype (float32), then cast to the feature dtype
        shift_x = (torch.arange(end=w, device=device) + grid_cell_offset) * stride
        shift_y = (torch.arange(end=h, device=device) + grid_cell_offset) * stride
        shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        anchor = torch.stack(
            [shift_x - cell_half_size, shift_y - cell_half_size,
             shift_x + cell_half_size, shift_y + cell_half_size], dim=-1).clone().to(feats[0].dtype)
        anchor_point = torch.stack([shift_x, shift_y], dim=-1).clone().to(feats[0].dtype)
        if mode == "af":
            anchors.append(anchor.reshape([-1, 4]))
            anchor_points.append(anchor_point.reshape([-1, 2]))
        elif mode == "ab":
            anchors.append(anchor.reshape([-1, 4]).repeat(3, 1))
            anchor_points.append(anchor_point.reshape([-1, 2]).repeat(3, 1))
        num_anchors_list.append(len(anchors[-1]))
        stride_tensor.append(torch.full([num_anchors_list[-1], 1], stride, dtype=feats[0].dtype))
    return (torch.cat(anchors), torch.cat(anchor_points).to(device), num_anchors_list,
            torch.cat(stride_tensor).to(device))


def dist2bbox(distance: Tensor, anchor_points: Tensor, box_format: str = "xyxy") -> Tensor:
    """Distances (l, t, r, b) from anchor points -> boxes in `xyxy` or `xywh`."""
    lt, rb = torch.split(distance, 2, -1)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if box_format == "xyxy":
        return torch.cat([x1y1, x2y2], -1)
    if box_format == "xywh":
        c_xy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        return torch.cat([c_xy, wh], -1)
    raise ValueError(f"unknown box_format {box_format!r}")


def bbox2dist(anchor_points: Tensor, bbox: Tensor, reg_max: int) -> Tensor:
    """Boxes (xyxy) -> distances (l, t, r, b) from anchor points, clipped for DFL."""
    x1y1, x2y2 = torch.split(bbox, 2, -1)
    lt = anchor_points - x1y1
    rb = x2y2 - anchor_points
    # faithful: upper clip reg_max - 0.01 keeps floor(t)+1 <= reg_max for the DFL right bin
    return torch.cat([lt, rb], -1).clip(0, reg_max - 0.01)


def xywh2xyxy(bboxes: Tensor) -> Tensor:
    """In-place (cx, cy, w, h) -> (x1, y1, x2, y2), in the official operation order."""
    bboxes[..., 0] = bboxes[..., 0] - bboxes[..., 2] * 0.5
    bboxes[..., 1] = bboxes[..., 1] - bboxes[..., 3] * 0.5
    # faithful: x2 = x1 + w (not cx + w/2), which rounds differently
    bboxes[..., 2] = bboxes[..., 0] + bboxes[..., 2]
    bboxes[..., 3] = bboxes[..., 1] + bboxes[..., 3]
    return bboxes
