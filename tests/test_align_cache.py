"""align()'s torch side is reused from the reference cache while nothing that determines it changes
(aligner/model_reference.py), and captured again as soon as anything does."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _models():
    import aligner.env  # noqa: F401 - configures Jittor before it is imported
    import jittor as jt
    from jittor import nn as jnn

    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                             torch.nn.Conv2d(8, 4, 1))
    jt.set_global_seed(0)
    jm = jnn.Sequential(jnn.Conv2d(3, 8, 3, padding=1), jnn.BatchNorm2d(8), jnn.ReLU(), jnn.Conv2d(8, 4, 1))
    return tm, jm


X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def _run(tm, jm, cache, x=X, **kw):
    from aligner import api
    from aligner.reference_cache import ReferenceCache

    store = ReferenceCache(cache)
    before = (store.root.exists() and len(list(store.root.iterdir()))) or 0
    res = api.align(tm, jm, x, cache=cache, **kw)
    after = len(list(store.root.iterdir())) if store.root.exists() else 0
    return res, after - before


def _rows(res):
    return [(r.kind, r.torch_name, r.sub, r.judgement.ok, r.metrics.max_abs) for c in res.states for r in c.rows]


def test_rerun_reuses_the_reference_and_gives_the_same_rows(tmp_path):
    tm, jm = _models()
    state = copy.deepcopy(tm.state_dict())
    first, stored = _run(tm, jm, tmp_path)
    assert stored >= 1 and first.verdict == "pass"
    tm.load_state_dict(state)  # the capture ran a train-mode forward: BN statistics moved
    second, stored = _run(tm, jm, tmp_path)
    assert stored == 0  # nothing new: the torch side came from the cache
    assert _rows(second) == _rows(first)


@pytest.mark.parametrize("change", ["weight", "bn_eps", "eval_mode", "inputs", "loss", "stats_only"])
def test_any_change_on_the_reference_side_misses(tmp_path, change):
    tm, jm = _models()
    state = copy.deepcopy(tm.state_dict())
    _run(tm, jm, tmp_path, noise_floor=False)
    tm.load_state_dict(state)
    x, kw = X, {"noise_floor": False}
    if change == "weight":
        with torch.no_grad():
            tm[0].weight[0, 0, 0, 0] += 1e-3
    elif change == "bn_eps":
        tm[1].eps = 1e-3
    elif change == "eval_mode":
        tm[1].eval()
    elif change == "inputs":
        x = X + np.float32(1e-6)
    elif change == "loss":
        kw["loss"] = lambda out, targets, ctx: (out * out).sum()
    elif change == "stats_only":
        kw["stats_only"] = True
    _, stored = _run(tm, jm, tmp_path, x=x, **kw)
    assert stored == 1


def test_a_loss_that_cannot_be_identified_is_not_cached(tmp_path):
    tm, jm = _models()

    class Weighted:  # an object: what it computes is not visible in a key
        w = 2.0

        def __call__(self, out, targets, ctx):
            return (out * self.w).sum()

    _, stored = _run(tm, jm, tmp_path, noise_floor=False, loss=Weighted())
    assert stored == 0
