"""The noise model on real numbers: tensors the reference cannot resolve in float32, and a port whose own
float32 rounding is worse than the reference's (Jittor's stock BatchNorm: variance as E[x^2] - E[x]^2).

A batch whose channels sit far from zero (mean 40, spread 1) makes the one-pass variance cancel: the
stock Jittor BatchNorm's float32 output is then orders of magnitude further from float64 than torch's,
although both compute the same function. The default run must not call that an error (the port's own
float64 run agrees with the reference), while a real difference (another eps) must still fail.
"""
from __future__ import annotations

import numpy as np
import pytest

from aligner.metrics import measure, relative_l2
from aligner.tolerances import NOISE, Tolerances, judge


def _torch_net(bias: bool):  # noqa: ANN202
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 8, 3, padding=1, bias=bias),
                               torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).train()


def _jittor_net(bias: bool, eps: float = 1e-5):  # noqa: ANN202
    import aligner.env  # noqa: F401 - configures Jittor before it is imported
    from jittor import nn
    from zoo.jittor_nets import BatchNorm2d  # Jittor's BN (one-pass variance), torch's running_var update

    return nn.Sequential(BatchNorm2d(3, eps=eps), nn.Conv2d(3, 8, 3, padding=1, bias=bias), BatchNorm2d(8),
                         nn.ReLU(), nn.Conv2d(8, 4, 1))


def _offset_batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (200.0 + rng.standard_normal((2, 3, 24, 24))).astype(np.float32)


def test_bias_gradient_before_train_mode_bn_is_noise_dominated() -> None:
    """The gradient of a conv bias feeding a train-mode BN is mathematically zero: its float32 value is
    rounding only, so it is not checkable (never an error, never an absurd bound); the weight gradient
    next to it is judged as usual."""
    import torch

    x = torch.from_numpy(_offset_batch())
    grads = {}
    for dt in (torch.float32, torch.float64):
        net = _torch_net(bias=True).to(dt)
        net(x.to(dt)).square().sum().backward()
        grads[dt] = {k: p.grad.numpy().astype(np.float64) for k, p in net.named_parameters()}
    b32, b64 = grads[torch.float32]["1.bias"], grads[torch.float64]["1.bias"]
    assert np.abs(b64).max() < 1e-9 * np.abs(grads[torch.float64]["1.weight"]).max()  # zero up to float64 rounding
    nf = relative_l2(b64, b32)
    port = np.zeros_like(b32)  # a port whose bias gradient is exactly zero is as right as the reference
    jd = judge(measure(b32, port, 2e-2, 0.0), 2e-2, noise_floor=nf, rel_fp64=relative_l2(b64, port),
               multiplier=10.0, norm="l2")
    assert jd.ok and jd.metric == NOISE and jd.bound == pytest.approx(0.1), jd
    w32, w64 = grads[torch.float32]["1.weight"], grads[torch.float64]["1.weight"]
    nf_w = relative_l2(w64, w32)
    assert nf_w < 1e-2  # resolvable: judged against its bound, not waved through
    wrong = w32 * 1.5
    jd_w = judge(measure(w32, wrong, 2e-2, 0.0), 2e-2, noise_floor=nf_w, rel_fp64=relative_l2(w64, wrong),
                 multiplier=5.0, norm="l2")
    assert not jd_w.ok and jd_w.metric == "rel_l2_fp64"


def _align(eps: float, **options):  # noqa: ANN003, ANN202
    import aligner

    return aligner.align(_torch_net(False), _jittor_net(False, eps), _offset_batch(), **options)


def test_port_rounding_is_not_an_error_but_a_real_difference_is() -> None:
    clean = _align(1e-5)
    # the float32 comparison alone fails: the stock BN's output is far outside the reference's own noise
    rescued = [r for r in clean.rows if r.judgement.metric.endswith("_port64")]
    assert rescued, "expected rows that only the port's float64 run clears"
    worst = max(rescued, key=lambda r: r.rel_fp64 / r.judgement.bound)
    assert worst.rel_fp64 > 10 * worst.judgement.bound  # float32: ten times over the bound
    assert worst.judgement.value <= worst.judgement.bound  # float64: within it
    assert clean.verdict == "pass", [(f.type, f.location, f.message) for f in clean.errors]
    info = [f for f in clean.findings if str(f.type) == "port_rounding"]
    assert len(info) == 1 and str(info[0].severity) == "info" and info[0].evidence["count"] == len(rescued)

    wrong = _align(1e-3)  # BatchNorm eps 1e-3 instead of 1e-5: a real difference, in float64 too
    assert wrong.verdict == "fail"
    assert any(str(f.type) in ("forward_divergence", "mode_mismatch") and f.location.startswith("0")
               for f in wrong.errors), [(f.type, f.location) for f in wrong.errors]


def test_noise_dominated_threshold_follows_the_multiplier() -> None:
    from aligner.tolerances import noise_dominated

    tol = Tolerances.defaults("float32")
    assert noise_dominated(0.2, tol.multiplier) and not noise_dominated(0.19, tol.multiplier)
    assert noise_dominated(float("inf"), tol.multiplier)
