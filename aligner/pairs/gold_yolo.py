"""The GOLD-YOLO pair: reference_torch vs jittor_impl, with the golden data's recipes.

* Model: ``build_model("gold_yolo-<size>", num_classes, use_dfl, reg_max, iou_type, drop_path_rate=0)``
  (drop path off so train mode is deterministic), seeded with ``torch.manual_seed(seed)``, train mode.
  ``use_dfl``/``reg_max``/``iou_type`` default to the official configuration of the size
  (:data:`OFFICIAL`); any of them can be overridden (the golden data is N with DFL, ``reg_max`` 16).
* Inputs (golden README step 1): ``rng = np.random.default_rng(seed)``; image ``rng.random((B,3,S,S),
  float32)``; then 3 boxes per image, each ``cls = rng.integers(0, nc)``, ``w, h = rng.uniform(lo, hi)``
  with (lo, hi) = (0.05, 0.15), (0.15, 0.3), (0.3, 0.5), ``cx, cy = rng.uniform(w/2+0.005, 1-w/2-0.005)``.
* States: ``init`` (official init: prediction convs are zero, so only the heads get gradients) and
  ``perturbed`` (README step 3: seed 1, cls_preds then reg_preds weights ~ N(0, 0.01), every
  ``*.attn.proj.1.bn.weight`` = 1), drawn in float32 so float64 runs see the same weights.
* Stages: ``anchors`` / ``anchor_points`` / ``anchors_per_level`` / ``stride_tensor`` (what the loss's
  ``generate_anchors`` returned), ``feat_hw``, ``assign/<target_labels|target_bboxes|target_scores|fg_mask>``
  (the assigner's outputs, before the loss divides the boxes by the stride), ``loss_items``.
* The user's own loss (``--port-loss``): its head is ``(feats, pred_scores, pred_distri)`` (:func:`head_of`), its
  gradients are checked w.r.t. ``pred_scores`` and ``pred_distri``, and :meth:`GoldYoloPair.stress_head` builds
  the stress input (saturated scores, zero-size and inverted boxes, a large loss).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np

from ..adapters.base import LossContext, LossFn
from ..rules.pair import PairRules
from .base import Pair, PairInputs
from .gold_yolo_rules import RULES, STRIDES, expected_anchors

__all__ = ["GoldYoloPair", "BOX_RANGES", "OFFICIAL", "expected_anchors", "head_of"]

SIZES = ("n", "s", "m", "l")
BOX_RANGES = ((0.05, 0.15), (0.15, 0.3), (0.3, 0.5))  # (lo, hi) of w and h for box 0, 1, 2 of an image
ASSIGN_NAMES = ("target_labels", "target_bboxes", "target_scores", "fg_mask")
# The shipped configs' loss settings per size (official configs/gold_yolo-*.py; checked against
# reference_torch.configs by tests/test_cli.py). N ships without DFL and with SIoU; its README asks for
# DFL when distilling, which is an override here, not the default.
OFFICIAL: dict[str, dict[str, Any]] = {
    "n": {"use_dfl": False, "reg_max": 0, "iou_type": "siou"},
    "s": {"use_dfl": True, "reg_max": 16, "iou_type": "giou"},
    "m": {"use_dfl": True, "reg_max": 16, "iou_type": "giou"},
    "l": {"use_dfl": True, "reg_max": 16, "iou_type": "giou"},
}
IOU_TYPES = ("giou", "ciou", "diou", "siou")


class _Tap:
    """Stands in for an assigner during one loss call and records its outputs as stages."""

    def __init__(self, inner: Any, ctx: LossContext) -> None:
        self.inner, self.ctx = inner, ctx

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        self.ctx.record("assign", dict(zip(ASSIGN_NAMES, out)))
        return out


@contextmanager
def _tapped(loss_obj: Any, ctx: LossContext) -> Iterator[None]:
    """Record anchors and assigner outputs during one call of a ComputeLoss (either framework).

    ``generate_anchors`` is a module-level function of the loss module, so it is swapped there for the
    duration of the call and put back in ``finally``; the assigners are instance attributes.
    """
    mod = sys.modules[type(loss_obj).__module__]
    orig_ga = mod.generate_anchors
    orig = (loss_obj.formal_assigner, loss_obj.warmup_assigner)

    def generate_anchors(*args: Any, **kwargs: Any) -> Any:
        res = orig_ga(*args, **kwargs)
        if len(res) == 4:  # train mode: (anchors, anchor_points, n_anchors_list, stride_tensor)
            ctx.record("anchors", res[0])
            ctx.record("anchor_points", res[1])
            ctx.record("anchors_per_level", np.asarray(res[2], dtype=np.int64))
            ctx.record("stride_tensor", res[3])
        return res

    mod.generate_anchors = generate_anchors
    loss_obj.formal_assigner, loss_obj.warmup_assigner = _Tap(orig[0], ctx), _Tap(orig[1], ctx)
    try:
        yield
    finally:
        mod.generate_anchors = orig_ga
        loss_obj.formal_assigner, loss_obj.warmup_assigner = orig


def _rank(x: Any) -> int:
    shape = getattr(x, "shape", None)  # torch.Size, a tuple, or Jittor's NanoVector
    try:
        return len(tuple(shape)) if shape is not None else -1
    except TypeError:
        return -1


def _feature_maps(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == len(STRIDES) and all(_rank(f) == 4 for f in x)


def _describe(x: Any, depth: int = 0) -> str:
    if isinstance(x, (list, tuple)):
        inner = ", ".join(_describe(v, depth + 1) for v in x[:4]) if depth < 3 else "..."
        more = ", ..." if len(x) > 4 and depth < 3 else ""
        return f"{type(x).__name__}[{inner}{more}]"
    return f"tensor{tuple(x.shape)}" if _rank(x) >= 0 else type(x).__name__


def head_of(outputs: Any) -> Any:
    """The loss's input (feats, pred_scores, pred_distri) of a model output: the reference Model returns
    [(feats, pred_scores, pred_distri), featmaps]; a port may return the head's triple itself."""
    from ..errors import AdapterError  # noqa: PLC0415 - only this function raises it

    if isinstance(outputs, (list, tuple)) and outputs:
        head = outputs if _feature_maps(outputs[0]) else outputs[0]
        if isinstance(head, (list, tuple)) and len(head) == 3 and _feature_maps(head[0]) \
                and _rank(head[1]) == 3 and _rank(head[2]) == 3:
            return head
    raise AdapterError(
        f"gold_yolo loss: expected the model output [(feats, pred_scores, pred_distri), featmaps] or "
        f"(feats, pred_scores, pred_distri) (feats: {len(STRIDES)} tensors of rank 4, scores and "
        f"distri of rank 3), got {_describe(outputs)}")


def _anchor_points(feat_hw: list[tuple[int, int]], offset: float = 0.5) -> np.ndarray:
    """[A, 2] anchor centres in pixels, level by level, row-major (the loss's generate_anchors)."""
    pts = []
    for (h, w), stride in zip(feat_hw, STRIDES):
        ys, xs = np.meshgrid(np.arange(h) + offset, np.arange(w) + offset, indexing="ij")
        pts.append(np.stack([xs.reshape(-1), ys.reshape(-1)], -1) * stride)
    return np.concatenate(pts, 0)


@dataclass(frozen=True, kw_only=True)
class GoldYoloPair(Pair):
    name: ClassVar[str] = "gold_yolo"
    states: ClassVar[tuple[str, ...]] = ("init", "perturbed")
    item_names: ClassVar[tuple[str, ...]] = ("iou", "dfl", "cls")

    size: str = "n"
    num_classes: int = 20
    img_size: int = 500
    use_dfl: bool | None = None   # None: the official configuration of ``size`` (OFFICIAL)
    reg_max: int | None = None    # None: official if use_dfl is too, else 16 with DFL and 0 without
    iou_type: str | None = None   # None: official
    assigner: str = "tal"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size not in SIZES:
            raise ValueError(f"gold_yolo size must be one of {SIZES}, got {self.size!r}")
        if self.assigner not in ("tal", "atss"):
            raise ValueError("assigner must be 'tal' (warmup_epoch 0) or 'atss' (warm-up path)")
        if self.img_size < 32 or self.num_classes < 1 or self.batch < 1:
            raise ValueError("need img_size >= 32, num_classes >= 1, batch >= 1")
        official = OFFICIAL[self.size]
        # a frozen dataclass sets derived defaults through object.__setattr__
        if self.reg_max is None:
            reg_max = official["reg_max"] if self.use_dfl is None else (16 if self.use_dfl else 0)
            object.__setattr__(self, "reg_max", reg_max)
        for key in ("use_dfl", "iou_type"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, official[key])
        if self.iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {self.iou_type!r}")
        if self.use_dfl and not self.reg_max:
            raise ValueError("use_dfl needs reg_max >= 1 (the official DFL setting is reg_max 16)")

    @property
    def label(self) -> str:
        return f"gold_yolo-{self.size}"

    def rules(self) -> PairRules:
        return RULES

    def config(self) -> dict[str, Any]:
        return {"size": self.size, "num_classes": self.num_classes, "img_size": self.img_size,
                "use_dfl": self.use_dfl, "reg_max": self.reg_max, "iou_type": self.iou_type,
                "batch": self.batch, "assigner": self.assigner, "drop_path_rate": 0.0,
                "official": self.is_official()}

    def is_official(self) -> bool:
        """True when the loss settings are the shipped configuration of this size."""
        return all(getattr(self, k) == v for k, v in OFFICIAL[self.size].items())

    def _build_args(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "use_dfl": self.use_dfl, "reg_max": self.reg_max,
                "iou_type": self.iou_type, "drop_path_rate": 0.0}

    # ----- models ------------------------------------------------------------------------------
    def build_torch(self) -> Any:
        import reference_torch  # noqa: PLC0415 - lazy
        return self._seeded_torch(lambda: reference_torch.build_model(self.label, **self._build_args()))

    def build_jittor(self, **options: Any) -> Any:
        import jittor_impl  # noqa: PLC0415 - lazy
        return self._seeded_jittor(lambda: jittor_impl.build_model(self.label, **self._build_args()))

    def apply_state(self, torch_model: Any, state: str) -> None:
        super().apply_state(torch_model, state)
        if state != "perturbed":
            return
        import torch  # noqa: PLC0415
        torch.manual_seed(1)
        det = torch_model.detect
        with torch.no_grad():
            for w in [c.weight for c in det.cls_preds] + [c.weight for c in det.reg_preds]:
                w.copy_(torch.empty(w.shape, dtype=torch.float32).normal_(0, 0.01))
            for name, p in torch_model.named_parameters():
                if name.endswith("attn.proj.1.bn.weight"):
                    p.fill_(1.0)

    # ----- data and loss -------------------------------------------------------------------------
    def make_inputs(self, seed: int | None = None) -> PairInputs:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        b, s = self.batch, self.img_size
        image = rng.random((b, 3, s, s), dtype=np.float32)
        rows = []
        for i in range(b):
            for lo, hi in BOX_RANGES:
                c = rng.integers(0, self.num_classes)
                w, h = rng.uniform(lo, hi), rng.uniform(lo, hi)
                cx = rng.uniform(w / 2 + 0.005, 1 - w / 2 - 0.005)
                cy = rng.uniform(h / 2 + 0.005, 1 - h / 2 - 0.005)
                rows.append([i, c, cx, cy, w, h])
        targets = np.asarray(rows, dtype=np.float32)  # float32 in both runs, as the golden data
        return PairInputs([image.astype(self.dtype)], targets,
                          {"recipe": "golden README step 1", "boxes_per_image": len(BOX_RANGES)})

    def _loss_args(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "img_size": self.img_size, "use_dfl": self.use_dfl,
                "reg_max": self.reg_max, "iou_type": self.iou_type,
                "warmup_epoch": 0 if self.assigner == "tal" else 4}

    def torch_loss(self) -> LossFn:
        import torch  # noqa: PLC0415
        import reference_torch  # noqa: PLC0415
        loss_obj = reference_torch.build_loss(self.label, **self._loss_args())
        if self.dtype == "float64":  # golden step 7: only the DFL projection is cast
            loss_obj.proj = torch.nn.Parameter(loss_obj.proj.double(), requires_grad=False)
        return self._wrap(loss_obj)

    def jittor_loss(self) -> LossFn:
        import jittor_impl  # noqa: PLC0415
        return self._wrap(jittor_impl.build_loss(self.label, **self._loss_args()))

    @staticmethod
    def _wrap(loss_obj: Any) -> LossFn:
        def loss(outputs: Any, targets: Any, ctx: LossContext) -> Any:
            head = head_of(outputs)
            ctx.record("feat_hw", np.asarray([list(f.shape[2:]) for f in head[0]], dtype=np.int64))
            with _tapped(loss_obj, ctx):
                total, items = loss_obj(head, targets, epoch_num=0, step_num=0)
            ctx.record("loss_items", items)
            return total
        return loss

    # ----- the user's own loss (--port-loss) ------------------------------------------------------
    head_grads: ClassVar[dict[str, str]] = {"1": "pred_scores", "2": "pred_distri"}

    def head_of(self, outputs: Any) -> Any:
        return head_of(outputs)

    def port_loss_fn(self, loss_obj: Any, *, from_model: bool = True) -> LossFn:
        inner = super().port_loss_fn(loss_obj, from_model=from_model)
        convert = getattr(loss_obj, "head", None)
        convert = convert if callable(convert) else head_of

        def loss(outputs: Any, targets: Any, ctx: LossContext) -> Any:
            feats = (convert(outputs) if from_model else outputs)[0]
            ctx.record("feat_hw", np.asarray([list(f.shape[2:]) for f in feats], dtype=np.int64))
            return inner(outputs, targets, ctx)
        return loss

    def stress_head(self, head: Any, targets: Any) -> Any:
        """The head with every score saturated and the boxes of the anchors outside every GT box degenerate.

        Scores (probabilities: the head applied the sigmoid) become exactly 0 or 1, as the sigmoid of logits
        beyond +-104 is in float32: 1 for the classes present in an image (so the TAL metric of each GT is
        ``IoU^beta`` and no new ties at zero decide the top-k), a fixed 0/1 pattern for the other classes
        (the negatives' BCE reaches the reference's log clamp at -100: a large loss). Boxes: anchors whose
        centre is outside every GT box of their image (never assigned, but seen by the assigner's IoU) get
        zero-size boxes (distances 0) and inverted ones (x2 < x1: left and right distances -1 grid unit); with DFL the
        logits are +-100 with all mass on bin 0 (zero-size: a DFL expectation cannot be negative).
        """
        feats, scores, distri = head[0], np.array(head[1]), np.array(head[2])
        bsz, n_anchors, nc = scores.shape
        tg = np.asarray(targets, np.float64)
        pattern = (np.arange(n_anchors)[:, None] + np.arange(nc)[None, :]) % 2
        outside = np.ones((bsz, n_anchors), dtype=bool)
        points = _anchor_points([tuple(int(d) for d in f.shape[2:]) for f in feats])
        for b in range(bsz):
            rows = tg[tg[:, 0] == b]
            scores[b] = pattern
            scores[b][:, rows[:, 1].astype(np.int64)] = 1.0
            for _, _, cx, cy, w, h in rows * np.array([1, 1, *(4 * [self.img_size])]):
                # one pixel of margin around the assigner's strict "centre inside the box"
                inside = (np.abs(points[:, 0] - cx) < w / 2 + 1) & (np.abs(points[:, 1] - cy) < h / 2 + 1)
                outside[b] &= ~inside
        if self.reg_max:
            bins = np.full((self.reg_max + 1,), -100.0)
            bins[0] = 100.0
            zero = np.tile(bins, 4)
            distri[outside] = zero
        else:
            idx = np.nonzero(outside)
            flip = (idx[1] % 2).astype(bool)  # every other outside anchor inverted, the rest zero-size
            distri[idx[0][~flip], idx[1][~flip]] = 0.0
            distri[idx[0][flip], idx[1][flip]] = np.array([-1.0, 0.5, -1.0, 0.5])  # (l, t, r, b): x inverted
        return [feats, scores.astype(head[1].dtype), distri.astype(head[2].dtype)]

    # ----- stages --------------------------------------------------------------------------------
    def summarize_stages(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        out = super().summarize_stages(arrays)
        exp = expected_anchors(self.img_size)
        anchors: dict[str, Any] = {"img_size": self.img_size, "strides": list(STRIDES),
                                   "expected": sum(e["expected"] for e in exp)}
        per_level = arrays.get("stage/anchors_per_level")
        hw = arrays.get("stage/feat_hw")
        if per_level is not None:
            per = [int(v) for v in np.asarray(per_level).reshape(-1)]
            anchors["count"] = int(sum(per))
            anchors["levels"] = [{"stride": e["stride"], "h": int(hw[i][0]) if hw is not None and i < len(hw) else None,
                                  "w": int(hw[i][1]) if hw is not None and i < len(hw) else None,
                                  "count": per[i] if i < len(per) else None, "expected": e["expected"]}
                                 for i, e in enumerate(exp)]
        elif "stage/anchors" in arrays:
            anchors["count"] = int(np.asarray(arrays["stage/anchors"]).shape[0])
        out["anchors"] = anchors
        fg = arrays.get("stage/assign/fg_mask")
        if fg is not None:
            fgb = np.asarray(fg).astype(bool)
            assign: dict[str, Any] = {"fg_count": int(fgb.sum())}
            if "stage/assign/target_scores" in arrays:
                assign["target_scores_sum"] = float(np.asarray(arrays["stage/assign/target_scores"],
                                                               np.float64).sum())
            if per_level is not None:
                edges = np.cumsum([0] + [int(v) for v in np.asarray(per_level).reshape(-1)])
                flat = fgb.reshape(fgb.shape[0], -1) if fgb.ndim > 1 else fgb[None]
                assign["fg_per_level"] = [int(flat[:, a:b].sum()) for a, b in zip(edges[:-1], edges[1:])]
            out["assigner"] = assign
        return out
