"""Six deliberately broken GOLD-YOLO ports, at a small input: each must be reported with
the right finding type at the right module, and the first divergence must point there.

The faults are planted by the catalogue (aligner/faults), which patches the correct ``jittor_impl`` at
run time and restores it; the torch reference does not see them and is captured once per configuration
(aligner.faults.run.References).
One model state ("perturbed": non-zero prediction convs, so gradients reach the body) keeps it short.
"""
from __future__ import annotations

import pytest

from aligner.faults import get_fault, location_matches
from aligner.records import FindingType as T, Severity

SIZE = 128          # feature maps 16/8/4; the non-divisible-pool fault runs at 108 (14/7/4)
STATES = ["perturbed"]
SIX = ("detach_neck", "numpy_roundtrip_loss", "jittor_adaptive_pool", "bn_eps_default", "eval_before_grad",
       "neck_width_scaled")


@pytest.fixture(scope="module")
def results():
    from aligner.api import RunConfig, run as run_pair
    from aligner.faults.run import PAIR_OPTIONS, References
    from aligner.pairs import get_pair

    refs, config = References(), RunConfig(states=STATES, isolate=False)  # as the catalogue scores them

    def run(name: str | None):
        fault = get_fault(name) if name else None
        size = SIZE - 20 if (fault and fault.odd_size) else SIZE
        opts = {**PAIR_OPTIONS, **(dict(fault.options) if fault else {})}
        pair = get_pair("gold_yolo-n", img_size=size, batch=1, **opts)
        if fault is None:
            return run_pair(pair, config, reference=refs.get(pair, config)), None
        with fault.planted() as probe:
            r = run_pair(pair, config, reference=refs.get(pair, config))
        return r, probe.hits

    return {name: run(name) for name in (None, *SIX)}


def first_error(result):
    return next(f for f in result.findings if f.severity == Severity.ERROR)


def test_correct_port_has_no_error(results):
    r, _ = results[None]
    assert r.verdict == "pass", [(f.type, f.location, f.message) for f in r.errors]
    assert r.run["noise_floor_available"]


@pytest.mark.parametrize("name", SIX)
def test_fault_reported_at_the_right_module(results, name):
    fault = get_fault(name)
    r, hits = results[name]
    assert hits, f"{name}: the planted code never ran"
    assert r.verdict == "fail"
    f = first_error(r)
    assert fault.accepts(f.type.value, f.location), (f.type, f.location, f.message)


def test_detach_in_neck_is_the_backward_divergence_at_rep_p4(results):
    r, _ = results["detach_neck"]
    fd = r.first_divergence
    assert fd.direction == "backward" and location_matches("neck.Rep_p4", fd.location)
    assert r.by_type(T.UNREACHABLE_GRADIENT) or r.by_type(T.GRADIENT_PATTERN)


def test_numpy_round_trip_in_loss(results):
    r, _ = results["numpy_roundtrip_loss"]
    fd = r.first_divergence
    assert (fd.direction, fd.location) == ("backward", "loss")
    assert not r.by_type(T.FORWARD_DIVERGENCE) and not r.by_type(T.LOSS_DIVERGENCE)


def test_jittor_adaptive_pool_at_non_divisible_size(results):
    r, _ = results["jittor_adaptive_pool"]
    fd = r.first_divergence
    assert fd.direction == "forward" and location_matches("neck.low_FAM", fd.location)
    assert "AdaptiveAvgPool2d" in r.by_type(T.FORWARD_DIVERGENCE)[0].likely_cause


def test_wrong_bn_eps(results):
    r, _ = results["bn_eps_default"]
    mm = r.by_type(T.MODE_MISMATCH)
    assert mm and mm[0].evidence["flag"] == "bn_eps"
    assert r.first_divergence.direction == "forward"


def test_eval_before_gradient_pass(results):
    r, _ = results["eval_before_grad"]
    f = first_error(r)
    assert f.type == T.FROZEN_PARAMETER and f.location == "" and f.evidence["frozen_by"] == "frozen_by_eval"


def test_neck_widths_scaled(results):
    r, _ = results["neck_width_scaled"]
    f = first_error(r)
    assert f.type == T.SHAPE_MISMATCH and location_matches("neck.low_IFM", f.location)
    assert r.by_type(T.PARAM_COUNT_DRIFT)
