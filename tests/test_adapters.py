"""Adapters: hook hygiene, gradient status (nonzero / zero / UNREACHABLE / frozen), eval()-frozen detection,
weight transfer problems, and that the core imports neither framework. Uses the small pair."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aligner.records import FrozenBy, GradStatus, ParamKind, WeightProblemKind

# Every aligner module is core except these, which exist to import a framework (and __main__, which runs).
FRAMEWORK_MODULES = {"aligner.adapters.torch_adapter", "aligner.adapters.jittor_adapter",
                     "aligner.pairs._small_torch", "aligner.pairs._small_jittor", "aligner.__main__"}
MUST_EXIST = {"aligner.records", "aligner.errors", "aligner.trace_io", "aligner.weights", "aligner.capture",
              "aligner.adapters.base", "aligner.adapters.recording", "aligner.pairs.small",
              "aligner.pairs.gold_yolo", "aligner.metrics"}
BODY = ("down.", "attn.")  # only upstream of the planted graph break (stem also feeds the concat)


def test_core_imports_no_framework():
    """`import aligner` and every core module (found by walking the package) load neither framework."""
    code = ("import importlib, json, pkgutil, sys\n"
            "import aligner\n"
            "names = sorted(m.name for m in pkgutil.walk_packages(aligner.__path__, 'aligner.'))\n"
            f"core = [n for n in names if n not in {sorted(FRAMEWORK_MODULES)!r}]\n"
            "for n in core: importlib.import_module(n)\n"
            "print(json.dumps([core, sorted(m for m in ('torch', 'jittor') if m in sys.modules)]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    core, loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert MUST_EXIST <= set(core), MUST_EXIST - set(core)
    assert loaded == [], f"a core module imported {loaded}"


@pytest.fixture(scope="module")
def pair():
    from aligner.pairs import get_pair
    return get_pair("small")


@pytest.fixture(scope="module")
def adapters():
    from aligner.adapters import get_adapter
    return get_adapter("torch"), get_adapter("jittor")


@pytest.fixture(scope="module")
def weights(pair):
    from aligner.capture import torch_weights
    return torch_weights(pair)


def _jittor_model(pair, adapters, weights, state="perturbed", **options):
    from aligner.weights import transfer_arrays
    jm = pair.build_jittor(**options)
    assert transfer_arrays(weights[state], adapters[1], jm) == []
    return jm


def _capture(adapter, pair, model, framework):
    d = pair.make_inputs()
    return adapter.capture(model, d.inputs, pair.loss_for(framework), d.targets, dtype=pair.dtype)


def _status(trace):
    return {p.name: p.grad_status for p in trace.params if p.kind == ParamKind.TRAINABLE}


def test_torch_model_restored_and_user_hook_kept(pair, adapters):
    import torch
    ta = adapters[0]
    tm = pair.build_torch()
    seen = []
    tm.down.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    tm.attn.eval()  # a mixed-mode model must come back mixed
    before_hooks = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                    for n, m in tm.named_modules()}
    before_modes = {n: m.training for n, m in tm.named_modules()}
    before_state = {k: v.clone() for k, v in tm.state_dict().items()}
    trace = _capture(ta, pair, tm, "torch")
    assert len(seen) == 1 and trace.meta["loss_run"]
    assert {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for n, m in tm.named_modules()} == before_hooks
    assert {n: m.training for n, m in tm.named_modules()} == before_modes
    after = tm.state_dict()
    assert all(torch.equal(before_state[k], after[k]) for k in before_state)  # BN stats/counters restored
    assert all(p.grad is None for p in tm.parameters())  # autograd.grad never touches .grad
    modes = {c.module: c.training for c in trace.calls}
    assert modes["attn.qkv"] is False and modes["down.conv"] is True


def test_jittor_model_restored_and_user_hook_composed(pair, adapters, weights):
    ja = adapters[1]
    jm = _jittor_model(pair, adapters, weights)
    seen = []

    def user_hook(m, a, o):
        seen.append(tuple(o.shape))
    jm.down.register_forward_hook(user_hook)
    pre_seen = []
    jm.shared.register_pre_forward_hook(lambda m, a: pre_seen.append(len(a)))
    jm.attn.is_train = False
    attrs = ("__fhook__", "__fhook2__", "__bihook__", "__bohook__", "is_train")
    mods = [m for _, m in jm.named_modules()]
    before = [{a: m.__dict__.get(a) for a in attrs} for m in mods]
    classes = {type(m) for m in mods}
    before_cls = {c: {a: c.__dict__.get(a) for a in ("__call__", "__hooked_call__", "__hooked__")} for c in classes}
    before_stop = [(n, v.is_stop_grad()) for n, v in jm.named_parameters()]
    before_vals = {n: v.numpy().copy() for n, v in jm.named_parameters()}
    trace = _capture(ja, pair, jm, "jittor")
    assert seen == [(2, 16, 8, 8)]  # the user's hook ran once, composed with ours
    assert pre_seen == [1, 1]  # the user's pre-hook on the shared module ran for both calls
    assert [{a: m.__dict__.get(a) for a in attrs} for m in mods] == before
    assert {c: {a: c.__dict__.get(a) for a in ("__call__", "__hooked_call__", "__hooked__")}
            for c in classes} == before_cls
    assert [(n, v.is_stop_grad()) for n, v in jm.named_parameters()] == before_stop
    for n, v in jm.named_parameters():  # running stats back to their pre-capture values
        assert np.array_equal(v.numpy(), before_vals[n]), n
    modes = {c.module: c.training for c in trace.calls}
    assert modes["attn"] is False and modes["attn.qkv"] is True  # is_train is per module, not recursive


def test_jittor_shared_and_alias_records(pair, adapters, weights):
    trace = _capture(adapters[1], pair, _jittor_model(pair, adapters, weights), "jittor")
    shared = [c for c in trace.calls if c.module == "shared"]
    assert [c.call_index for c in shared] == [0, 1]
    last_child = {c.module: c for c in trace.calls}
    # a container returns its last child's Var: both recorded, the container marked as alias
    assert last_child["stem"].alias_of == last_child["stem.act"].key
    assert np.array_equal(trace.arrays[last_child["stem"].key], trace.arrays[last_child["stem.act"].key])
    assert np.array_equal(trace.arrays[last_child["stem"].gkey], trace.arrays[last_child["stem.act"].gkey])
    assert "ginput/0" in trace.arrays  # the input is a grad target, so the first layer is covered


@pytest.mark.parametrize("fault", ["detach", "numpy"])
def test_graph_break_is_unreachable_not_zero(pair, adapters, weights, fault):
    tt = _capture(adapters[0], pair, _torch_state(pair, adapters, weights), "torch")
    jt_ = _capture(adapters[1], pair, _jittor_model(pair, adapters, weights, fault=fault), "jittor")
    ts, js = _status(tt), _status(jt_)
    assert set(ts.values()) == {GradStatus.NONZERO}
    broken = {n for n in js if n.startswith(BODY)}
    assert len(broken) == 8
    assert {js[n] for n in broken} == {GradStatus.UNREACHABLE}
    assert {js[n] for n in js if n not in broken} == {GradStatus.NONZERO}
    # upstream activations lost their gradient too; downstream ones kept it
    has = {c.module: c.has_grad for c in jt_.calls}
    assert has["down.conv"] is False and has["shared.conv"] is True
    assert not any(k.startswith(("pgrad/down.", "pgrad/attn.")) for k in jt_.arrays)
    assert js["stem.conv.weight"] == GradStatus.NONZERO


def test_buffers_recorded_after_the_train_mode_forward(pair, adapters, weights):
    from aligner.metrics import rel_error
    tt = _capture(adapters[0], pair, _torch_state(pair, adapters, weights), "torch")
    jt_ = _capture(adapters[1], pair, _jittor_model(pair, adapters, weights), "jittor")
    names = [p.name for p in tt.params if p.kind == ParamKind.BUFFER and "num_batches" not in p.name]
    assert len(names) == 12 and {f"buf/{n}" for n in names} <= set(jt_.arrays)
    for n in names:  # the forward updated every running statistic (the model itself is restored, see above)
        for tr in (tt, jt_):
            assert not np.array_equal(tr.arrays[f"buf/{n}"], tr.arrays[f"param/{n}"]), n
        # the small port updates running_var with torch's unbiased variance: both frameworks agree
        assert rel_error(tt.arrays[f"buf/{n}"], jt_.arrays[f"buf/{n}"]) < 1e-5, n


def test_outputs_made_without_a_graph_are_recorded(pair, adapters, weights):
    from aligner.adapters.jittor_adapter import restore_class_attrs, saved_class_attrs
    from aligner.pairs._small_jittor import Attn
    saved = saved_class_attrs(Attn, ("__call__", "__hooked_call__", "__hooked__"))
    jm = _jittor_model(pair, adapters, weights)
    try:
        jm.attn.requires_grad_(False)  # the torch idiom "freeze this block": Jittor runs it under no_grad
        trace = _capture(adapters[1], pair, jm, "jittor")
    finally:  # requires_grad_ swaps Attn.__call__ for the hooked one, for every instance
        restore_class_attrs(Attn, saved)
    rg = {c.module: c.requires_grad for c in trace.calls}
    assert rg["attn"] is False and rg["attn.qkv"] is False and rg["attn.proj"] is False
    assert rg["down"] is True and rg["stem"] is True and rg["cls_pred"] is True
    tt = _capture(adapters[0], pair, _torch_state(pair, adapters, weights), "torch")
    assert all(c.requires_grad is True for c in tt.calls if c.dtype.startswith("float"))


def _torch_state(pair, adapters, weights, state="perturbed"):
    tm = pair.build_torch()
    adapters[0].load_arrays(tm, weights[state])
    return tm


def test_zero_init_head_gives_zero_in_both(pair, adapters, weights):
    tt = _capture(adapters[0], pair, _torch_state(pair, adapters, weights, "init"), "torch")
    jt_ = _capture(adapters[1], pair, _jittor_model(pair, adapters, weights, "init"), "jittor")
    ts, js = _status(tt), _status(jt_)
    head = {"cls_pred.weight", "cls_pred.bias", "reg_pred.weight", "reg_pred.bias"}
    for s in (ts, js):
        assert {s[n] for n in head} == {GradStatus.NONZERO}
        assert {s[n] for n in s if n not in head} == {GradStatus.ZERO}
    assert ts == js


def test_jittor_eval_freezes_everything_detected(pair, adapters, weights):
    jm = _jittor_model(pair, adapters, weights)
    jm.eval()  # the port's mistake: eval() before the gradient pass stop_grads every parameter
    trace = _capture(adapters[1], pair, jm, "jittor")
    frozen = [p for p in trace.params if p.kind == ParamKind.FROZEN]
    assert trace.meta["frozen_by_eval"] is True
    assert len(frozen) == 24 and {p.frozen_by for p in frozen} == {FrozenBy.EVAL}
    assert {p.grad_status for p in frozen} == {GradStatus.FROZEN}
    assert not [p for p in trace.params if p.kind == ParamKind.TRAINABLE]
    jm.train()  # Jittor's train() restores the grad state recorded at eval()
    trace2 = _capture(adapters[1], pair, jm, "jittor")
    assert trace2.meta["frozen_by_eval"] is False and len(_status(trace2)) == 24


def test_frozen_by_stop_grad_and_requires_grad(pair, adapters, weights):
    jm = _jittor_model(pair, adapters, weights)
    jm.stem.conv.weight.stop_grad()
    tm = _torch_state(pair, adapters, weights)
    tm.stem.conv.weight.requires_grad_(False)
    jp = {p.name: p for p in _capture(adapters[1], pair, jm, "jittor").params}
    tp = {p.name: p for p in _capture(adapters[0], pair, tm, "torch").params}
    assert (jp["stem.conv.weight"].kind, jp["stem.conv.weight"].frozen_by) == (ParamKind.FROZEN, FrozenBy.STOP_GRAD)
    assert (tp["stem.conv.weight"].kind, tp["stem.conv.weight"].frozen_by) == (ParamKind.FROZEN,
                                                                               FrozenBy.REQUIRES_GRAD)
    assert jp["stem.bn.running_mean"].kind == ParamKind.BUFFER == tp["stem.bn.running_mean"].kind
    assert jp["stem.bn.weight"].grad_status == GradStatus.NONZERO


def test_inventory_counts_match(pair, adapters, weights):
    tp, tmods = adapters[0].inventory(pair.build_torch())
    jp, jmods = adapters[1].inventory(_jittor_model(pair, adapters, weights))
    strip = lambda ps: {(p.name, p.shape, p.kind) for p in ps if not p.name.endswith("num_batches_tracked")}  # noqa: E731
    assert strip(tp) == strip(jp)
    root_t = {m.name: m for m in tmods}[""]
    root_j = {m.name: m for m in jmods}[""]
    n_trainable = sum(p.numel for p in tp if p.kind == ParamKind.TRAINABLE)
    assert root_t.rec_trainable == root_j.rec_trainable == n_trainable == 7727  # by hand: 232+1184+816+288+2336+416+2336+51+68
    # 6 BN layers: running stats 2*(8+5*16) = 176; torch adds one num_batches_tracked scalar per BN
    assert root_t.rec_buffers - 6 == root_j.rec_buffers == 176
    bn = {m.name: m for m in jmods}["down.bn"]
    assert bn.flags == {"bn_eps": 1e-5, "bn_momentum": 0.1}


def test_weight_transfer_reports_problems(pair, adapters, weights):
    from aligner.weights import transfer_arrays
    import jittor as jt
    jm = pair.build_jittor()
    del jm.reg_pred.bias            # missing on the Jittor side
    jm.cls_pred.weight = jt.zeros((2, 16, 1, 1))  # wrong shape
    jm.extra_scale = jt.ones((3,))  # a Jittor-only tensor keeps its own init
    src = dict(weights["perturbed"])
    src["stem.conv.weight"] = src["stem.conv.weight"].astype(np.float64)  # dtype narrowing
    probs = {(p.kind, p.name) for p in transfer_arrays(src, adapters[1], jm)}
    assert probs == {(WeightProblemKind.MISSING, "reg_pred.bias"), (WeightProblemKind.SHAPE, "cls_pred.weight"),
                     (WeightProblemKind.EXTRA, "extra_scale"), (WeightProblemKind.DTYPE, "stem.conv.weight")}
    good = pair.build_jittor()
    assert transfer_arrays(weights["perturbed"], adapters[1], good) == []
    got = adapters[1].state_arrays(good)
    assert all(np.array_equal(got[k], v) for k, v in weights["perturbed"].items() if "num_batches" not in k)


def test_inplace_ops_after_the_hook_do_not_change_the_record(adapters):
    """`y += 1` after a module call rewires the Jittor Var (and mutates the torch tensor); the recorded
    activation must be the module's own output."""
    import jittor as jt
    import torch
    from jittor import nn as jnn

    class J(jnn.Module):
        def __init__(self):
            self.lin = jnn.Linear(4, 3)

        def execute(self, x):
            y = self.lin(x)
            y += 1.0
            return y * 2

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            y += 1.0
            return y * 2

    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    tm, jm = T(), J()
    adapters[1].load_arrays(jm, adapters[0].state_arrays(tm))
    expected = x @ tm.lin.weight.detach().numpy().T + tm.lin.bias.detach().numpy()
    for ad, m in ((adapters[0], tm), (adapters[1], jm)):
        tr = ad.capture(m, [x], None)
        lin = next(c for c in tr.calls if c.module == "lin")
        assert np.allclose(tr.arrays[lin.key], expected, atol=1e-6), ad.framework
        root = next(c for c in tr.calls if c.module == "")
        assert np.allclose(tr.arrays[root.key], (expected + 1) * 2, atol=1e-5)
        assert not tr.meta["loss_run"] and not any(k.startswith("gact/") for k in tr.arrays)
