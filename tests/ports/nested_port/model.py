"""The nested port's detector and its factory ``build(num_classes, deviations)`` for ``aligner run --port``.

The aligner loads this file by path (its folder goes on sys.path, the file becomes module ``model``), so the
package is imported by its own name from the folder above.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
if _PACKAGE_PARENT not in sys.path:
    sys.path.insert(0, _PACKAGE_PARENT)

import aligner.env  # noqa: E402,F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt  # noqa: E402
from jittor import nn  # noqa: E402

from nested_port import DEVIATIONS, MODEL_DEVIATIONS  # noqa: E402
from nested_port.backbone import Body  # noqa: E402
from nested_port.head import Heads  # noqa: E402
from nested_port.neck import FPN  # noqa: E402

# GOLD-YOLO-N: depth 0.33 and width 0.25 applied to the base repeats and widths (official build_network)
DEPTH, WIDTH = 0.33, 0.25
BASE_WIDTHS = (64, 128, 256, 512, 1024, 256, 128, 128, 256, 256, 512)
BASE_BODY_REPEATS = (6, 12, 18, 6)
BASE_FPN_REPEAT = 12


class Detector(nn.Module):
    """body -> fpn -> heads; returns ``(pred_scores, pred_distri, stem_maps, fpn_maps)``."""

    def __init__(self, num_classes: int) -> None:
        ch = [math.ceil(c * WIDTH / 8) * 8 for c in BASE_WIDTHS]
        depths = [max(round(r * DEPTH), 1) for r in BASE_BODY_REPEATS]
        self.body = Body(ch[:5], depths)
        self.fpn = FPN(ch, max(round(BASE_FPN_REPEAT * DEPTH), 1))
        self.heads = Heads([ch[6], ch[8], ch[10]], num_classes)

    def execute(self, image: jt.Var) -> tuple[jt.Var, jt.Var, list[jt.Var], list[jt.Var]]:
        maps = self.fpn(self.body(image))
        scores, distri, stems = self.heads(maps)
        return scores, distri, stems, maps


def plant(model: Detector, name: str) -> None:
    """Switch on the planted deviation ``name`` (see nested_port.MODEL_DEVIATIONS)."""
    if name == "stem_bn_eps":
        model.body.stem.dense.norm.eps = 1e-5
    elif name == "neck_act":
        model.fpn.stage_p3.units[1].act = "silu"
    elif name == "attn_scale":
        model.fpn.high_blocks[0].attn.scaled = True
    elif name == "head_stem_bias":
        conv = model.heads.levels[1].stem.block.conv
        model.heads.levels[1].stem.block.conv = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=True)
    else:
        raise ValueError(f"not a model deviation: {name!r}")


def build(num_classes: int = 20, deviations: Iterable[str] = ()) -> Detector:
    """The port, correct unless ``deviations`` names planted ones (loss-side names are accepted and left to
    the loss, so one list can switch on everything)."""
    deviations = list(deviations)
    unknown = [d for d in deviations if d not in DEVIATIONS]
    if unknown:
        raise ValueError(f"unknown deviations {unknown}; choose from {sorted(DEVIATIONS)}")
    model = Detector(num_classes)
    for name in deviations:
        if name in MODEL_DEVIATIONS:
            plant(model, name)
    return model
