"""Jittor model + loss + gradients (jittor_impl) against the official goldens and against reference_torch.

* N golden (500x500, batch 2): which parameters get a gradient at the official init (zero vs unreachable), the
  perturbed state in float32 and float64, and one plain SGD step in float64.
* 30 SGD steps of Jittor and torch side by side on a small synthetic batch (float64 and float32).
* S / M / L formula references (320x320) in float64.

Jittor's float64 convolutions have no oneDNN path, so the float64 runs dominate the runtime (measured on 2 busy
cores: N golden pert64 ~2 min, the 30 float64 steps at 128x128 ~2 min, S+M+L ~4 min). Each expensive run happens
once per module (fixtures); the tests then only compare arrays.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from golden import (FORMULA_DIR, FORMULA_SIZES, check_float64_gradnorms, check_pert64_loss, golden_n_state_dict,
                    load_formula, norm_rel, scalar_rel)
from golden_formula import formula_state_dict

import aligner.env  # noqa: F401  (before jittor)
import jittor as jt
from jittor_impl.loss import build_loss
from jittor_impl.model import build_model
from jittor_impl.train import build_optimizer, train_step
from jittor_impl.weights import load_torch_state_dict

N_KW = dict(num_classes=20, use_dfl=True, reg_max=16, drop_path_rate=0.0)  # the golden N configuration
N_LOSS_KW = dict(num_classes=20, img_size=500, use_dfl=True, reg_max=16, iou_type="siou")
# gradients that are mathematically zero (golden README) are compared with absolute tolerances only:
F64_ZERO_ABS = 1e-12  # the golden's float64 values are < 1e-12
F32_ZERO_ABS = 1e-7  # the golden's float32 values are round-off of ~1e-9

# float32 gradients behind Rep_n5's ReLU sign flips (see test_perturbed_float32_loss_and_gradients): measured
# 9.7e-3 at worst, bound 1.5e-2
RELU_FLIP_BLOCKS, RELU_FLIP_TOL = ("neck.Rep_n5.block.",), 1.5e-2

# Synthetic 30-step run (see test_thirty_sgd_steps_match_torch for why lr is small)
SYNTH_SIZE, SYNTH_STEPS, SYNTH_NC, SYNTH_LR = 128, 30, 4, 1e-5
SYNTH_TARGETS = np.array([[0, 1, 0.30, 0.35, 0.25, 0.30], [0, 3, 0.70, 0.60, 0.40, 0.50],
                          [1, 0, 0.50, 0.50, 0.60, 0.70], [1, 2, 0.20, 0.75, 0.15, 0.20],
                          [1, 1, 0.80, 0.25, 0.20, 0.30]], dtype=np.float32)


_tags = itertools.count()


def _trainable(model: jt.Module) -> list[tuple[str, jt.Var]]:
    return [(n, p) for n, p in model.named_parameters() if not p.is_stop_grad()]


def grad_report(model: jt.Module, loss: jt.Var) -> tuple[dict[str, np.ndarray], set[str]]:
    """jt.grad of ``loss`` w.r.t. every trainable parameter, and the names it could not reach.

    docs/jittor-notes.md, "Gradients": an unreachable target silently gets a zero gradient, with one warning per Var *name* per
    process; every parameter is renamed uniquely first so that each break is reported, then renamed back.
    """
    named = _trainable(model)
    tag = f"#g{next(_tags)}"
    for n, p in named:
        p.name(n + tag)
    with jt.log_capture_scope(log_v=0) as logs:
        grads = jt.grad(loss, [p for _, p in named])
        jt.sync(grads)
    for n, p in named:
        p.name(n)
    unreachable = {rec["msg"].split("'")[1][:-len(tag)] for rec in logs if "doesn't have gradient" in rec["msg"]}
    return {n: g.numpy() for (n, _), g in zip(named, grads)}, unreachable


def _n_model(data: Any, perturbed: bool, dtype: str) -> jt.Module:
    jt.set_global_seed(0)
    model = build_model("gold_yolo-n", **N_KW)
    if dtype == "float64":
        model.float64()
    load_torch_state_dict(model, golden_n_state_dict(data, perturbed))
    return model.train()


@dataclass
class Run:
    loss: float
    items: np.ndarray
    grads: dict[str, np.ndarray]
    unreachable: set[str] = field(default_factory=set)
    extra: dict = field(default_factory=dict)


def _run_n(data: Any, perturbed: bool, dtype: str) -> Run:
    model = _n_model(data, perturbed, dtype)
    loss_fn = build_loss("gold_yolo-n", **N_LOSS_KW)
    out = model(jt.array(data["input"].astype(dtype), dtype))
    loss, items = loss_fn(out[0], jt.array(data["targets"]), 0, 0)
    grads, unreachable = grad_report(model, loss)
    return Run(loss.item(), items.numpy(), grads, unreachable)


@pytest.fixture(scope="module")
def init32(gold) -> Run:
    return _run_n(gold, perturbed=False, dtype="float32")


@pytest.fixture(scope="module")
def pert32(gold) -> Run:
    return _run_n(gold, perturbed=True, dtype="float32")


@pytest.fixture(scope="module")
def pert64_step(gold) -> Run:
    """Perturbed state in float64 through `train_step` with the golden's plain SGD (README step 6), then a forward."""
    model = _n_model(gold, perturbed=True, dtype="float64")
    loss_fn = build_loss("gold_yolo-n", **N_LOSS_KW)
    x, t = jt.array(gold["input"].astype(np.float64), "float64"), jt.array(gold["targets"])
    before = {n: p.numpy().copy() for n, p in _trainable(model)}
    opt = build_optimizer(model, lr=0.01, momentum=0.937, weight_decay=5e-4, nesterov=True, official_groups=False)
    res = train_step(model, loss_fn, x, t, opt)
    grads = {n: p.opt_grad(opt).numpy() for n, p in _trainable(model)}  # still valid after step()
    after = {n: p.numpy().copy() for n, p in _trainable(model)}
    with jt.no_grad():
        loss1, items1 = loss_fn(model(x)[0], t, 0, 0)
    return Run(res["loss"], res["items"].numpy(), grads,
               extra={"before": before, "after": after, "step1_loss": loss1.item(), "step1_items": items1.numpy()})


# ------------------------------------------------------------------------------------------------- N, float32
def test_init_gradients_same_nonzero_set_as_golden(init32, gold, manifest):
    ref = manifest["grad_init"]
    assert len(init32.grads) == ref["n_trainable_tensors"] == 456
    # every parameter is reachable: the 446 zeros are true zeros (cls/reg pred weights are 0 at init), not a break
    assert init32.unreachable == set()
    nonzero = {n for n, g in init32.grads.items() if np.any(g != 0)}
    assert nonzero == set(ref["nonzero_names"]) and len(nonzero) == 10
    assert scalar_rel(init32.loss, gold["loss/total"]) <= 1e-5
    for name in ref["nonzero_names"]:
        # 1e-3 = 10x the golden's own 1-vs-2-thread spread of grad_init (1.0e-4, README)
        assert norm_rel(init32.grads[name], gold[f"grad_init/{name}"]) <= 1e-3, name


def test_unreachable_parameters_are_detected(gold):
    """The reachability check itself: a parameter cut off by detach() is reported, its zero gradient is not 'zero'."""
    model = _n_model(gold, perturbed=True, dtype="float32")
    loss_fn = build_loss("gold_yolo-n", **dict(N_LOSS_KW, img_size=128))
    x = jt.array(gold["input"][:1, :, :128, :128])
    feats, scores, distri = model(x)[0]
    loss, _ = loss_fn((feats, scores.detach(), distri), jt.array(np.array([[0, 1, .5, .5, .4, .4]], np.float32)), 0, 0)
    _, unreachable = grad_report(model, loss)
    assert {"detect.cls_preds.0.weight", "detect.cls_convs.2.conv.weight"} <= unreachable
    assert "detect.reg_preds.0.weight" not in unreachable


def test_perturbed_float32_loss_and_gradients(pert32, gold, manifest):
    """Float32 gradients within 3x the golden's own float32 error per tensor (floored at 1e-3), judged against
    the float64 gradient where the golden stores one (the noise-floor rule), else against the float32 golden.

    Measured exception, neck.Rep_n5.block.{0,1,2} (17 of 444 tensors, port error up to 9.7e-3 vs float64 where
    the official run has 2.3e-4..1.9e-3): their gradients pass through the ReLU of Rep_n5.block.2, and which of
    its 65,536 pre-activations change sign between float32 and float64 is chance: 4 in the port, 2 in the official
    run (|x| down to 1.5e-5; forward errors there are 1.5e-4 vs 9.6e-5). Each flip zeroes one element of the
    incoming gradient, a discrete error that no tolerance proportional to the official run's own error can
    bound: the official code run with 1 thread instead of 2 also exceeds 3x on 3 of these tensors.
    """
    assert scalar_rel(pert32.loss, gold["pert/loss/total"]) <= 1e-5
    for got, ref in zip(pert32.items, gold["pert/loss/items"]):
        assert scalar_rel(got, ref) <= 1e-5
    acc = manifest["grad_pert_accuracy"]
    math_zero = set(acc["mathematically_zero"]["names"])
    all_zero = set(manifest["grad_pert"]["all_zero_names"])
    assert len(pert32.grads) == 456 and pert32.unreachable == set()
    exceptions = {}
    for name, g in pert32.grads.items():
        ref = gold[f"pert/grad/{name}"]
        if name in all_zero:  # stride-32 regression branch: no positive anchor there
            assert not np.any(g) and not np.any(ref), name
            continue
        if name in math_zero:
            assert np.abs(g).max() <= F32_ZERO_ABS, name
            continue
        tol = max(3.0 * acc["per_tensor"][name]["normrel_f32_vs_f64"], 1e-3)
        key64 = f"pert64/grad/{name}"
        err = norm_rel(g, gold[key64] if key64 in gold.files else ref)
        if err > tol:
            exceptions[name] = err
    assert all(n.startswith(RELU_FLIP_BLOCKS) for n in exceptions), sorted(exceptions)
    assert max(exceptions.values(), default=0.0) <= RELU_FLIP_TOL, exceptions


# ------------------------------------------------------------------------------------------------- N, float64
def test_perturbed_float64_loss_and_gradients(pert64_step, gold, manifest):
    stored, math_zero = check_pert64_loss(pert64_step.loss, pert64_step.items, gold, manifest)
    for name in stored:
        g, ref = pert64_step.grads[name], gold[f"pert64/grad/{name}"]
        assert g.dtype == np.float64
        if name in math_zero:
            assert np.abs(g).max() <= F64_ZERO_ABS, name
        elif not np.any(ref):
            assert not np.any(g), name
        else:
            assert norm_rel(g, ref) <= 1e-6, name


def test_sgd_step_float64(pert64_step, gold, manifest):
    for name in manifest["step1"]["tensors"]:
        ref, old, new = gold[f"step1_64/{name}"], pert64_step.extra["before"][name], pert64_step.extra["after"][name]
        assert norm_rel(new, ref) <= 1e-6, name
        assert norm_rel(new - old, ref - old) <= 1e-6, name  # the update itself (the parameter dominates above)
    assert scalar_rel(pert64_step.extra["step1_loss"], gold["step1_64/loss/total"]) <= 1e-6
    for got, ref in zip(pert64_step.extra["step1_items"], gold["step1_64/loss/items"]):
        assert scalar_rel(got, ref) <= 1e-6


# ------------------------------------------------------------------------------------- 30 steps vs torch
def _synthetic_pair(dtype: str):
    """Reference and Jittor N (nc 4) from the same torch init, pred weights perturbed like the golden (step 3)."""
    from reference_torch.loss import build_loss as torch_build_loss
    from reference_torch.model import build_model as torch_build_model

    torch.manual_seed(0)
    t_model = torch_build_model("gold_yolo-n", num_classes=SYNTH_NC, use_dfl=True, reg_max=16, drop_path_rate=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for i in range(3):
            t_model.detect.cls_preds[i].weight.normal_(0, 0.01)
        for i in range(3):
            t_model.detect.reg_preds[i].weight.normal_(0, 0.01)
        for n, p in t_model.named_parameters():
            if n.endswith("attn.proj.1.bn.weight"):
                p.fill_(1.0)
    sd = {k: v.detach().numpy().copy() for k, v in t_model.state_dict().items()}
    t_model = t_model.to(getattr(torch, dtype))
    jt.set_global_seed(0)
    j_model = build_model("gold_yolo-n", num_classes=SYNTH_NC, use_dfl=True, reg_max=16, drop_path_rate=0.0)
    if dtype == "float64":
        j_model.float64()
    load_torch_state_dict(j_model, sd)
    kw = dict(num_classes=SYNTH_NC, img_size=SYNTH_SIZE, use_dfl=True, reg_max=16)
    t_loss, j_loss = torch_build_loss("gold_yolo-n", **kw), build_loss("gold_yolo-n", **kw)
    if dtype == "float64":  # as the golden's step 7: the DFL projection cast to float64
        t_loss.proj = torch.nn.Parameter(t_loss.proj.double(), requires_grad=False)
    return t_model, j_model, t_loss, j_loss


def _train_side_by_side(dtype: str) -> tuple[list[float], list[float]]:
    from reference_torch.train import build_optimizer as torch_build_optimizer
    from reference_torch.train import train_step as torch_train_step

    t_model, j_model, t_loss, j_loss = _synthetic_pair(dtype)
    opt_kw = dict(lr=SYNTH_LR, momentum=0.937, weight_decay=5e-4, nesterov=True, official_groups=True)
    t_opt, j_opt = torch_build_optimizer(t_model, **opt_kw), build_optimizer(j_model, **opt_kw)
    x = np.random.default_rng(0).random((2, 3, SYNTH_SIZE, SYNTH_SIZE), dtype=np.float32)
    t_x, j_x = torch.from_numpy(x).to(getattr(torch, dtype)), jt.array(x.astype(dtype), dtype)
    t_t, j_t = torch.from_numpy(SYNTH_TARGETS), jt.array(SYNTH_TARGETS)
    t_curve, j_curve = [], []
    for step in range(SYNTH_STEPS):
        t_curve.append(torch_train_step(t_model, t_loss, t_x, t_t, t_opt, 0, step)["loss"])
        j_curve.append(train_step(j_model, j_loss, j_x, j_t, j_opt, 0, step)["loss"])
    return t_curve, j_curve


def test_thirty_sgd_steps_match_torch():
    """Per-step losses of torch and Jittor from the same init: float64 <= 1e-6, float32 <= 1e-2, loss falls.

    lr 1e-5 (official 3 groups, momentum .937 nesterov, wd 5e-4): at the golden's lr 1e-2 one step is far outside
    the linear regime (README) and the trajectory is chaotic — measured in float64, a 9e-15 difference at step 0
    grew ~20x per step (1.4e-8 by step 6); at 1e-3 / 1e-4 the float32 curves (whose gradients are only ~1% accurate
    at this state, README) drift apart by 2e-2 and TAL top-13 swaps add 1% jumps. At 1e-5 the loss still falls.
    Measured at 128x128: float64 4.5957 -> 4.4966, torch vs Jittor <= 9.8e-16 at every step; float32 <= 4.0e-3.
    """
    t64, j64 = _train_side_by_side("float64")
    rel64 = [scalar_rel(j, t) for j, t in zip(j64, t64)]
    assert max(rel64) <= 1e-6, rel64
    assert t64[-1] < t64[0] and j64[-1] < j64[0]
    t32, j32 = _train_side_by_side("float32")
    rel32 = [scalar_rel(j, t) for j, t in zip(j32, t32)]
    assert max(rel32) <= 1e-2, rel32
    assert t32[-1] < t32[0] and j32[-1] < j32[0]


def test_official_optimizer_groups_match_reference():
    from reference_torch.model import build_model as torch_build_model
    from reference_torch.train import build_optimizer as torch_build_optimizer

    torch.manual_seed(0)
    t_model = torch_build_model("gold_yolo-n", num_classes=SYNTH_NC)
    t_names = {id(p): n for n, p in t_model.named_parameters()}
    t_groups = [sorted(t_names[id(p)] for p in g["params"]) for g in
                torch_build_optimizer(t_model, lr=0.01, weight_decay=5e-4).param_groups]
    j_model = build_model("gold_yolo-n", num_classes=SYNTH_NC)
    j_names = {id(p): n for n, p in j_model.named_parameters()}
    opt = build_optimizer(j_model, lr=0.01, weight_decay=5e-4)
    j_groups = [sorted(j_names[id(p)] for p in g["params"]) for g in opt.param_groups]
    assert j_groups == t_groups
    assert [g.get("weight_decay", opt.weight_decay) for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert "neck.high_IFM.transformer_blocks.0.attn.to_q.bn.weight" in j_groups[1]  # SyncBN weights are decayed


# ------------------------------------------------------------------------------------------------- S / M / L
@pytest.fixture(scope="module", params=FORMULA_SIZES)
def formula64(request) -> dict:
    size = request.param
    keys, data = load_formula(size)
    man = json.loads((FORMULA_DIR / f"gold_yolo_{size}" / "manifest.json").read_text())
    jt.set_global_seed(0)
    model = build_model(f"gold_yolo-{size}", num_classes=80, drop_path_rate=0.0).float64()
    load_torch_state_dict(model, formula_state_dict(keys))
    model.train()
    loss_fn = build_loss(f"gold_yolo-{size}", num_classes=80, img_size=320)
    cap: dict = {}
    loss_fn.formal_assigner.register_forward_hook(lambda m, args, out: cap.update(out=[o.numpy() for o in out]))
    loss, items = loss_fn(model(jt.array(data["input"].astype(np.float64), "float64"))[0],
                          jt.array(data["targets"]), 0, 0)
    grads, unreachable = grad_report(model, loss)
    return {"size": size, "data": data, "manifest": man, "loss": loss.item(), "items": items.numpy(),
            "assign": cap["out"], "gradnorm": {n: float(np.linalg.norm(g)) for n, g in grads.items()},
            "unreachable": unreachable}


def test_formula_float64_loss_and_assigner(formula64):
    data = formula64["data"]
    assert scalar_rel(formula64["loss"], data["f64/loss/total"]) <= 1e-9
    for got, ref in zip(formula64["items"], data["f64/loss/items"]):
        assert scalar_rel(got, ref) <= 1e-9
    _, _, scores, fg = formula64["assign"]
    assert int(fg.sum()) == int(data["f64/assign/fg_count"]) == 52
    assert [int(c.sum()) for c in np.split(fg, [1600, 2000], axis=1)] == data["assign/fg_per_level"].tolist()
    np.testing.assert_array_equal(fg.astype(np.uint8), data["assign/fg_mask"])  # float32 and float64 masks agree
    assert scalar_rel(scores.sum(), data["f64/assign/target_scores_sum"]) <= 1e-9


def test_formula_float64_gradient_norms(formula64):
    data, norms = formula64["data"], formula64["gradnorm"]
    assert formula64["unreachable"] == set()
    assert set(norms) == {k[len("f64/gradnorm/"):] for k in data.files if k.startswith("f64/gradnorm/")}
    check_float64_gradnorms(norms, data, formula64["manifest"]["float32_vs_float64"])
