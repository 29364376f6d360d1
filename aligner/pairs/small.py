"""The small pair: a tiny detector-like net (conv/BN/SiLU, attention, a shared block called twice,
nearest upsample + concat, a Sequential container, two heads and a loss) in both frameworks.

It is the aligner's test bed: seconds to capture, yet it has every structure GOLD-YOLO has that
makes capture hard (aliases, shared calls, tuple outputs, zero-initialised heads, train-mode BN).
States mirror GOLD-YOLO: ``init`` (zero head weights: only the heads get gradients) and
``perturbed`` (head weights ~ N(0, 0.01) from seed 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..adapters.base import LossFn
from .base import Pair, PairInputs

__all__ = ["SmallPair"]


@dataclass(frozen=True, kw_only=True)
class SmallPair(Pair):
    name: ClassVar[str] = "small"
    states: ClassVar[tuple[str, ...]] = ("init", "perturbed")
    item_names: ClassVar[tuple[str, ...]] = ("cls", "reg")
    perturbed_tensors: ClassVar[tuple[str, ...]] = ("cls_pred.weight", "reg_pred.weight")

    img_size: int = 32
    num_classes: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.img_size % 4:
            raise ValueError("small pair: img_size must be a multiple of 4")

    def config(self) -> dict[str, Any]:
        return {"batch": self.batch, "img_size": self.img_size, "num_classes": self.num_classes}

    def build_torch(self) -> Any:
        from . import _small_torch  # noqa: PLC0415 - lazy
        return self._seeded_torch(lambda: _small_torch.SmallNet(self.num_classes))

    def build_jittor(self, **options: Any) -> Any:
        """``options["fault"]`` builds one of the port's deliberate faults (see ``_small_jittor``)."""
        from . import _small_jittor  # noqa: PLC0415 - lazy, imports jittor
        return self._seeded_jittor(lambda: _small_jittor.SmallNet(self.num_classes, fault=options.get("fault")))

    def apply_state(self, torch_model: Any, state: str) -> None:
        super().apply_state(torch_model, state)
        if state == "perturbed":
            import torch  # noqa: PLC0415
            torch.manual_seed(1)
            with torch.no_grad():  # drawn in float32 whatever the model dtype: float64 runs get the same values
                for w in (torch_model.cls_pred.weight, torch_model.reg_pred.weight):
                    w.copy_(torch.empty(w.shape, dtype=torch.float32).normal_(0, 0.01))

    def make_inputs(self, seed: int | None = None) -> PairInputs:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        s, b = self.img_size, self.batch
        x = rng.random((b, 3, s, s), dtype=np.float32).astype(self.dtype)
        cls_t = (rng.random((b, self.num_classes, s // 2, s // 2)) < 0.2).astype(self.dtype)
        reg_t = rng.standard_normal((b, 4, s // 2, s // 2)).astype(self.dtype)
        return PairInputs([x], (cls_t, reg_t), {"recipe": "default_rng(seed): image U[0,1), cls 0/1 p=0.2, reg N(0,1)"})

    def torch_loss(self) -> LossFn:
        from ._small_torch import loss  # noqa: PLC0415
        return loss

    def jittor_loss(self) -> LossFn:
        from ._small_jittor import loss  # noqa: PLC0415
        return loss
