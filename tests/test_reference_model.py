"""The PyTorch reference model against the official GOLD-YOLO golden data.

N: official init state_dict, activations and eval output (`gold_yolo_n_nc20_dfl_500`, 500x500, batch 2).
S/M/L: formula weights, 320x320, batch 1 (`formula_320`). Parameter counts against docs/gold-yolo-notes.md.
Tolerances are max|a-b|/max|ref|; the golden READMEs give the float32 noise each one is set against.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from golden import formula_tensors, golden_n_model, golden_n_state_dict, load_formula, load_golden_n, max_rel
from golden_formula import formula_rule, formula_state_dict, formula_value, sha256_of
from reference_torch.configs import VARIANTS, scale_config
from reference_torch.layers import RepVGGBlock, SyncBatchNorm2d
from reference_torch.model import Model, build_model, count_parameters, fuse_model, switch_to_deploy
from reference_torch.transformer import DropPath

# N, float32, same official computation: 1 vs 2 threads differ by <= 1.0e-5 (README), so 1e-4 has margin.
N_TRAIN_TOL = 1e-4
N_EVAL_TOL = 1e-5
# formula S/M/L: head tolerance 1e-3 (README: float32 train-mode noise ~3e-4 at the head); neck outputs vary
# by up to 1.9e-4 between thread counts (README), hence 1e-3 too; backbone varies by <= 7.7e-6, hence 1e-4.
F_BACKBONE_TOL = 1e-4
F_NECK_TOL = 1e-3
F_HEAD_TOL = 1e-3
F_EVAL_TOL = 1e-6  # README: eval/output accurate to ~3e-7, 1 vs 2 threads 2.4e-7
F64_HEAD_TOL = 1e-9  # float64 vs the official float64 run (same operations; measured 5.9e-13)
DEPLOY_TOL = 1e-5


# --------------------------------------------------------------------------------------------- N golden
@pytest.fixture(scope="module")
def golden_n() -> Any:
    return load_golden_n()


@pytest.fixture(scope="module")
def n_train_run(golden_n: Any) -> dict[str, Any]:
    """One initial-state train forward of the golden N with hooks on every recorded module."""
    model = golden_n_model(golden_n)
    names = [k[len("act/"):] for k in golden_n.files if k.startswith(("act/backbone.", "act/neck."))]
    modules = dict(model.named_modules())
    acts: dict[str, np.ndarray] = {}
    for name in names:
        modules[name].register_forward_hook(
            lambda mod, inp, out, name=name: acts.__setitem__(name, out[0:1].detach().numpy().copy()))
    model.train()
    with torch.no_grad():
        (feats, scores, distri), _ = model(torch.from_numpy(golden_n["input"]))
    return {"acts": acts, "feats": [f.numpy() for f in feats], "scores": scores.numpy(), "distri": distri.numpy()}


def test_n_state_dict_matches_golden_keys_shapes_and_order(golden_n: Any) -> None:
    torch.manual_seed(0)
    model = build_model("gold_yolo-n", num_classes=20, use_dfl=True, reg_max=16, drop_path_rate=0.0)
    ours = model.state_dict()
    golden = golden_n_state_dict(golden_n)
    assert len(ours) == len(golden) == 929
    assert list(ours) == list(golden)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in golden.items()}
    assert {k: v.dtype for k, v in ours.items()} == {k: v.dtype for k, v in golden.items()}
    result = model.load_state_dict(golden, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_n_seeded_init_equals_official_init(golden_n: Any) -> None:
    """torch.manual_seed(0) + build consumes the RNG like the official build: bit-identical init."""
    torch.manual_seed(0)
    model = build_model("gold_yolo-n", num_classes=20, use_dfl=True, reg_max=16, drop_path_rate=0.0)
    golden = golden_n_state_dict(golden_n)
    differing = [k for k, v in model.state_dict().items() if not torch.equal(v, golden[k])]
    assert differing == []


def test_n_train_activations(golden_n: Any, n_train_run: dict[str, Any]) -> None:
    errors = {name: max_rel(a, golden_n["act/" + name]) for name, a in n_train_run["acts"].items()}
    assert len(errors) == 24  # 5 backbone stages + 19 neck children
    for i in range(3):
        errors[f"detect/0/{i}"] = max_rel(n_train_run["feats"][i], golden_n[f"act/detect/0/{i}"])
    errors["detect/1"] = max_rel(n_train_run["scores"], golden_n["act/detect/1"])
    errors["detect/2"] = max_rel(n_train_run["distri"], golden_n["act/detect/2"])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= N_TRAIN_TOL, (worst, errors[worst])


def test_n_eval_output(golden_n: Any) -> None:
    model = golden_n_model(golden_n, perturbed=True)
    model.eval()
    with torch.no_grad():
        out, featmaps = model(torch.from_numpy(golden_n["input"]))
    assert tuple(out.shape) == (2, 5249, 25) and len(featmaps) == 3
    assert max_rel(out, golden_n["eval/output"]) <= N_EVAL_TOL


# --------------------------------------------------------------------------------------------- counts
# docs/gold-yolo-notes.md, "Parameter counts" (official code, N, training form, base head): (nc, use_dfl, reg_max) -> (total, head, deploy)
N_COUNTS = {
    (80, False, 0): (6_062_590, 429_022, 5_622_494),
    (80, True, 16): (6_077_118, 443_550, 5_637_022),
    (20, False, 0): (6_048_970, 415_402, 5_608_874),
    (20, True, 16): (6_063_498, 429_930, 5_623_402),
}
N_PARTS = {
    "backbone.stem": 544, "backbone.ERBlock_2": 26_112, "backbone.ERBlock_3": 186_112,
    "backbone.ERBlock_4": 1_070_080, "backbone.ERBlock_5": 2_152_448,
    "neck.low_IFM": 333_888, "neck.reduce_layer_c5": 16_512, "neck.LAF_p4": 20_736, "neck.Inject_p4": 12_672,
    "neck.Rep_p4": 165_376, "neck.reduce_layer_p4": 2_112, "neck.LAF_p3": 5_248, "neck.Inject_p3": 3_264,
    "neck.Rep_p3": 41_728, "neck.high_IFM": 642_560, "neck.conv_1x1_n": 67_776, "neck.Inject_n4": 12_672,
    "neck.Rep_n4": 165_376, "neck.Inject_n5": 49_920, "neck.Rep_n5": 658_432,
}
N_HEAD_PARTS_NC80_RM0 = {"stems": 21_952, "cls_convs": 193_984, "reg_convs": 193_984, "cls_preds": 18_160,
                         "reg_preds": 908, "proj_conv": 17}


@pytest.mark.parametrize("nc,use_dfl,reg_max", list(N_COUNTS))
def test_n_parameter_counts(nc: int, use_dfl: bool, reg_max: int) -> None:
    total, head, deploy = N_COUNTS[(nc, use_dfl, reg_max)]
    model = build_model("gold_yolo-n", num_classes=nc, use_dfl=use_dfl, reg_max=reg_max)
    counts = count_parameters(model)
    assert (counts["total"], counts["trainable"], counts["frozen"]) == (total, total - 34, 34)
    assert {k: v["total"] for k, v in counts["per_part"].items()} == {
        "backbone": 3_435_296, "neck": 2_198_272, "detect": head}
    assert counts["tensors"] == 458
    modules = dict(model.named_modules())
    assert {k: sum(p.numel() for p in modules[k].parameters()) for k in N_PARTS} == N_PARTS
    if (nc, reg_max) == (80, 0):
        assert {k: sum(p.numel() for p in getattr(model.detect, k).parameters())
                for k in N_HEAD_PARTS_NC80_RM0} == N_HEAD_PARTS_NC80_RM0
        assert model.detect.proj.numel() == 17  # faithful Detect.reg_max = 16 even with cfg reg_max 0
    model.eval()
    switch_to_deploy(model)
    fuse_model(model)
    assert count_parameters(model)["total"] == deploy


def test_n_bn_families_and_buffers() -> None:
    model = build_model("gold_yolo-n", num_classes=20, use_dfl=True, reg_max=16)
    plain = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    sync = [m for m in model.modules() if type(m) is SyncBatchNorm2d]
    assert len(plain) == 133 and all((m.eps, m.momentum) == (1e-3, 0.03) for m in plain)
    assert len(sync) == 24 and all((m.eps, m.momentum) == (1e-5, 0.1) for m in sync)
    assert sum(m.running_mean.numel() + m.running_var.numel() for m in plain + sync) == 31_040
    assert sum(v.numel() for v in model.state_dict().values()) == 6_094_695


def test_n_conv_silu_counts() -> None:
    """docs/gold-yolo-notes.md, "Parameter counts": N with training_mode conv_silu, nc 20: 5,617,930 (ConvWrapper blocks, nothing to reparam)."""
    counts = count_parameters(build_model("gold_yolo-n", num_classes=20, training_mode="conv_silu"))
    assert counts["total"] == 5_617_930


# --------------------------------------------------------------------------------------------- deploy
def _tiny(size: str, **changes: Any) -> Model:
    """A size's block/backbone/neck types at N depth/width (extra_cfg matches N's widths), formula weights."""
    base = VARIANTS["gold_yolo-n"]
    cfg = dataclasses.replace(VARIANTS[f"gold_yolo-{size}"], depth_multiple=base.depth_multiple,
                              width_multiple=base.width_multiple, extra_cfg=base.extra_cfg, **changes)
    model = Model(cfg)
    sd = {k: torch.from_numpy(formula_value(k, tuple(v.shape), str(v.dtype).replace("torch.", "")))
          for k, v in model.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize("size,changes", [("n", {}), ("n", {"training_mode": "conv_silu"}), ("m", {}), ("l", {})],
                         ids=["n-repvgg", "n-conv_silu", "m-csp-tiny", "l-csp-conv_silu-tiny"])
def test_switch_to_deploy_keeps_eval_output(size: str, changes: dict[str, Any]) -> None:
    model = _tiny(size, **changes).eval()
    x = torch.from_numpy(np.random.default_rng(5).random((1, 3, 128, 128), dtype=np.float32))
    with torch.no_grad():
        ref, ref_maps = model(x)
    n_rep = sum(isinstance(m, RepVGGBlock) for m in model.modules())
    n_bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    switch_to_deploy(model)
    fuse_model(model)
    assert not any(hasattr(m, "rbr_dense") for m in model.modules())
    assert sum(hasattr(m, "rbr_reparam") for m in model.modules()) == n_rep
    assert not any(isinstance(m, SyncBatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) < n_bn_before
    with torch.no_grad():
        out, maps = model(x)
    assert max_rel(out, ref.numpy()) <= DEPLOY_TOL
    assert max_rel(out[..., 5:], ref[..., 5:].numpy()) <= DEPLOY_TOL  # class scores on their own scale
    for a, b in zip(maps, ref_maps):
        assert max_rel(a, b.numpy()) <= DEPLOY_TOL


# --------------------------------------------------------------------------------------------- S/M/L formula
@pytest.fixture(scope="module", params=["s", "m", "l"])
def formula_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Formula model of one size: state_dict, train forward, eval forward, counts (training and deploy form)."""
    size = request.param
    keys, data = load_formula(size)
    weights = formula_tensors(keys)
    torch.manual_seed(0)
    model = build_model(f"gold_yolo-{size}", num_classes=80, drop_path_rate=0.0)
    state = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    model.load_state_dict(weights, strict=True)
    counts = count_parameters(model)
    bn = {"plain": [(m.eps, m.momentum) for m in model.modules() if type(m) is nn.BatchNorm2d],
          "sync": [(m.eps, m.momentum) for m in model.modules() if type(m) is SyncBatchNorm2d]}
    backbone_out: list[np.ndarray] = []
    model.backbone.register_forward_hook(lambda m, i, o: backbone_out.extend(t.numpy().copy() for t in o))
    x = torch.from_numpy(data["input"])
    model.train()
    with torch.no_grad():
        (feats, scores, distri), featmaps = model(x)
    model.load_state_dict(weights, strict=True)  # the train forward moved the BN running stats
    model.eval()
    with torch.no_grad():
        eval_out = model(x)[0]
    switch_to_deploy(model)
    fuse_model(model)
    deploy = count_parameters(model)
    return {"size": size, "keys": keys, "data": data, "state": state, "counts": counts, "bn": bn,
            "backbone": backbone_out, "neck": [t.numpy() for t in featmaps], "feats": [f.numpy() for f in feats],
            "scores": scores.numpy(), "distri": distri.numpy(), "eval": eval_out.numpy(), "deploy": deploy}


def test_formula_state_dict_matches_keys_json(formula_run: dict[str, Any]) -> None:
    keys = formula_run["keys"]["keys"]
    assert list(formula_run["state"]) == [e["name"] for e in keys]
    assert formula_run["state"] == {e["name"]: (tuple(e["shape"]), e["dtype"]) for e in keys}
    values = formula_state_dict(formula_run["keys"])
    assert [e["name"] for e in keys if sha256_of(values[e["name"]]) != e["sha256"]] == []
    assert [e["name"] for e in keys if formula_rule(e["name"], e["shape"], e["dtype"]) != e["rule"]] == []


def test_formula_counts(formula_run: dict[str, Any]) -> None:
    ref, ours = formula_run["keys"]["counts"], formula_run["counts"]
    assert (ours["total"], ours["trainable"], ours["frozen"]) == (
        ref["params_total"], ref["params_trainable"], ref["params_frozen"])
    assert ours["tensors"] == ref["param_tensors_total"]
    assert ours["buffer_tensors"] == ref["buffers"]
    assert {k: (v["total"], v["trainable"], v["tensors"]) for k, v in ours["per_part"].items()} == {
        k: (v["params_total"], v["params_trainable"], v["param_tensors"]) for k, v in ref["per_part"].items()}
    bn = formula_run["bn"]
    assert set(bn["plain"]) == {(1e-3, 0.03)} and set(bn["sync"]) == {(1e-5, 0.1)}
    by_eps = {k.split("_momentum")[0]: v for k, v in ref["bn_layers"].items()}
    assert (len(bn["plain"]), len(bn["sync"])) == (by_eps["eps_1e-3"], by_eps["eps_1e-5"])


# docs/gold-yolo-notes.md, "Configurations and scaling": published params (0.1M) and the official deploy-form thop figures (0.01M; thop counts leaf
# modules only). S's 21.51M is its distill_ns head; the base head here is checked at the published 0.1M.
PUBLISHED = {"s": ("21.5", None), "m": ("41.3", "41.33"), "l": ("75.1", "75.06")}


def test_formula_deploy_counts_match_published(formula_run: dict[str, Any]) -> None:
    published, thop = PUBLISHED[formula_run["size"]]
    deploy = formula_run["deploy"]
    assert f"{deploy['total'] / 1e6:.1f}" == published
    if thop is not None:
        assert f"{deploy['leaf_total'] / 1e6:.2f}" == thop


def test_formula_train_activations(formula_run: dict[str, Any]) -> None:
    data = formula_run["data"]
    for i in range(4):
        assert max_rel(formula_run["backbone"][i], data[f"act/backbone/{i}"]) <= F_BACKBONE_TOL, i
    for i in range(3):
        assert max_rel(formula_run["neck"][i], data[f"act/neck/{i}"]) <= F_NECK_TOL, i
        assert max_rel(formula_run["feats"][i], data[f"act/detect/0/{i}"]) <= F_HEAD_TOL, i
    assert max_rel(formula_run["scores"], data["act/detect/1"]) <= F_HEAD_TOL
    assert max_rel(formula_run["distri"], data["act/detect/2"]) <= F_HEAD_TOL


def test_formula_eval_output(formula_run: dict[str, Any]) -> None:
    assert formula_run["eval"].shape == (1, 2100, 85)
    assert max_rel(formula_run["eval"], formula_run["data"]["eval/output"]) <= F_EVAL_TOL


def test_formula_s_float64_head_outputs() -> None:
    """S in float64 (model.double() after loading the float32 formula values) vs the official float64 run."""
    keys, data = load_formula("s")
    model = build_model("gold_yolo-s", num_classes=80, drop_path_rate=0.0)
    model.load_state_dict(formula_tensors(keys), strict=True)
    model.double().train()
    with torch.no_grad():
        (_, scores, distri), _ = model(torch.from_numpy(data["input"]).double())
    assert scores.dtype == torch.float64
    assert max_rel(scores, data["f64/act/detect/1"]) <= F64_HEAD_TOL
    assert max_rel(distri, data["f64/act/detect/2"]) <= F64_HEAD_TOL


# --------------------------------------------------------------------------------------------- config
def test_scaling_rules_and_drop_path() -> None:
    """The scaling table of docs/gold-yolo-notes.md and the linspace(0, 0.1, depths) drop-path rates of the shipped configs."""
    assert scale_config(VARIANTS["gold_yolo-m"]) == (
        [1, 4, 7, 11, 4, 7, 7, 7, 7], [48, 96, 192, 384, 768, 192, 96, 96, 192, 192, 384])
    assert scale_config(VARIANTS["gold_yolo-n"])[1] == [16, 32, 64, 128, 256, 64, 32, 32, 64, 64, 128]
    model = build_model("gold_yolo-n", num_classes=20)
    blocks = model.neck.high_IFM.transformer_blocks
    assert isinstance(blocks[0].drop_path, nn.Identity)
    assert isinstance(blocks[1].drop_path, DropPath) and blocks[1].drop_path.drop_prob == pytest.approx(0.1)
    assert (model.cfg.num_classes, model.cfg.use_dfl, model.cfg.reg_max, model.cfg.iou_type) == (20, False, 0, "siou")
