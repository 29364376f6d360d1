"""The body (official EfficientRep of GOLD-YOLO-N): a stem and four stride-2 stages, the last one closed by the
CSP pyramid pool. Returns the stride 4/8/16/32 maps."""
from __future__ import annotations

from typing import Sequence

import aligner.env  # noqa: F401  (this repository's Jittor set-up must precede the first jittor import)
import jittor as jt
from jittor import nn

from .layers import CSPPoolBlock, RepStage, RepUnit


class DownStage(nn.Module):
    """A stride-2 RepUnit, ``n`` RepUnits at the new width and, for the last stage, a pool block."""

    def __init__(self, cin: int, cout: int, n: int, with_pool: bool = False) -> None:
        self.down = RepUnit(cin, cout, s=2)
        self.stage = RepStage(cout, cout, n)
        self.pool = CSPPoolBlock(cout, cout) if with_pool else None

    def execute(self, x: jt.Var) -> jt.Var:
        x = self.stage(self.down(x))
        return self.pool(x) if self.pool is not None else x


class Body(nn.Module):
    """``widths`` = (stem, stage2..stage5) channels, ``depths`` = RepUnits per stage 2..5."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int]) -> None:
        self.stem = RepUnit(3, widths[0], s=2)
        self.stages = nn.Sequential(*[
            DownStage(widths[i], widths[i + 1], depths[i], with_pool=(i == 3)) for i in range(4)])

    def execute(self, image: jt.Var) -> list[jt.Var]:
        x = self.stem(image)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps
