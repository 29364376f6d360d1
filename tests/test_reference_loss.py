"""Model-free checks of the reference loss path (anchors, TAL/ATSS assigners, VFL/IoU/DFL) against the goldens.

The official head outputs stored in the goldens are fed straight into `build_loss(...)`, so these tests need no
model. Assigner outputs are read with forward hooks on the assigner modules, as the goldens were recorded.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from golden import FORMULA_SIZES, GOLDEN_N_DIR, load_formula, require_golden, scalar_rel

from reference_torch.anchors import bbox2dist, dist2bbox, generate_anchors
from reference_torch.loss import build_loss

N_STRIDES = (8, 16, 32)


def _capture(module: torch.nn.Module, store: dict) -> None:
    # clone: ComputeLoss divides target_bboxes in place after the assigner returns
    module.register_forward_hook(lambda m, i, o: store.update(out=[t.clone() for t in o]))


def _head_outputs(data: np.lib.npyio.NpzFile, prefix: str, dtype: torch.dtype | None = None) -> tuple:
    feats = [torch.from_numpy(data[f"{prefix}act/detect/0/{i}"]) for i in range(3)]
    if dtype is not None:
        feats = [f.to(dtype) for f in feats]
    return feats, torch.from_numpy(data[f"{prefix}act/detect/1"]), torch.from_numpy(data[f"{prefix}act/detect/2"])


def _fg_per_level(fg_mask: torch.Tensor, counts: list[int]) -> list[int]:
    return [int(c.sum()) for c in torch.split(fg_mask, counts, dim=1)]


def test_anchors_train_and_eval(gold):
    feats = [torch.from_numpy(gold[f"act/detect/0/{i}"]) for i in range(3)]
    anchors, points, n_list, stride = generate_anchors(feats, N_STRIDES)
    assert n_list == [3969, 1024, 256] == gold["anchors/n_per_level"].tolist()
    assert points.shape[0] == 5249 == int(gold["anchors/count"])
    np.testing.assert_array_equal(points.numpy(), gold["anchors/points"])
    np.testing.assert_array_equal(stride.numpy(), gold["anchors/stride"])
    # anchor boxes: squares of side grid_cell_size * stride = 5 * stride centred on the points (docs/gold-yolo-notes.md, "Anchors")
    half = 2.5 * gold["anchors/stride"]
    np.testing.assert_array_equal(anchors.numpy(), np.concatenate([gold["anchors/points"] - half,
                                                                   gold["anchors/points"] + half], 1))
    pts_eval, stride_eval = generate_anchors(feats, N_STRIDES, is_eval=True)
    np.testing.assert_array_equal(pts_eval.numpy(), gold["anchors/points"] / gold["anchors/stride"])
    np.testing.assert_array_equal(stride_eval.numpy(), gold["anchors/stride"])
    feats64 = [f.double() for f in feats]
    assert generate_anchors(feats64, N_STRIDES)[1].dtype == torch.float64


def test_dist_bbox_roundtrip():
    pts = torch.tensor([[10.5, 20.5], [3.5, 4.5]], dtype=torch.float64)
    dist = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 5.0, 16.0]], dtype=torch.float64)
    box = dist2bbox(dist, pts)
    np.testing.assert_array_equal(box.numpy(), [[9.5, 18.5, 13.5, 24.5], [3.0, 4.25, 8.5, 20.5]])
    np.testing.assert_array_equal(dist2bbox(dist, pts, "xywh").numpy(), [[11.5, 21.5, 4.0, 6.0],
                                                                          [5.75, 12.375, 5.5, 16.25]])
    back = bbox2dist(pts, box, 16)
    np.testing.assert_array_equal(back.numpy(), [[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 5.0, 15.99]])  # clip 16-0.01


@pytest.mark.parametrize("prefix", ["", "pert/"], ids=["init", "perturbed"])
def test_tal_loss_from_golden_head(gold, prefix):
    loss_fn = build_loss("gold_yolo-n", num_classes=20, img_size=500, use_dfl=True, reg_max=16)
    assert loss_fn.iou_type == "siou" and loss_fn.warmup_epoch == 0
    cap: dict = {}
    _capture(loss_fn.formal_assigner, cap)
    loss, items = loss_fn(_head_outputs(gold, prefix), torch.from_numpy(gold["targets"]), 0, 0)
    # faithful dtype: targets go through numpy float64, so the loss is float64 even with float32 head outputs
    assert loss.dtype == torch.float64 and not items.requires_grad
    # measured: init 0.0 (bit-identical), perturbed 7.2e-8. The perturbed difference is float32 kernel rounding
    # (softmax/decode), not logic: +-0.5 ulp noise on the stored head outputs moves the loss by ~1e-7.
    assert scalar_rel(loss.item(), gold[f"{prefix}loss/total"]) <= 1e-5
    for got, ref in zip(items.tolist(), gold[f"{prefix}loss/items"].tolist()):
        assert scalar_rel(got, ref) <= 1e-5
    labels, bboxes, scores, fg = cap["out"]
    assert int(fg.sum()) == int(gold[f"{prefix}assign/fg_count"]) == 78
    assert _fg_per_level(fg, [3969, 1024, 256]) == gold[f"{prefix}assign/fg_per_level"].tolist()
    # the whole positive set, including the torch.topk choice among the exact ties at init
    np.testing.assert_array_equal(fg.numpy().astype(np.uint8), gold[f"{prefix}assign/fg_mask"])
    np.testing.assert_array_equal(labels.numpy(), gold[f"{prefix}assign/target_labels"])
    np.testing.assert_array_equal(bboxes.numpy(), gold[f"{prefix}assign/target_bboxes"])
    assert scores.dtype == torch.float64
    # measured: init bit-identical; perturbed 1.2e-7 relative (IoU^6 amplifies the float32 box rounding above)
    tol = 0.0 if prefix == "" else 1e-6
    assert scalar_rel(scores.sum().item(), gold[f"{prefix}assign/target_scores_sum"]) <= tol


def test_atss_warmup_loss_from_golden_head(gold, gold_atss):
    loss_fn = build_loss("gold_yolo-n", num_classes=20, img_size=500, use_dfl=True, reg_max=16, warmup_epoch=4)
    cap: dict = {}
    _capture(loss_fn.warmup_assigner, cap)
    loss, items = loss_fn(_head_outputs(gold, "pert/"), torch.from_numpy(gold["targets"]), 0, 0)
    labels, bboxes, scores, fg = cap["out"]
    np.testing.assert_array_equal(fg.numpy().astype(np.uint8), gold_atss["atss/assign/fg_mask"])
    np.testing.assert_array_equal(labels.numpy(), gold_atss["atss/assign/target_labels"])
    np.testing.assert_array_equal(bboxes.numpy(), gold_atss["atss/assign/target_bboxes"])
    assert int(fg.sum()) == int(gold_atss["atss/assign/fg_count"]) == 37
    assert _fg_per_level(fg, [3969, 1024, 256]) == gold_atss["atss/assign/fg_per_level"].tolist() == [13, 9, 15]
    assert scores.dtype == torch.float32  # faithful: ATSS get_targets uses .float()
    # measured 2.98e-8 (1-2 float32 ulps of the soft IoU labels; same float32-kernel cause as above)
    assert np.abs(scores.numpy() - gold_atss["atss/assign/target_scores"]).max() <= 1e-7
    # measured: total 1.2e-9, items <= 1.7e-9
    assert scalar_rel(loss.item(), gold_atss["atss/loss/total"]) <= 1e-6
    for got, ref in zip(items.tolist(), gold_atss["atss/loss/items"].tolist()):
        assert scalar_rel(got, ref) <= 1e-6


@pytest.mark.parametrize("size", FORMULA_SIZES)
def test_formula_loss_from_golden_head(size):
    """S/M/L (giou, DFL 16, 80 classes): float32 and float64 head outputs of the official run -> the same loss."""
    _, data = load_formula(size)
    targets = torch.from_numpy(data["targets"])
    for prefix, dtype, tol in (("", torch.float32, 1e-5), ("f64/", torch.float64, 1e-12)):
        loss_fn = build_loss(f"gold_yolo-{size}", num_classes=80, img_size=320)
        assert (loss_fn.iou_type, loss_fn.use_dfl, loss_fn.reg_max) == ("giou", True, 16)
        if dtype == torch.float64:  # as the golden's step 7: the DFL projection cast to float64
            loss_fn.proj = torch.nn.Parameter(loss_fn.proj.double(), requires_grad=False)
        cap: dict = {}
        _capture(loss_fn.formal_assigner, cap)
        feats = [torch.from_numpy(data[f"act/detect/0/{i}"]).to(dtype) for i in range(3)]
        outputs = (feats, torch.from_numpy(data[f"{prefix}act/detect/1"]), torch.from_numpy(data[f"{prefix}act/detect/2"]))
        loss, items = loss_fn(outputs, targets, 0, 0)
        # measured: float32 1.2e-7 (S) / 2.9e-7 (M) / 1.4e-7 (L); float64 <= 1.4e-15
        assert scalar_rel(loss.item(), data[f"{prefix}loss/total"]) <= tol
        for got, ref in zip(items.tolist(), data[f"{prefix}loss/items"].tolist()):
            assert scalar_rel(got, ref) <= tol
        fg = cap["out"][3]
        assert int(fg.sum()) == int(data[f"{prefix}assign/fg_count"]) == 52
        assert scalar_rel(cap["out"][2].sum().item(), data[f"{prefix}assign/target_scores_sum"]) <= max(tol, 1e-6)
        if prefix == "":
            assert _fg_per_level(fg, [1600, 400, 100]) == data["assign/fg_per_level"].tolist()
            np.testing.assert_array_equal(fg.numpy().astype(np.uint8), data["assign/fg_mask"])


def test_build_loss_config_defaults():
    n = build_loss("gold_yolo-n", num_classes=20)
    assert (n.iou_type, n.use_dfl, n.reg_max, n.warmup_epoch, n.ori_img_size) == ("siou", False, 0, 0, 640)
    assert n.loss_weight == {"class": 1.0, "iou": 2.5, "dfl": 0.5}
    assert (n.formal_assigner.topk, n.formal_assigner.alpha, n.formal_assigner.beta) == (13, 1.0, 6.0)
    assert n.warmup_assigner.topk == 9
    for size in "sml":
        c = build_loss(f"gold_yolo-{size}")
        assert (c.iou_type, c.use_dfl, c.reg_max, c.num_classes) == ("giou", True, 16, 80)


def test_no_dfl_path_keeps_graph_and_zero_dfl(gold):
    """N shipped config (use_dfl False, reg_max 0): DFL item is exactly 0, the iou/cls terms still backprop."""
    loss_fn = build_loss("gold_yolo-n", num_classes=20, img_size=500)
    feats, scores, _ = _head_outputs(gold, "pert/")
    # 4 raw ltrb distances in stride units; use the expected distances of the golden DFL outputs
    distri = torch.from_numpy(gold["pert/act/detect/2"]).view(2, -1, 4, 17).softmax(-1) @ torch.arange(17.0)
    distri.requires_grad_(True)
    scores = scores.clone().requires_grad_(True)
    loss, items = loss_fn((feats, scores, distri), torch.from_numpy(gold["targets"]), 0, 0)
    loss.backward()
    assert items[1].item() == 0.0 and items[0].item() > 0 and items[2].item() > 0
    assert distri.grad.abs().sum() > 0 and scores.grad.abs().sum() > 0


def test_iou_loss_variants_textbook():
    """DIoU / CIoU / GIoU of `IOUloss` (eps 0) against the textbook formulas in numpy (siou/giou: goldens above)."""
    from reference_torch.iou import IOUloss

    b1 = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 4.0, 2.0]])
    b2 = np.array([[15.0, 10.0, 70.0, 60.0], [5.0, 3.0, 9.0, 7.0]])
    iw = np.clip(np.minimum(b1[:, 2], b2[:, 2]) - np.maximum(b1[:, 0], b2[:, 0]), 0, None)
    ih = np.clip(np.minimum(b1[:, 3], b2[:, 3]) - np.maximum(b1[:, 1], b2[:, 1]), 0, None)
    w1, h1, w2, h2 = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1], b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    union = w1 * h1 + w2 * h2 - iw * ih
    iou = iw * ih / union
    cw = np.maximum(b1[:, 2], b2[:, 2]) - np.minimum(b1[:, 0], b2[:, 0])
    ch = np.maximum(b1[:, 3], b2[:, 3]) - np.minimum(b1[:, 1], b2[:, 1])
    rho2 = (((b2[:, 0] + b2[:, 2]) - (b1[:, 0] + b1[:, 2])) ** 2 + ((b2[:, 1] + b2[:, 3]) - (b1[:, 1] + b1[:, 3])) ** 2) / 4
    diou = iou - rho2 / (cw ** 2 + ch ** 2)
    v = 4 / np.pi ** 2 * (np.arctan(w2 / h2) - np.arctan(w1 / h1)) ** 2
    ciou = diou - v * v / (v - iou + 1)
    giou = iou - (cw * ch - union) / (cw * ch)
    t1, t2 = torch.from_numpy(b1), torch.from_numpy(b2)
    for kind, ref in (("diou", diou), ("ciou", ciou), ("giou", giou), ("iou", iou)):
        got = IOUloss(box_format="xyxy", iou_type=kind, eps=0.0)(t1, t2)
        np.testing.assert_allclose(got.numpy()[:, 0], 1.0 - ref, rtol=0, atol=1e-14, err_msg=kind)


_MKL_COMPATIBLE_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from golden import GOLDEN_N_DIR, load_golden_n
from reference_torch.loss import build_loss
d = load_golden_n(); a = np.load(GOLDEN_N_DIR / "atss.npz")
feats = [torch.from_numpy(d[f"pert/act/detect/0/{i}"]) for i in range(3)]
out = (feats, torch.from_numpy(d["pert/act/detect/1"]), torch.from_numpy(d["pert/act/detect/2"]))
t = torch.from_numpy(d["targets"])
for warm, key, src in ((0, "pert/loss", d), (4, "atss/loss", a)):
    loss, items = build_loss("gold_yolo-n", num_classes=20, img_size=500, use_dfl=True, reg_max=16,
                             warmup_epoch=warm)(out, t, 0, 0)
    ref = float(src[key + "/total"])
    assert abs(loss.item() - ref) <= 1e-7 * abs(ref), (key, loss.item(), ref)
    assert np.allclose(items.numpy(), src[key + "/items"], rtol=1e-7, atol=0), key
print("MATCH_OK")
"""


def test_losses_with_mkl_compatible_mode(tmp_path):
    """The perturbed-state TAL and ATSS float32 losses equal the official ones once MKL runs in its
    conditional-numerical-reproducibility COMPATIBLE mode (the MKL sgemv of the DFL decode is the only float32
    difference left): bit-identical on the CPU the golden was made on; on an AVX2-only CPU ATen's own vector
    kernels differ, 8.6e-9 relative measured, so the bound is 1e-7 (the plain float32 difference is 7.2e-8 to
    2.2e-6). MKL_CBWR must be set before MKL loads, hence the subprocess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    require_golden(GOLDEN_N_DIR)
    if not torch.backends.mkl.is_available():
        pytest.skip("torch is not built with MKL")
    script = tmp_path / "bitwise.py"
    script.write_text(_MKL_COMPATIBLE_SCRIPT)
    env = dict(os.environ, MKL_CBWR="COMPATIBLE")
    res = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "MATCH_OK" in res.stdout, res.stdout + res.stderr
