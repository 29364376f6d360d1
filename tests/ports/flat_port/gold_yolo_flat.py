"""GOLD-YOLO-N in Jittor, written flat: one user's independent port, used to test the aligner on a foreign layout.

Official N configuration only (no DFL, reg_max 0, SIoU, drop path 0). The layout differs from the official one on
purpose, as a user's own port would:

* one ``nn.Sequential`` named ``layers`` holds every stage in data-flow order (backbone 0-4, neck 5-21, head
  levels 22-24), so reference names become indices: ``backbone.ERBlock_3.1.block.0`` is ``layers.2.1.1``,
  ``neck.Rep_p4.block.2`` is ``layers.9.3``;
* RepVGG units keep their branches as direct children (``conv3``/``bn3``/``conv1``/``bn1``/``bn_id``), convolutions
  with an activation apply it through a helper function, and the parameter-free fusions of the neck (low_FAM,
  high_FAM) are functions;
* batch norm is Jittor's stock ``nn.BatchNorm`` (its parameters and settings) with torch's train-mode statistics;
* the model returns a dict ``{"scores", "boxes", "maps", "neck"}`` and the loss is ``detection_loss(outputs, targets, cfg)``
  returning a dict (its task-aligned assigner runs image by image in numpy).

``build(num_classes, deviations)`` switches on planted deviations by name (:data:`DEVIATIONS`); none gives a
correct port.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

import aligner.env  # noqa: F401  (configures Jittor before its import)
import jittor as jt
from jittor import nn

# name -> (part, what is wrong); the part says which side of the model or loss holds it
DEVIATIONS: dict[str, tuple[str, str]] = {
    "bn_momentum": ("backbone", "backbone batch norms keep Jittor's default momentum 0.1 (reference 0.03)"),
    "no_residual": ("backbone", "the first repeated RepVGG unit of stage 3 drops its identity (BN shortcut) branch"),
    "pool_size": ("neck", "the bottom-up pool-and-concat fusions use Jittor's fixed-kernel nn.AdaptiveAvgPool2d"),
    "head_act": ("head", "the head stems use ReLU instead of SiLU"),
    "vfl_weight": ("loss", "varifocal loss weights positive anchors by their one-hot label, not the IoU-aware score"),
    "assigner_batch": ("assigner", "every image is assigned against image 0's ground-truth boxes"),
}

NUM_REPEAT = (1, 2, 4, 6, 2, 4, 4, 4, 4)                   # N: depth 0.33
CHANNELS = (16, 32, 64, 128, 256, 64, 32, 32, 64, 64, 128)  # N: width 0.25
STRIDES = (8, 16, 32)
FUSION_IN, EMBED_P, EMBED_N, TRANS = 480, 96, 352, (64, 32, 64, 128)
KEY_DIM, HEADS, ATTN_RATIO, MLP_RATIO, DEPTHS, FUSE_BLOCKS = 8, 4, 2, 1, 2, 3
BN_EPS, BN_MOMENTUM = 1e-3, 0.03          # yolov6 initialize_weights on plain BatchNorm2d
SYNC_EPS, SYNC_MOMENTUM = 1e-5, 0.1       # the SyncBN family (inject and transformer norms)


def _check(deviations: Iterable[str]) -> frozenset[str]:
    names = frozenset(deviations or ())
    unknown = sorted(names - set(DEVIATIONS))
    if unknown:
        raise ValueError(f"unknown deviations {unknown}; known: {sorted(DEVIATIONS)}")
    return names


# ----- functional helpers -----------------------------------------------------------------------------------
def _act(x: jt.Var, kind: str) -> jt.Var:
    if kind == "relu":
        return nn.relu(x)
    if kind == "silu":
        return x * jt.sigmoid(x)
    if kind == "relu6":
        return jt.minimum(nn.relu(x), jt.array(6.0, str(x.dtype)))
    if kind == "none":
        return x
    raise ValueError(kind)


def _hard_sigmoid(x: jt.Var) -> jt.Var:
    return _act(x + 3, "relu6") / 6


def _window_matrix(size_in: int, size_out: int, dtype: str) -> jt.Var:
    """[size_out, size_in] averaging weights of torch's adaptive windows [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return jt.array(m, dtype).stop_grad()


def adaptive_pool(x: jt.Var, size: Sequence[int]) -> jt.Var:
    """torch ``adaptive_avg_pool2d`` as two small matrix products (rows, then columns)."""
    n, c, h, w = x.shape
    oh, ow = int(size[0]), int(size[1])
    if (h, w) == (oh, ow):
        return x
    dt = str(x.dtype)
    rows = jt.matmul(_window_matrix(h, oh, dt), x.reshape(n * c, h, w))        # [nc, oh, w]
    out = jt.matmul(rows, _window_matrix(w, ow, dt).transpose(1, 0))            # [nc, oh, ow]
    return out.reshape(n, c, oh, ow)


def upsample(x: jt.Var, size: Sequence[int]) -> jt.Var:
    return nn.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def max_pool5(x: jt.Var) -> jt.Var:
    """3x3-map-safe ``MaxPool2d(5, 1, 2)``: pad with -inf first (Jittor's pool needs a map larger than the kernel)."""
    padded = nn.pad(x, (2, 2, 2, 2), mode="constant", value=-math.inf)
    return nn.max_pool2d(padded, 5, stride=1, padding=0)


# ----- layers -----------------------------------------------------------------------------------------------
class BatchNormTorchStats(nn.BatchNorm):
    """Jittor's ``nn.BatchNorm`` (same parameters, eps, momentum) with torch's train-mode arithmetic.

    Stock Jittor normalises with E[x^2]-E[x]^2 in float32 and feeds the biased variance into running_var; torch
    uses the two-pass variance, accumulates in double and keeps the unbiased variance in the running average.
    """

    def __init__(self, num_features: int, eps: float, momentum: float) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)

    def execute(self, x: jt.Var) -> jt.Var:
        axes = [0, 2, 3]
        view = (1, self.num_features, 1, 1)
        if not self.is_train:
            scale = self.weight / jt.sqrt(self.running_var + jt.array(self.eps, str(self.running_var.dtype)))
            return x * scale.reshape(view) + (self.bias - self.running_mean * scale).reshape(view)
        count = x.numel() // self.num_features
        mean = (x.float64().sum(dims=axes) / count).cast(x.dtype)
        dev = x - mean.reshape(view)
        sq_sum = (dev * dev).float64().sum(dims=axes).cast(x.dtype)
        with jt.no_grad():
            m = jt.array(float(self.momentum), "float64")
            rm, rv = self.running_mean, self.running_var
            rm.update(((1 - m) * rm.float64() + m * mean.detach().float64()).cast(rm.dtype))
            rv.update(((1 - m) * rv.float64() + m * sq_sum.detach().float64() / (count - 1)).cast(rv.dtype))
        inv = (1.0 / jt.sqrt(sq_sum.float64() / count + jt.array(float(self.eps), "float64"))).cast(x.dtype)
        return dev * (inv * self.weight).reshape(view) + self.bias.reshape(view)


def _bn(c: int, sync: bool = False, momentum: float | None = None) -> BatchNormTorchStats:
    if sync:
        return BatchNormTorchStats(c, SYNC_EPS, SYNC_MOMENTUM)
    return BatchNormTorchStats(c, BN_EPS, BN_MOMENTUM if momentum is None else momentum)


class ConvAct(nn.Module):
    """conv (no bias) -> bn -> activation given by name (``none`` for a plain conv-bn pair)."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, act: str = "relu", sync: bool = False,
                 momentum: float | None = None) -> None:
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, bias=False)
        self.bn = _bn(cout, sync, momentum)
        self.act = act

    def execute(self, x: jt.Var) -> jt.Var:
        return _act(self.bn(self.conv(x)), self.act)


class RepUnit(nn.Module):
    """RepVGG unit in train form: ReLU(bn3(conv3 x) + bn1(conv1 x) + bn_id(x)); bn_id only when shapes allow."""

    def __init__(self, cin: int, cout: int, s: int = 1, momentum: float | None = None,
                 shortcut: bool = True) -> None:
        self.conv3 = nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False)
        self.bn3 = _bn(cout, momentum=momentum)
        self.conv1 = nn.Conv2d(cin, cout, 1, stride=s, padding=0, bias=False)
        self.bn1 = _bn(cout, momentum=momentum)
        self.bn_id = _bn(cin, momentum=momentum) if cin == cout and s == 1 else None
        self.shortcut = shortcut  # False only for the planted no_residual deviation

    def execute(self, x: jt.Var) -> jt.Var:
        y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
        if self.bn_id is not None and self.shortcut:
            y = y + self.bn_id(x)
        return nn.relu(y)


def rep_units(cin: int, cout: int, n: int, momentum: float | None = None, plain_at: int = -1) -> list[nn.Module]:
    """The n units of a RepBlock, flat (for a Sequential)."""
    return [RepUnit(cin if i == 0 else cout, cout, 1, momentum, shortcut=i != plain_at) for i in range(n)]


def down_stage(cin: int, cout: int, n: int, momentum: float | None = None, plain_at: int = -1,
               tail: Sequence[nn.Module] = ()) -> nn.Sequential:
    """Backbone stage: a stride-2 unit, the RepBlock's units as one Sequential, then ``tail``."""
    return nn.Sequential(RepUnit(cin, cout, 2, momentum),
                         nn.Sequential(*rep_units(cout, cout, n, momentum, plain_at)), *tail)


class CSPSPPF(nn.Module):
    """SimCSPSPPF: ``convs`` 0-6 are cv1..cv7 (ReLU conv-bn), max pools in between."""

    def __init__(self, c: int, momentum: float | None = None) -> None:
        h = c // 2
        spec = [(c, h, 1), (c, h, 1), (h, h, 3), (h, h, 1), (4 * h, h, 1), (h, h, 3), (2 * h, c, 1)]
        self.convs = nn.Sequential(*[ConvAct(a, b, k, momentum=momentum) for a, b, k in spec])

    def execute(self, x: jt.Var) -> jt.Var:
        cv = self.convs
        x1 = cv[3](cv[2](cv[0](x)))
        y0 = cv[1](x)
        y1 = max_pool5(x1)
        y2 = max_pool5(y1)
        y3 = cv[5](cv[4](jt.concat([x1, y1, y2, max_pool5(y2)], 1)))
        return cv[6](jt.concat([y0, y3], 1))


class Fuse3(nn.Module):
    """Local fusion (SimFusion_3in): pool the finer map, project the middle one, upsample the coarser one."""

    def __init__(self, cin_mid: int, cout: int) -> None:
        self.cv1 = ConvAct(cin_mid, cout)
        self.cv_fuse = ConvAct(3 * cout, cout)

    def execute(self, levels: Sequence[jt.Var]) -> jt.Var:
        fine, mid, coarse = levels
        size = mid.shape[2:]
        return self.cv_fuse(jt.concat([adaptive_pool(fine, size), self.cv1(mid), upsample(coarse, size)], 1))


class PoolCat(nn.Module):
    """Pool ``x`` to ``ref``'s size and concatenate them (AdvPoolFusion)."""

    def __init__(self, fixed_kernel: bool = False) -> None:
        self.fixed_kernel = fixed_kernel  # True only for the planted pool_size deviation

    def execute(self, x: jt.Var, ref: jt.Var) -> jt.Var:
        size = tuple(ref.shape[2:])
        pooled = nn.AdaptiveAvgPool2d(size)(x) if self.fixed_kernel else adaptive_pool(x, size)
        return jt.concat([pooled, ref], 1)


class Inject(nn.Module):
    """Injection of global info: local(x) * hsigmoid(gate(g)) + embed(g), global maps resized to the local one."""

    def __init__(self, c: int) -> None:
        self.local = ConvAct(c, c, act="none", sync=True)
        self.embed = ConvAct(c, c, act="none", sync=True)
        self.gate = ConvAct(c, c, act="none", sync=True)

    def execute(self, x: jt.Var, g: jt.Var) -> jt.Var:
        size = x.shape[2:]
        local = self.local(x)
        gate, embed = self.gate(g), self.embed(g)
        if size[0] < g.shape[2]:  # never with the shipped configs; the official branch has no hard sigmoid
            return local * adaptive_pool(gate, size) + adaptive_pool(embed, size)
        return local * upsample(_hard_sigmoid(gate), size) + upsample(embed, size)


class TopBlock(nn.Module):
    """Transformer block of high_IFM: x + attention(x), then x + mlp(x) (no drop path: rate 0)."""

    def __init__(self, dim: int) -> None:
        qk, self.d = KEY_DIM * HEADS, ATTN_RATIO * KEY_DIM
        self.q = ConvAct(dim, qk, act="none", sync=True)
        self.k = ConvAct(dim, qk, act="none", sync=True)
        self.v = ConvAct(dim, self.d * HEADS, act="none", sync=True)
        self.o = ConvAct(self.d * HEADS, dim, act="none", sync=True)
        self.o.bn.weight = jt.zeros((dim,), "float32")  # the attention branch starts as 0 (official init)
        hidden = int(dim * MLP_RATIO)
        self.fc1 = ConvAct(dim, hidden, act="none", sync=True)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, groups=hidden, bias=True)
        self.fc2 = ConvAct(hidden, dim, act="none", sync=True)

    def execute(self, x: jt.Var) -> jt.Var:
        b, _, h, w = x.shape
        q = self.q(x).reshape(b, HEADS, KEY_DIM, h * w).transpose(0, 1, 3, 2)
        k = self.k(x).reshape(b, HEADS, KEY_DIM, h * w)
        v = self.v(x).reshape(b, HEADS, self.d, h * w).transpose(0, 1, 3, 2)
        attn = nn.softmax(jt.matmul(q, k), dim=-1)  # the official attention applies no 1/sqrt(d) scale
        mixed = jt.matmul(attn, v).transpose(0, 1, 3, 2).reshape(b, self.d * HEADS, h, w)
        x = x + self.o(_act(mixed, "relu6"))
        return x + self.fc2(_act(self.dw(self.fc1(x)), "relu6"))


class HeadLevel(nn.Sequential):
    """One head level, in build_effidehead_layer's order: 0 stem, 1 cls conv, 2 reg conv, 3 cls pred, 4 reg pred."""

    def __init__(self, c: int, num_classes: int, stem_act: str) -> None:
        super().__init__(ConvAct(c, c, 1, act=stem_act), ConvAct(c, c, 3, act="silu"), ConvAct(c, c, 3, act="silu"),
                         nn.Conv2d(c, num_classes, 1), nn.Conv2d(c, 4, 1))
        # official initialize_biases: zero prediction weights, class prior 0.01, box distances 1
        for pred, bias in ((self[3], -math.log((1 - 0.01) / 0.01)), (self[4], 1.0)):
            pred.weight = jt.zeros(tuple(pred.weight.shape), "float32")
            pred.bias = jt.full(tuple(pred.bias.shape), bias, "float32")


class DFLProjection(nn.Module):
    """The reference head's frozen DFL projection (17 bins, unused without DFL; kept for the weight map)."""

    def __init__(self, bins: int = 17) -> None:
        self.proj = jt.linspace(0, bins - 1, bins).float32().stop_grad()
        self.conv = nn.Conv2d(bins, 1, 1, bias=False)
        self.conv.weight = self.proj.reshape(1, bins, 1, 1).clone().stop_grad()


# ----- model ------------------------------------------------------------------------------------------------
class GoldYoloFlat(nn.Module):
    """GOLD-YOLO-N with every stage in one flat Sequential; returns {"scores", "boxes", "maps", "neck"} in train
    mode (maps: the head stems' outputs, which the loss reads; neck: the neck's three outputs)."""

    def __init__(self, num_classes: int = 20, deviations: Iterable[str] = (), output: str = "dict") -> None:
        dev = _check(deviations)
        if output not in ("dict", "reference"):
            raise ValueError("output must be 'dict' or 'reference'")
        self.output = output
        self.num_classes = num_classes
        ch, nr = CHANNELS, NUM_REPEAT
        mom = 0.1 if "bn_momentum" in dev else None
        fixed = "pool_size" in dev
        self.layers = nn.Sequential(
            RepUnit(3, ch[0], 2, mom),                                                      # 0 stem
            down_stage(ch[0], ch[1], nr[1], mom),                                            # 1 c2
            down_stage(ch[1], ch[2], nr[2], mom, plain_at=0 if "no_residual" in dev else -1),  # 2 c3
            down_stage(ch[2], ch[3], nr[3], mom),                                            # 3 c4
            down_stage(ch[3], ch[4], nr[4], mom, tail=[CSPSPPF(ch[4], mom)]),                # 4 c5
            nn.Sequential(ConvAct(FUSION_IN, EMBED_P, act="silu"),                           # 5 low_IFM
                          *rep_units(EMBED_P, EMBED_P, FUSE_BLOCKS),
                          ConvAct(EMBED_P, sum(TRANS[:2]), act="silu")),
            ConvAct(ch[4], ch[5]),                                                           # 6 reduce c5
            Fuse3(ch[3], ch[5]),                                                             # 7 LAF_p4
            Inject(ch[5]),                                                                   # 8
            nn.Sequential(*rep_units(ch[5], ch[5], nr[5])),                                  # 9 Rep_p4
            ConvAct(ch[5], ch[6]),                                                           # 10 reduce p4
            Fuse3(ch[5], ch[6]),                                                             # 11 LAF_p3
            Inject(ch[6]),                                                                   # 12
            nn.Sequential(*rep_units(ch[6], ch[6], nr[6])),                                  # 13 Rep_p3
            nn.Sequential(*[TopBlock(EMBED_N) for _ in range(DEPTHS)]),                      # 14 high_IFM
            nn.Conv2d(EMBED_N, sum(TRANS[2:]), 1),                                           # 15 conv_1x1_n
            PoolCat(fixed),                                                                  # 16 LAF_n4
            Inject(ch[8]),                                                                   # 17
            nn.Sequential(*rep_units(ch[6] + ch[7], ch[8], nr[7])),                          # 18 Rep_n4
            PoolCat(fixed),                                                                  # 19 LAF_n5
            Inject(ch[10]),                                                                  # 20
            nn.Sequential(*rep_units(ch[5] + ch[9], ch[10], nr[8])),                         # 21 Rep_n5
            *[HeadLevel(ch[i], num_classes, "relu" if "head_act" in dev else "silu")
              for i in (6, 8, 10)],                                                          # 22-24 head
        )
        self.dfl = DFLProjection()

    def execute(self, image: jt.Var) -> Any:
        f = self.layers
        c2 = f[1](f[0](image))
        c3 = f[2](c2)
        c4 = f[3](c3)
        c5 = f[4](c4)
        # low-level gather: every backbone level to c4's size
        size = c4.shape[2:]
        low = f[5](jt.concat([adaptive_pool(c2, size), adaptive_pool(c3, size), c4, upsample(c5, size)], 1))
        g_p4, g_p3 = low[:, :TRANS[0]], low[:, TRANS[0]:]
        c5_half = f[6](c5)
        p4 = f[9](f[8](f[7]([c3, c4, c5_half]), g_p4))
        p4_half = f[10](p4)
        p3 = f[13](f[12](f[11]([c2, c3, p4_half]), g_p3))
        # high-level gather: p3, p4, c5 pooled to ceil(c5 / 2)
        top = ((c5.shape[2] - 1) // 2 + 1, (c5.shape[3] - 1) // 2 + 1)
        high = f[15](f[14](jt.concat([adaptive_pool(t, top) for t in (p3, p4, c5)], 1)))
        g_n4, g_n5 = high[:, :TRANS[2]], high[:, TRANS[2]:]
        n4 = f[18](f[17](f[16](p3, p4_half), g_n4))
        n5 = f[21](f[20](f[19](n4, c5_half), g_n5))
        maps, scores, boxes = [], [], []
        for level, feat in zip((f[22], f[23], f[24]), (p3, n4, n5)):
            stem = level[0](feat)
            cls = jt.sigmoid(level[3](level[1](stem)))
            reg = level[4](level[2](stem))
            maps.append(stem)
            scores.append(cls.flatten(2).transpose(0, 2, 1))
            boxes.append(reg.flatten(2).transpose(0, 2, 1))
        scores_all, boxes_all = jt.concat(scores, 1), jt.concat(boxes, 1)
        if self.output == "reference":
            return [(maps, scores_all, boxes_all), [p3, n4, n5]]
        return {"scores": scores_all, "boxes": boxes_all, "maps": maps, "neck": [p3, n4, n5]}


def build(num_classes: int = 20, deviations: Sequence[str] = (), output: str = "dict") -> GoldYoloFlat:
    """The port; ``deviations`` names planted bugs (:data:`DEVIATIONS`), ``output='reference'`` returns the
    reference model's ``[(maps, scores, boxes), neck outputs]`` instead of the dict."""
    return GoldYoloFlat(num_classes, deviations, output)


# ----- loss -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossConfig:
    num_classes: int = 20
    img_size: int = 640
    topk: int = 13
    alpha: float = 1.0          # task-aligned metric: score^alpha * iou^beta
    beta: float = 6.0
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    vfl_positive_weight: str = "score"  # "score" (reference) or "label" (the planted vfl_weight deviation)
    weights: tuple[float, float, float] = (1.0, 2.5, 0.5)  # class, iou, dfl
    deviations: frozenset[str] = frozenset()


def loss_config(num_classes: int = 20, img_size: int = 640, deviations: Iterable[str] = ()) -> LossConfig:
    dev = _check(deviations)
    return LossConfig(num_classes=num_classes, img_size=img_size, deviations=dev,
                      vfl_positive_weight="label" if "vfl_weight" in dev else "score")


def _anchor_grid(maps: Sequence[jt.Var]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [A, 2] in pixels and their strides [A, 1] (level-major, row-major), float32."""
    points, strides = [], []
    for feat, s in zip(maps, STRIDES):
        h, w = feat.shape[2], feat.shape[3]
        xs = (np.arange(w, dtype=np.float32) + np.float32(0.5)) * np.float32(s)
        ys = (np.arange(h, dtype=np.float32) + np.float32(0.5)) * np.float32(s)
        gx, gy = np.meshgrid(xs, ys)
        points.append(np.stack([gx.reshape(-1), gy.reshape(-1)], 1))
        strides.append(np.full((h * w, 1), s, dtype=np.float32))
    return np.concatenate(points), np.concatenate(strides)


def _pack_targets(targets: np.ndarray, batch: int, img_size: int) -> np.ndarray:
    """[n, 6] rows (image, class, cx, cy, w, h normalised) -> [B, n_max, 5] (class, x1, y1, x2, y2 px), float64,
    padded with class -1 and a zero box."""
    rows = np.asarray(targets, dtype=np.float64).reshape(-1, 6)
    per_image = [rows[rows[:, 0] == b, 1:] for b in range(batch)]
    n_max = max([len(r) for r in per_image] + [0])
    out = np.zeros((batch, n_max, 5), dtype=np.float64)
    out[:, :, 0] = -1
    for b, r in enumerate(per_image):
        box = r[:, 1:5] * float(img_size)
        x1, y1 = box[:, 0] - box[:, 2] * 0.5, box[:, 1] - box[:, 3] * 0.5
        out[b, :len(r)] = np.stack([r[:, 0], x1, y1, x1 + box[:, 2], y1 + box[:, 3]], 1)  # x2 = x1 + w
    return out


_TOPK_SRC = r"""
// libstdc++'s selection as torch's CPU topk runs it (partial_sort when 64k <= n, else nth_element + sort),
// on indices ordered by value, so ties at the k-th place resolve exactly as in the reference
const int64 rows = in0_shape0, n = in0_shape1, k = out0_shape1;
std::vector<int64> idx(n);
for (int64 r = 0; r < rows; r++) {
    for (int64 j = 0; j < n; j++) idx[j] = j;
    auto bigger = [&](int64 a, int64 b) { return (double)@in0(r, a) > (double)@in0(r, b); };
    if (k * 64 <= n) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), bigger);
    else { std::nth_element(idx.begin(), idx.begin() + k - 1, idx.end(), bigger);
           std::sort(idx.begin(), idx.begin() + k - 1, bigger); }
    for (int64 j = 0; j < k; j++) @out0(r, j) = idx[j];
}
"""


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row of a float64 [rows, n] array (torch's tie order)."""
    out = jt.code([(values.shape[0], k)], ["int64"], [jt.array(values, "float64")],
                  cpu_header="#include <algorithm>\n#include <vector>\n", cpu_src=_TOPK_SRC)[0]
    return out.numpy()


def _box_iou(gt: np.ndarray, pred: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """IoU [G, A] of xyxy ground truths [G, 4] and predictions [A, 4] (eps added to the union)."""
    lt = np.maximum(gt[:, None, :2], pred[None, :, :2])
    rb = np.minimum(gt[:, None, 2:], pred[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    a1 = np.clip(gt[:, 2:] - gt[:, :2], 0, None)
    a2 = np.clip(pred[:, 2:] - pred[:, :2], 0, None)
    return inter / (((a1[:, 0] * a1[:, 1])[:, None] + (a2[:, 0] * a2[:, 1])[None, :]) - inter + eps)


def assign_tal(scores: np.ndarray, pred_px: np.ndarray, points: np.ndarray, gt: np.ndarray,
               cfg: LossConfig) -> dict[str, np.ndarray]:
    """Task-aligned assignment, one image at a time. ``scores`` [B, A, nc] float32, ``pred_px`` [B, A, 4] xyxy px,
    ``points`` [A, 2] px, ``gt`` [B, n_max, 5]. Returns, in the reference assigner's layout, target_labels [B, A]
    (the matched GT's class, also on background anchors), target_bboxes [B, A, 4] px, target_scores [B, A, nc]
    float64 (zero on background), fg_mask [B, A] bool."""
    bsz, n_anchor, nc = scores.shape
    n_max = gt.shape[1]
    labels = np.full((bsz, n_anchor), nc, dtype=np.int64)
    boxes = np.zeros((bsz, n_anchor, 4), dtype=np.float64)
    soft = np.zeros((bsz, n_anchor, nc), dtype=np.float64)
    fg = np.zeros((bsz, n_anchor), dtype=bool)
    if n_max == 0:
        return {"target_labels": labels, "target_bboxes": boxes, "target_scores": soft, "fg_mask": fg}
    pts = points.astype(np.float64)
    for b in range(bsz):
        src = 0 if "assigner_batch" in cfg.deviations else b
        g_cls, g_box = gt[src, :, 0].astype(np.int64), gt[src, :, 1:]
        valid = g_box.sum(-1) > 0
        iou = _box_iou(g_box, pred_px[b].astype(np.float64))                          # [G, A]
        cls_score = scores[b].astype(np.float64)[:, g_cls].T                          # label -1 reads the last class
        metric = np.power(cls_score, cfg.alpha) * np.power(iou, cfg.beta)
        inside = np.minimum(pts[None] - g_box[:, None, :2], g_box[:, None, 2:] - pts[None]).min(-1) > 1e-9
        top = topk_indices(metric * inside, cfg.topk)                                 # [G, k]
        picked = np.zeros((n_max, n_anchor), dtype=np.int64)
        for gi in range(n_max):
            np.add.at(picked[gi], top[gi] if valid[gi] else np.zeros(cfg.topk, np.int64), 1)
        pos = (np.where(picked > 1, 0, picked) * inside * valid[:, None]).astype(np.float64)
        claimed = pos.sum(0)
        if claimed.max() > 1:  # an anchor claimed by several ground truths keeps the best-overlapping one
            best = np.eye(n_max)[iou.argmax(0)].T
            pos = np.where(claimed[None] > 1, best, pos)
        gt_idx = pos.argmax(0)
        fg_b = pos.sum(0) > 0
        lab = np.maximum(g_cls[gt_idx], 0)
        metric = metric * pos
        norm = (metric * (iou * pos).max(-1, keepdims=True)
                / (metric.max(-1, keepdims=True) + 1e-9)).max(0)
        soft[b] = np.eye(nc)[lab] * fg_b[:, None] * norm[:, None]
        labels[b] = lab  # the reference layout: background anchors carry their (unused) GT 0 label too
        boxes[b] = g_box[gt_idx]
        fg[b] = fg_b
    return {"target_labels": labels, "target_bboxes": boxes, "target_scores": soft, "fg_mask": fg}


class BinaryCrossEntropy(jt.Function):
    """Elementwise BCE of probabilities with torch's semantics: each log clamped at -100 in the forward, and the
    gradient (p - y) / max(p (1 - p), 1e-12), finite for saturated scores (autodiff of the clamp gives 0 * inf)."""

    def execute(self, p: jt.Var, y: jt.Var) -> jt.Var:
        self.saved = (p, y)
        return -(y * jt.log(p).maximum(-100.0) + (1 - y) * jt.log(1 - p).maximum(-100.0))

    def grad(self, g: jt.Var) -> tuple[jt.Var, None]:
        p, y = self.saved
        return g * (p - y) / (p * (1 - p)).maximum(1e-12), None


def siou_loss(pred: jt.Var, target: jt.Var, eps: float = 1e-10) -> jt.Var:
    """1 - SIoU of matched xyxy boxes [P, 4] -> [P, 1], in float64 (figure_iou.py's formula)."""
    p, t = pred.float64(), target.float64()
    px1, py1, px2, py2 = p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4]
    tx1, ty1, tx2, ty2 = t[:, 0:1], t[:, 1:2], t[:, 2:3], t[:, 3:4]
    inter = (jt.minimum(px2, tx2) - jt.maximum(px1, tx1)).maximum(0.0) * \
            (jt.minimum(py2, ty2) - jt.maximum(py1, ty1)).maximum(0.0)
    w1, h1 = px2 - px1, py2 - py1 + eps
    w2, h2 = tx2 - tx1, ty2 - ty1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = jt.maximum(px2, tx2) - jt.minimum(px1, tx1)
    ch = jt.maximum(py2, ty2) - jt.minimum(py1, ty1)
    s_cw = (tx1 + tx2 - px1 - px2) * 0.5 + eps
    s_ch = (ty1 + ty2 - py1 - py2) * 0.5 + eps
    sigma = (s_cw * s_cw + s_ch * s_ch).sqrt()
    sin1, sin2 = jt.abs(s_cw) / sigma, jt.abs(s_ch) / sigma
    sin_alpha = jt.ternary(sin1 > math.sqrt(2) / 2, sin2, sin1)
    angle = jt.cos(jt.arcsin(sin_alpha) * 2 - math.pi / 2)
    gamma = angle - 2
    dist = 2 - jt.exp(gamma * (s_cw / cw).sqr()) - jt.exp(gamma * (s_ch / ch).sqr())
    om_w = jt.abs(w1 - w2) / jt.maximum(w1, w2)
    om_h = jt.abs(h1 - h2) / jt.maximum(h1, h2)
    shape = (1 - jt.exp(-om_w)).pow(4) + (1 - jt.exp(-om_h)).pow(4)
    return 1.0 - (iou - 0.5 * (dist + shape))


def detection_loss(outputs: dict[str, Any], targets: np.ndarray, cfg: LossConfig) -> dict[str, Any]:
    """Varifocal class loss + SIoU box loss (no DFL) of the port's output dict against [n, 6] numpy targets.

    Returns {"total", "cls", "iou", "dfl"} (weighted Vars; total is their sum) and "assign" (numpy targets)."""
    scores, dist, maps = outputs["scores"], outputs["boxes"], outputs["maps"]
    bsz, _, nc = scores.shape
    points, strides = _anchor_grid(maps)
    gt = _pack_targets(targets, bsz, cfg.img_size)
    cell = jt.array(points / strides)                                           # anchor centres in grid units
    pred = jt.concat([cell - dist[..., :2], cell + dist[..., 2:]], -1)          # xyxy, grid units
    with jt.no_grad():
        assign = assign_tal(scores.numpy(), (pred * jt.array(strides)).numpy(), points, gt, cfg)
    fg = assign["fg_mask"]
    soft = jt.array(assign["target_scores"], "float64")
    onehot = np.eye(nc + 1)[np.where(fg, assign["target_labels"], nc)][..., :nc]
    label = jt.array(onehot, "float64")
    # varifocal: the weight keeps its gradient (alpha * p^gamma), BCE in float32 with torch's log clamp at -100
    bce = BinaryCrossEntropy.apply(scores.float32(), soft.float32())
    p = scores.float64()
    focal = p * p if cfg.vfl_gamma == 2.0 else p.pow(cfg.vfl_gamma)
    positive = label if cfg.vfl_positive_weight == "label" else soft * label
    weight = cfg.vfl_alpha * focal * (1 - label) + positive
    score_sum = float(assign["target_scores"].sum())
    cls = (bce.float64() * weight).sum()
    if score_sum > 0:
        cls = cls / score_sum
    dfl = dist.sum() * 0.0
    if fg.any():
        pos = jt.array(np.nonzero(fg.reshape(-1))[0].astype(np.int32))
        tgt = jt.array((assign["target_bboxes"] / strides[None]).reshape(-1, 4)[np.nonzero(fg.reshape(-1))[0]],
                       "float64")
        box_w = jt.array(assign["target_scores"].sum(-1).reshape(-1)[np.nonzero(fg.reshape(-1))[0]][:, None],
                         "float64")
        iou = (siou_loss(pred.reshape(-1, 4)[pos], tgt) * box_w).sum()
        iou = iou / score_sum if score_sum > 0 else iou
    else:
        iou = dist.sum() * 0.0
    w_cls, w_iou, w_dfl = cfg.weights
    parts = {"cls": w_cls * cls, "iou": w_iou * iou, "dfl": w_dfl * dfl.float64()}
    return {"total": parts["cls"] + parts["iou"] + parts["dfl"], **parts, "assign": assign}
