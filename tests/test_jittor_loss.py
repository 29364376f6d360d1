"""Model-free checks of the Jittor loss half (jittor_impl/{anchors,iou,assigners,loss}.py).

The official head outputs stored in the golden (`act/detect/*`, `pert/act/detect/*`) are fed straight into
`jittor_impl.build_loss(...)` and compared with the official values, and, with gradients, with the PyTorch
reference loss (`reference_torch.build_loss`) on the same inputs. Assigner outputs are read with forward hooks on
the assigner modules, the way the goldens were recorded. First run compiles ~100 Jittor kernels (about 2 min on
2 cores); later runs take seconds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from golden import FORMULA_SIZES, load_formula, load_golden_n_manifest, norm_rel, scalar_rel

import aligner.env  # noqa: F401  (before jittor)
import jittor as jt
from jittor_impl.anchors import bbox2dist, dist2bbox, generate_anchors
from jittor_impl.assigners import torch_topk
from jittor_impl.loss import binary_cross_entropy, build_loss

N_STRIDES = (8, 16, 32)
N_LEVELS = [3969, 1024, 256]
N_KW = dict(num_classes=20, img_size=500, use_dfl=True, reg_max=16, iou_type="siou")


def _max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def _norm_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def _capture(module: jt.Module, store: dict) -> None:
    module.register_forward_hook(lambda m, args, out: store.update(out=[o.numpy() for o in out]))


def _fg_per_level(fg: np.ndarray, counts: list[int]) -> list[int]:
    return [int(c.sum()) for c in np.split(fg, np.cumsum(counts)[:-1], axis=1)]


def _jt_head(data, prefix: str, dtype: str = "float32") -> tuple:
    feats = [jt.array(data[f"{prefix}act/detect/0/{i}"].astype(dtype), dtype) for i in range(3)]
    return (feats, jt.array(data[f"{prefix}act/detect/1"].astype(dtype), dtype),
            jt.array(data[f"{prefix}act/detect/2"].astype(dtype), dtype))


def test_anchors_match_golden(gold):
    feats = [jt.array(gold[f"act/detect/0/{i}"]) for i in range(3)]
    anchors, points, n_list, stride = generate_anchors(feats, N_STRIDES)
    assert n_list == N_LEVELS == gold["anchors/n_per_level"].tolist()
    assert points.shape[0] == 5249 == int(gold["anchors/count"])
    np.testing.assert_array_equal(points.numpy(), gold["anchors/points"])
    np.testing.assert_array_equal(stride.numpy(), gold["anchors/stride"])
    half = 2.5 * gold["anchors/stride"]  # squares of side 5*stride (docs/gold-yolo-notes.md, "Anchors")
    np.testing.assert_array_equal(anchors.numpy(), np.concatenate([gold["anchors/points"] - half,
                                                                   gold["anchors/points"] + half], 1))
    assert all(v.is_stop_grad() for v in (anchors, points, stride))
    pts_eval, stride_eval = generate_anchors(feats, N_STRIDES, is_eval=True)
    np.testing.assert_array_equal(pts_eval.numpy(), gold["anchors/points"] / gold["anchors/stride"])
    np.testing.assert_array_equal(stride_eval.numpy(), gold["anchors/stride"])
    feats64 = [f.float64() for f in feats]
    assert str(generate_anchors(feats64, N_STRIDES)[1].dtype) == "float64"
    assert str(generate_anchors(feats64, N_STRIDES, is_eval=True)[0].dtype) == "float32"  # official torch.float


def test_box_transforms_match_reference():
    from reference_torch.anchors import bbox2dist as t_bbox2dist
    from reference_torch.anchors import dist2bbox as t_dist2bbox

    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 60, (50, 2))
    dist = rng.uniform(0, 20, (2, 50, 4))
    for fmt in ("xyxy", "xywh"):
        ref = t_dist2bbox(torch.from_numpy(dist), torch.from_numpy(pts), fmt).numpy()
        got = dist2bbox(jt.array(dist, "float64"), jt.array(pts, "float64"), fmt).numpy()
        # xywh: Jittor fuses ((p - lt) + (p + rb)) / 2 into one kernel compiled with -Ofast, which may reassociate;
        # measured 2.3e-15 relative (last bits). xyxy is a single op per element: exact.
        np.testing.assert_allclose(got, ref, rtol=1e-14 if fmt == "xywh" else 0, atol=0)
    box = t_dist2bbox(torch.from_numpy(dist), torch.from_numpy(pts)).numpy()
    ref = t_bbox2dist(torch.from_numpy(pts), torch.from_numpy(box), 16).numpy()  # clips at 15.99 (float64)
    got = bbox2dist(jt.array(pts, "float64"), jt.array(box, "float64"), 16).numpy()
    np.testing.assert_array_equal(got, ref)
    assert (ref == 15.99).any()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_topk_equals_torch_on_ties(dtype):
    """Index for index (order included) on tie-heavy rows, both of torch's CPU paths (64k <= n and 64k > n)."""
    rng = np.random.default_rng(1)
    for n, k in ((5249, 13), (3969, 9), (1024, 9), (525, 13), (256, 9), (100, 9)):
        for levels in (2, 3, 50):
            a = (rng.integers(0, levels, size=(6, n)) * 0.25).astype(dtype)
            for largest in (True, False):
                ref = torch.topk(torch.from_numpy(a), k, dim=-1, largest=largest)
                vals, idx = torch_topk(jt.array(a, dtype), k, largest=largest)
                np.testing.assert_array_equal(idx.numpy(), ref.indices.numpy(), err_msg=f"{n} {k} {levels} {largest}")
                np.testing.assert_array_equal(vals.numpy(), ref.values.numpy())


def test_bce_is_torchs_kernel_bitwise():
    """Forward (log clamped at -100, log1p) and backward (g*(x-y)/max((1-x)x, 1e-12)) equal torch bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.random(50000).astype(np.float32)
    x[:4] = [0.0, 1.0, 0.01, 1e-30]
    y = rng.random(50000).astype(np.float32)
    y[::3] = 0.0
    g = rng.random(50000).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ref = torch.nn.functional.binary_cross_entropy(tx, torch.from_numpy(y), reduction="none")
    ref.backward(torch.from_numpy(g))
    jx, jg = jt.array(x), jt.array(g)
    out = binary_cross_entropy(jx, jt.array(y))
    np.testing.assert_array_equal(out.numpy(), ref.detach().numpy())
    np.testing.assert_array_equal(jt.grad((out * jg).sum(), jx).numpy(), tx.grad.numpy())


@pytest.mark.parametrize("prefix", ["", "pert/"], ids=["init", "perturbed"])
def test_tal_loss_matches_golden(gold, prefix):
    loss_fn = build_loss("gold_yolo-n", **N_KW)
    assert loss_fn.warmup_epoch == 0 and loss_fn.iou_type == "siou"
    cap: dict = {}
    _capture(loss_fn.formal_assigner, cap)
    loss, items = loss_fn(_jt_head(gold, prefix), jt.array(gold["targets"]), 0, 0)
    # faithful dtypes: targets through numpy float64 -> float64 loss, items and target scores
    assert str(loss.dtype) == "float64" and str(items.dtype) == "float64" and items.is_stop_grad()
    # measured: init 7.9e-9 / items 2.5e-8; perturbed 3.4e-8 / 8.0e-8 (float32 kernel rounding of the decode)
    assert scalar_rel(loss.item(), gold[f"{prefix}loss/total"]) <= 1e-5
    for got, ref in zip(items.numpy().tolist(), gold[f"{prefix}loss/items"].tolist()):
        assert scalar_rel(got, ref) <= 1e-5
    labels, bboxes, scores, fg = cap["out"]
    assert int(fg.sum()) == int(gold[f"{prefix}assign/fg_count"]) == 78
    assert _fg_per_level(fg, N_LEVELS) == gold[f"{prefix}assign/fg_per_level"].tolist() == [52, 26, 0]
    # the whole positive set, including torch.topk's choice among the exact top-13 ties at init
    np.testing.assert_array_equal(fg.astype(np.uint8), gold[f"{prefix}assign/fg_mask"])
    np.testing.assert_array_equal(labels, gold[f"{prefix}assign/target_labels"])
    np.testing.assert_array_equal(bboxes, gold[f"{prefix}assign/target_bboxes"])
    assert scores.dtype == np.float64
    # Not bit-equal: the IoU^6 metric amplifies the float32 rounding of the decoded boxes (DFL expectation: Jittor
    # kernel vs torch's MKL sgemv). Measured 1.5e-8 (init) and 3.5e-8 (perturbed) relative.
    assert scalar_rel(scores.sum(), gold[f"{prefix}assign/target_scores_sum"]) <= 1e-6


def test_tal_init_ties_resolved_like_torch(gold):
    """Manifest `assigner_topk_boundary.init`: of the anchors tied at the 13th place, torch kept `selected_from_tied`
    (not the lowest indices for GT (1,1)). Those must be positive here and the other tied ones not."""
    manifest = load_golden_n_manifest()["assigner_topk_boundary"]["init"]["per_gt"]
    loss_fn = build_loss("gold_yolo-n", **N_KW)
    cap: dict = {}
    _capture(loss_fn.formal_assigner, cap)
    loss_fn(_jt_head(gold, ""), jt.array(gold["targets"]), 0, 0)
    fg = cap["out"][3]
    n_ties = 0
    for entry in manifest:
        if not entry["boundary_tie"]:
            continue
        n_ties += 1
        kept = set(entry["selected_from_tied"])
        assert all(fg[entry["b"], i] for i in kept)
        assert not any(fg[entry["b"], i] for i in set(entry["tied_with_kth"]) - kept)
    assert n_ties == 5


def test_atss_loss_matches_golden(gold, gold_atss):
    loss_fn = build_loss("gold_yolo-n", warmup_epoch=4, **N_KW)
    cap: dict = {}
    _capture(loss_fn.warmup_assigner, cap)
    loss, items = loss_fn(_jt_head(gold, "pert/"), jt.array(gold["targets"]), 0, 0)
    labels, bboxes, scores, fg = cap["out"]
    np.testing.assert_array_equal(fg.astype(np.uint8), gold_atss["atss/assign/fg_mask"])
    np.testing.assert_array_equal(labels, gold_atss["atss/assign/target_labels"])
    np.testing.assert_array_equal(bboxes, gold_atss["atss/assign/target_bboxes"])
    assert int(fg.sum()) == int(gold_atss["atss/assign/fg_count"]) == 37
    assert _fg_per_level(fg, N_LEVELS) == gold_atss["atss/assign/fg_per_level"].tolist() == [13, 9, 15]
    assert scores.dtype == np.float32  # faithful: ATSS get_targets uses .float()
    # measured 4.5e-8 (1 float32 ulp of the soft IoU labels, from the decoded-box rounding)
    assert np.abs(scores - gold_atss["atss/assign/target_scores"]).max() <= 1e-7
    # measured: total 8.3e-8, items <= 9.0e-8
    assert scalar_rel(loss.item(), gold_atss["atss/loss/total"]) <= 1e-6
    for got, ref in zip(items.numpy().tolist(), gold_atss["atss/loss/items"].tolist()):
        assert scalar_rel(got, ref) <= 1e-6


def _grads_vs_reference(gold, prefix: str, warmup: int, dtype: str) -> dict[str, float]:
    """Loss and d loss / d (pred_scores, pred_distri) of both implementations on the same golden head outputs."""
    from reference_torch.loss import build_loss as torch_build_loss

    ref_fn = torch_build_loss("gold_yolo-n", warmup_epoch=warmup, **N_KW)
    if dtype == "float64":  # golden step 7: the DFL projection cast to float64
        ref_fn.proj = torch.nn.Parameter(ref_fn.proj.double(), requires_grad=False)
    tdt = getattr(torch, dtype)
    feats = [torch.from_numpy(gold[f"{prefix}act/detect/0/{i}"]).to(tdt) for i in range(3)]
    t_s = torch.from_numpy(gold[f"{prefix}act/detect/1"]).to(tdt).requires_grad_()
    t_d = torch.from_numpy(gold[f"{prefix}act/detect/2"]).to(tdt).requires_grad_()
    t_loss, t_items = ref_fn((feats, t_s, t_d), torch.from_numpy(gold["targets"]), 0, 0)
    t_loss.backward()

    feats_j, j_s, j_d = _jt_head(gold, prefix, dtype)
    j_loss, j_items = build_loss("gold_yolo-n", warmup_epoch=warmup, **N_KW)(
        (feats_j, j_s, j_d), jt.array(gold["targets"]), 0, 0)
    g_s, g_d = (g.numpy() for g in jt.grad(j_loss, [j_s, j_d]))
    assert g_s.dtype == np.dtype(dtype) and g_d.dtype == np.dtype(dtype)
    return {
        "loss": scalar_rel(j_loss.item(), t_loss.item()),
        "items": max(scalar_rel(a, b) for a, b in zip(j_items.numpy().tolist(), t_items.tolist())),
        "scores_max": _max_rel(g_s, t_s.grad.numpy()), "scores_norm": _norm_rel(g_s, t_s.grad.numpy()),
        "distri_max": _max_rel(g_d, t_d.grad.numpy()), "distri_norm": _norm_rel(g_d, t_d.grad.numpy()),
    }


@pytest.mark.parametrize("prefix", ["", "pert/"], ids=["init", "perturbed"])
def test_tal_loss_gradients_match_reference_float64(gold, prefix):
    err = _grads_vs_reference(gold, prefix, 0, "float64")
    # measured: loss <= 5.5e-13, grads <= 5e-15 (the float32 BCE inside VFL is bit-identical to torch's)
    assert all(v <= 1e-9 for v in err.values()), err


def test_tal_loss_gradients_match_reference_float32(gold):
    err = _grads_vs_reference(gold, "pert/", 0, "float32")
    # measured: loss 1.1e-7, items 2.3e-7, gradients 2.2e-6 / 1.3e-6 norm-relative (float32 kernel rounding of the
    # decode, amplified by the IoU^6 target scores); same bound as the float32 loss
    assert max(err["loss"], err["items"], err["scores_norm"], err["distri_norm"]) <= 1e-5, err


def test_atss_loss_gradients_match_reference_float64(gold):
    err = _grads_vs_reference(gold, "pert/", 4, "float64")
    # Not 1e-9: the official ATSS target scores are float32 (`.float()`), so target_scores_sum, which divides
    # every term, is a float32 sum of 210k elements. Its last bit depends on the summation order (torch's
    # threaded cascade sum; the golden README measures 2.4e-7 between 1 and 2 torch threads). Measured here:
    # exactly one float32 ulp of the sum, 1.06e-7 relative, on loss, items and both gradients.
    assert all(v <= 3e-7 for v in err.values()), err


@pytest.mark.parametrize("size", FORMULA_SIZES)
def test_formula_loss_from_golden_head(size):
    """S/M/L (giou, DFL 16, 80 classes, 320x320): the official float32 and float64 head outputs -> the same loss."""
    _, data = load_formula(size)
    for prefix, dtype, tol in (("", "float32", 1e-5), ("f64/", "float64", 1e-9)):
        loss_fn = build_loss(f"gold_yolo-{size}", num_classes=80, img_size=320)
        assert (loss_fn.iou_type, loss_fn.use_dfl, loss_fn.reg_max) == ("giou", True, 16)
        cap: dict = {}
        _capture(loss_fn.formal_assigner, cap)
        feats = [jt.array(data[f"act/detect/0/{i}"].astype(dtype), dtype) for i in range(3)]
        outputs = (feats, jt.array(data[f"{prefix}act/detect/1"], dtype),
                   jt.array(data[f"{prefix}act/detect/2"], dtype))
        loss, items = loss_fn(outputs, jt.array(data["targets"]), 0, 0)
        assert scalar_rel(loss.item(), data[f"{prefix}loss/total"]) <= tol, dtype
        for got, ref in zip(items.numpy().tolist(), data[f"{prefix}loss/items"].tolist()):
            assert scalar_rel(got, ref) <= tol, dtype
        fg = cap["out"][3]
        assert int(fg.sum()) == int(data[f"{prefix}assign/fg_count"]) == 52
        assert _fg_per_level(fg, [1600, 400, 100]) == data["assign/fg_per_level"].tolist()
        np.testing.assert_array_equal(fg.astype(np.uint8), data["assign/fg_mask"])
        # float32: decoded-box rounding as in the N test (1e-6); float64: the loss tolerance
        assert scalar_rel(cap["out"][2].sum(), data[f"{prefix}assign/target_scores_sum"]) <= max(tol, 1e-6)
