"""Full forward + loss + backward of the reference model against the official goldens (gradients, float64 runs,
the SGD step, BN buffers, and S/M/L with formula weights).

Each expensive run happens once per module (fixtures); the tests then only compare arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from golden import (FORMULA_DIR, FORMULA_SIZES, check_float64_gradnorms, check_pert64_loss, formula_model,
                    golden_n_model, load_formula, norm_rel, scalar_rel)

from reference_torch.loss import build_loss
from reference_torch.model import build_model
from reference_torch.train import build_optimizer, train_step

# float64 gradients of the "mathematically zero" tensors are < 1e-12 in the goldens (manifest notes)
F64_ZERO_ABS = 1e-12
# the stored float32 values of those tensors are round-off of ~1e-9 (README); ours measured <= 4.3e-9
F32_ZERO_ABS = 1e-7


def _grads(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Gradient of every trainable parameter (zeros where autograd left None)."""
    return {n: (p.grad.detach().numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape)))
            for n, p in model.named_parameters() if p.requires_grad}


def _n_loss(warmup_epoch: int = 0, dtype: torch.dtype = torch.float32):
    loss_fn = build_loss("gold_yolo-n", num_classes=20, img_size=500, use_dfl=True, reg_max=16,
                         warmup_epoch=warmup_epoch)
    if dtype == torch.float64:  # golden step 7: only the DFL projection is cast; VFL keeps its float32 BCE
        loss_fn.proj = torch.nn.Parameter(loss_fn.proj.double(), requires_grad=False)
    return loss_fn


@dataclass
class Run:
    loss: float
    items: np.ndarray
    grads: dict[str, np.ndarray]
    extra: dict = field(default_factory=dict)


def _run_n(gold, perturbed: bool, dtype: torch.dtype, warmup_epoch: int = 0) -> Run:
    model = golden_n_model(gold, perturbed=perturbed).to(dtype).train()
    loss_fn = _n_loss(warmup_epoch, dtype)
    out = model(torch.from_numpy(gold["input"]).to(dtype))
    loss, items = loss_fn(out[0], torch.from_numpy(gold["targets"]), 0, 0)
    loss.backward()
    buffers = {n: b.detach().numpy().copy() for n, b in model.named_buffers()}
    return Run(loss.item(), items.numpy(), _grads(model), {"buffers": buffers})


@pytest.fixture(scope="module")
def init32(gold) -> Run:
    return _run_n(gold, perturbed=False, dtype=torch.float32)


@pytest.fixture(scope="module")
def pert32(gold) -> Run:
    return _run_n(gold, perturbed=True, dtype=torch.float32)


@pytest.fixture(scope="module")
def atss64(gold) -> Run:
    return _run_n(gold, perturbed=True, dtype=torch.float64, warmup_epoch=4)


@pytest.fixture(scope="module")
def pert64_step(gold) -> Run:
    """Perturbed state in float64 through `train_step` with the golden's plain SGD, then the next forward."""
    model = golden_n_model(gold, perturbed=True).double().train()
    loss_fn = _n_loss(0, torch.float64)
    x, t = torch.from_numpy(gold["input"]).double(), torch.from_numpy(gold["targets"])
    before = {n: p.detach().clone().numpy() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.01, momentum=0.937, weight_decay=5e-4, nesterov=True, official_groups=False)
    res = train_step(model, loss_fn, x, t, opt)
    grads = _grads(model)  # zero_grad ran before the forward, so these are the step's gradients
    after = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    with torch.no_grad():
        loss1, items1 = loss_fn(model(x)[0], t, 0, 0)
    return Run(res["loss"], res["items"].numpy(), grads,
               {"before": before, "after": after, "step1_loss": loss1.item(), "step1_items": items1.numpy()})


# ------------------------------------------------------------------------------------------------- N, float32
def test_init_gradients_match_golden(init32, gold, manifest):
    ref = manifest["grad_init"]
    nonzero = {n for n, g in init32.grads.items() if np.any(g != 0)}
    assert len(init32.grads) == ref["n_trainable_tensors"] == 456
    assert nonzero == set(ref["nonzero_names"]) and len(nonzero) == 10
    assert scalar_rel(init32.loss, gold["loss/total"]) <= 1e-5  # measured 0.0
    for name in ref["nonzero_names"]:
        # 1e-3 = 10x the golden's own 1-vs-2-thread spread of grad_init (1.0e-4, README); measured 0.0
        assert norm_rel(init32.grads[name], gold[f"grad_init/{name}"]) <= 1e-3, name


def test_perturbed_float32_loss_and_gradients(pert32, gold, manifest):
    # measured 7.2e-8 where the golden was made (the MKL sgemv of the DFL decode), 2.2e-6 on an AVX2-only CPU
    assert scalar_rel(pert32.loss, gold["pert/loss/total"]) <= 1e-5
    for got, ref in zip(pert32.items, gold["pert/loss/items"]):
        assert scalar_rel(got, ref) <= 1e-5  # measured <= 1.5e-7
    acc = manifest["grad_pert_accuracy"]
    math_zero = set(acc["mathematically_zero"]["names"])
    all_zero = set(manifest["grad_pert"]["all_zero_names"])
    assert len(pert32.grads) == 456
    worst = 0.0
    for name, g in pert32.grads.items():
        ref = gold[f"pert/grad/{name}"]
        if name in all_zero:  # stride-32 regression branch: no positive anchor there
            assert not np.any(g) and not np.any(ref), name
        elif name in math_zero:
            assert np.abs(g).max() <= F32_ZERO_ABS, name
        else:
            # Another float32 run is another sample of the rounding the golden measured once per tensor: on an
            # AVX2-only CPU (other ATen/oneDNN kernels) the float32 gradients moved up to 9.7x that error away from
            # float64 (neck.Rep_n5: ReLU pre-activations changing sign; stem BN weight 3.9x). A wrong formula
            # moves a gradient by O(1), far beyond this bound.
            tol = max(20.0 * acc["per_tensor"][name]["normrel_f32_vs_f64"], 1e-3)
            err = norm_rel(g, ref)
            worst = max(worst, err / tol)
            assert err <= tol, (name, err, tol)
    assert worst <= 1.0  # measured: max err/tol 2.0e-3 where the golden was made; 0.49 on an AVX2-only CPU


def test_bn_buffers_after_one_train_forward(pert32, gold):
    bufs = pert32.extra["buffers"]
    assert len(bufs) == 157 * 3
    for name, b in bufs.items():
        ref = gold[f"step1/{name}"]
        if name.endswith("num_batches_tracked"):
            assert int(b) == int(ref) == 1
        else:
            # 5e-4 ~ 3.5x the golden's own 1-vs-2-thread spread for step1 buffers (1.4e-4); measured 0.0
            assert np.abs(b - ref).max() / np.abs(ref).max() <= 5e-4, name


# ------------------------------------------------------------------------------------------------- N, float64
def test_perturbed_float64_loss_and_gradients(pert64_step, gold, manifest):
    stored, math_zero = check_pert64_loss(pert64_step.loss, pert64_step.items, gold, manifest)
    for name in stored:
        g, ref = pert64_step.grads[name], gold[f"pert64/grad/{name}"]
        if name in math_zero:
            assert np.abs(g).max() <= F64_ZERO_ABS, name
        elif not np.any(ref):
            assert not np.any(g), name
        else:
            assert norm_rel(g, ref) <= 1e-6, name  # measured max 4.2e-13


def test_sgd_step_float64(pert64_step, gold, manifest):
    for name in manifest["step1"]["tensors"]:
        ref, old, new = gold[f"step1_64/{name}"], pert64_step.extra["before"][name], pert64_step.extra["after"][name]
        assert norm_rel(new, ref) <= 1e-6, name
        # the update itself (the parameter dominates the line above): measured <= 1.1e-12
        assert norm_rel(new - old, ref - old) <= 1e-6, name
    # the step is far outside the linear regime and amplifies gradient error; measured 1.4e-14
    assert scalar_rel(pert64_step.extra["step1_loss"], gold["step1_64/loss/total"]) <= 1e-6
    for got, ref in zip(pert64_step.extra["step1_items"], gold["step1_64/loss/items"]):
        assert scalar_rel(got, ref) <= 1e-6


def test_atss_float64_gradient_norms(atss64, gold_atss):
    assert scalar_rel(atss64.loss, gold_atss["atss64/loss/total"]) <= 1e-6  # measured 0.0
    names = [k[len("atss64/gradnorm/"):] for k in gold_atss.files if k.startswith("atss64/gradnorm/")]
    assert len(names) == 456 and set(names) == set(atss64.grads)
    for name in names:
        ref = float(gold_atss[f"atss64/gradnorm/{name}"])
        got = float(np.linalg.norm(atss64.grads[name]))
        if ref < F64_ZERO_ABS:  # the 7 mathematically-zero tensors (reference norms ~1e-17)
            assert got <= F64_ZERO_ABS, name
        else:
            assert scalar_rel(got, ref) <= 1e-6, name  # measured max 3.7e-13


def test_official_optimizer_groups():
    torch.manual_seed(0)
    model = build_model("gold_yolo-m", num_classes=20)
    opt = build_optimizer(model, lr=0.01, momentum=0.937, weight_decay=5e-4, nesterov=True)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    assert [g["weight_decay"] for g in opt.param_groups] == [0, 5e-4, 0]
    assert all(g["nesterov"] and g["momentum"] == 0.937 for g in opt.param_groups)
    flat = [n for g in groups for n in g]
    assert len(flat) == len(set(flat))
    bn_types = {n: type(m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert set(groups[0]) == {f"{n}.weight" for n, t in bn_types.items() if t is torch.nn.BatchNorm2d}
    assert set(groups[2]) == {n for n in names.values() if n.endswith(".bias")}
    # faithful: SyncBN (not a BatchNorm2d in torch/mmcv) weights are decayed; BottleRep alpha is in no group
    assert "neck.high_IFM.transformer_blocks.0.attn.to_q.bn.weight" in groups[1]
    alphas = {n for n in names.values() if n.endswith(".alpha")}
    assert alphas and not alphas & set(flat)
    assert set(flat) | alphas | {"detect.proj"} == set(names.values())


# ------------------------------------------------------------------------------------------------- S / M / L
@pytest.fixture(scope="module", params=FORMULA_SIZES)
def formula_run(request):
    size = request.param
    keys, data = load_formula(size)
    man = json.loads((FORMULA_DIR / f"gold_yolo_{size}" / "manifest.json").read_text())
    x, t = torch.from_numpy(data["input"]), torch.from_numpy(data["targets"])
    res: dict = {"size": size, "data": data, "manifest": man}
    for dtype in (torch.float32, torch.float64):
        model = formula_model(size, keys).to(dtype).train()
        loss_fn = build_loss(f"gold_yolo-{size}", num_classes=80, img_size=320)
        if dtype == torch.float64:
            loss_fn.proj = torch.nn.Parameter(loss_fn.proj.double(), requires_grad=False)
        cap: dict = {}
        loss_fn.formal_assigner.register_forward_hook(lambda m, i, o: cap.update(out=[v.clone() for v in o]))
        with torch.set_grad_enabled(dtype == torch.float64):
            loss, items = loss_fn(model(x.to(dtype))[0], t, 0, 0)
        if dtype == torch.float64:
            loss.backward()
            res["gradnorm"] = {n: float(np.linalg.norm(g)) for n, g in _grads(model).items()}
        res[dtype] = (loss.item(), items.numpy(), cap["out"])
        del model
    return res


def test_formula_losses_and_assigner(formula_run):
    data = formula_run["data"]
    # float32: 1.2e-5 measured for L on an AVX2-only CPU (the golden README: thread count alone moves L's head
    # outputs by 1.8e-4)
    for dtype, prefix, tol in ((torch.float32, "", 5e-5), (torch.float64, "f64/", 1e-9)):
        loss, items, (_, _, scores, fg) = formula_run[dtype]
        # measured: float32 1.2e-7 / 2.9e-7 / 1.4e-7 (S/M/L), float64 <= 4.0e-14
        assert scalar_rel(loss, data[f"{prefix}loss/total"]) <= tol, dtype
        for got, ref in zip(items, data[f"{prefix}loss/items"]):
            assert scalar_rel(got, ref) <= tol, dtype
        assert int(fg.sum()) == int(data[f"{prefix}assign/fg_count"]) == 52
        assert scalar_rel(scores.sum().item(), data[f"{prefix}assign/target_scores_sum"]) <= max(tol, 1e-6)
        np.testing.assert_array_equal(fg.numpy().astype(np.uint8), data["assign/fg_mask"])
    fg32 = formula_run[torch.float32][2][3]
    assert [int(c.sum()) for c in torch.split(fg32, [1600, 400, 100], 1)] == data["assign/fg_per_level"].tolist()


def test_formula_float64_gradient_norms(formula_run):
    # measured: mathematically-zero ratios < 1e-8; others max 1.1e-11 (S), 4.7e-9 (M alpha), 1.7e-10 (L)
    rels = check_float64_gradnorms(formula_run["gradnorm"], formula_run["data"],
                                   formula_run["manifest"]["float32_vs_float64"])
    assert float(np.median(rels)) <= 1e-7  # measured 4.5e-13 / 2.2e-11 / 2.1e-12
