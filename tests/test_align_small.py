"""End to end on the small pair: real torch and Jittor captures, then the framework-free analysis.

A correct port passes; planted faults are reported with the right type at the right module as the
first divergence; a trace set captured in another process diffs exactly like the in-process run.
"""
from __future__ import annotations

import pytest

from aligner.analysis_records import StateTraces
from aligner.records import FindingType as T, Severity

STATES = ["init", "perturbed"]


@pytest.fixture(scope="module")
def correct_traces():
    from aligner.capture import capture_in_process, torch_weights
    from aligner.pairs import get_pair
    p = get_pair("small")
    t = capture_in_process(p, "torch", states=STATES)
    j = capture_in_process(p, "jittor", states=STATES, weights=torch_weights(p, STATES))
    t64 = capture_in_process(get_pair("small", dtype="float64"), "torch", states=STATES)
    return t, j, t64


def analyze_traces(t, j, t64):
    from aligner.api import analyze
    return analyze([StateTraces(s, t[s], j[s], t64[s]) for s in STATES])


def errors(result):
    return [(f.type, f.state, f.location) for f in result.findings if f.severity == Severity.ERROR]


def test_correct_port_passes(correct_traces):
    r = analyze_traces(*correct_traces)
    assert r.verdict == "pass", errors(r)
    assert errors(r) == []
    info = r.by_type(T.GRAD_SPARSITY_EXPLAINED)
    assert len(info) == 1 and info[0].state == "init"
    assert info[0].evidence["nonzero"] == 4 and info[0].evidence["total"] == 24
    assert r.to_dict()["params"]["grad_pattern"]["perturbed"]["same"]
    # every matched call compared in both directions, by name, with the noise floor in use
    rows = r.rows
    assert all(x.match == "name" for x in rows)
    t_calls = correct_traces[0]["perturbed"].calls          # 35 output leaves incl. two shared calls
    assert sum(1 for x in rows if x.kind.value == "forward" and x.state == "perturbed") == len(t_calls) == 35
    assert {x.call for x in rows if x.torch_name == "shared.conv"} == {0, 1}
    assert all(x.judgement.noise_floor is not None for x in rows if x.kind.value == "forward")


@pytest.mark.parametrize("fault", ["detach", "numpy"])
def test_graph_break_after_attn(fault):
    from aligner.api import Port, run
    from aligner.pairs import get_pair
    r = run(get_pair("small"), port=Port(options={"fault": fault}))
    assert r.verdict == "fail"
    fd = r.first_divergence
    # the break sits in SmallNet.execute between attn and shared: the top-level model's own forward
    assert (fd.direction, fd.state, fd.location, fd.torch_name) == ("backward", "perturbed", "", "attn")
    assert r.findings[0].type == T.BACKWARD_DIVERGENCE and r.findings[0].evidence["graph_broken"]
    un = r.by_type(T.UNREACHABLE_GRADIENT)
    assert un and un[0].state == "perturbed" and "attn.qkv.weight" in un[0].evidence["params"]
    # at init the reference gradient is zero (reachable) and the port's is UNREACHABLE: still an error
    gp = r.by_type(T.GRADIENT_PATTERN)
    assert gp and gp[0].state == "init" and gp[0].evidence["jittor_status"] == ["unreachable"]
    assert not r.by_type(T.FORWARD_DIVERGENCE)


def test_wrong_bn_eps():
    from aligner.api import Port, run
    from aligner.pairs import get_pair
    r = run(get_pair("small"), port=Port(options={"fault": "bn_eps"}))
    fd = r.first_divergence
    assert (fd.direction, fd.location) == ("forward", "down.bn")
    mm = r.by_type(T.MODE_MISMATCH)
    assert mm and mm[0].location == "down.bn" and mm[0].evidence["flag"] == "bn_eps"
    fwd = r.by_type(T.FORWARD_DIVERGENCE)
    assert {f.location for f in fwd} == {"down.bn"} and "mode flag" in fwd[0].likely_cause
    # the setting, then the module's own deviation on the reference's inputs (isolation), then the divergence
    assert [(f.type, f.location) for f in r.findings[:3]] == [
        (T.MODE_MISMATCH, "down.bn"), (T.MODULE_DEVIATION, "down.bn"), (T.FORWARD_DIVERGENCE, "down.bn")]


def test_eval_before_gradient_pass():
    from aligner.api import Port, RunConfig, run
    from aligner.pairs import get_pair
    p = get_pair("small")
    model = p.build_jittor()
    model.eval()          # the torch idiom to kill dropout: in Jittor it stop_grads every parameter
    r = run(p, RunConfig(noise_floor=False), port=Port(model=model))
    assert r.verdict == "fail"
    first = r.findings[0]
    assert first.type == T.FROZEN_PARAMETER and first.location == ""
    assert first.evidence["frozen_by"] == "frozen_by_eval" and first.evidence["count"] == 24
    assert r.first_divergence.location == "" and r.first_divergence.direction == "backward"


def test_trace_captured_in_other_processes_diffs_identically(correct_traces, tmp_path):
    from aligner.api import diff
    from _subprocess import capture_in_subprocess
    from aligner.capture import capture_pair
    a, b, c = tmp_path / "torch", tmp_path / "jittor", tmp_path / "torch64"
    capture_pair("small", "torch", a, states=STATES)
    capture_in_subprocess("small", "jittor", b, states=STATES, weights_from=a)
    capture_pair("small", "torch", c, states=STATES, dtype="float64")
    via_files = diff(a, b, reference64=c).to_dict()
    in_process = analyze_traces(*correct_traces).to_dict()
    for d in (via_files, in_process):
        d.pop("run")
    assert via_files == in_process
    # the port's float64 sample must be the port's: a torch trace set in its place is refused in one line
    from aligner.errors import IncomparableError
    with pytest.raises(IncomparableError, match="--port64 is a torch trace set"):
        diff(a, b, reference64=c, port64=c)


def test_stats_only_still_localises_a_graph_break():
    from aligner.api import Port, RunConfig, run
    from aligner.pairs import get_pair
    r = run(get_pair("small"), RunConfig(stats_only=True), port=Port(options={"fault": "detach"}))
    assert all(x.metrics.stats_only for x in r.rows)
    fd = r.first_divergence
    assert (fd.direction, fd.location, fd.torch_name) == ("backward", "", "attn")
    assert r.by_type(T.UNREACHABLE_GRADIENT)


def test_multi_step_records_drift():
    from aligner.api import run_pair
    r = run_pair("small", states=["perturbed"], steps=2)
    assert r.verdict == "pass", errors(r)
    assert [(s["state"], s["step"]) for s in r.steps] == [("perturbed", 1), ("perturbed", 2)]
    for s in r.steps:
        assert s["loss_torch"] == pytest.approx(s["loss_jittor"], rel=1e-5)
        assert 0 < s["weight_drift"] < 1e-3 and 0 < s["grad_drift"] < 1e-2 and s["failed"] == 0
    assert {x.state for x in r.step_rows} == {"perturbed/step1", "perturbed/step2"}
    assert r.to_dict()["steps"][0]["state"] == "perturbed"


def test_generic_align_any_two_models():
    """aligner.align on two plain models (no registered pair): weights copied, probe loss, noise floor."""
    import numpy as np

    import aligner
    from aligner.pairs import get_pair
    p = get_pair("small")
    tm, jm = p.build_torch(), p.build_jittor(fault="bn_eps")
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    r = aligner.align(tm, jm, [x])
    assert r.run["pair"] == "custom" and r.run["noise_floor_available"]
    assert r.first_divergence.location == "down.bn"
    assert r.by_type(T.MODE_MISMATCH)[0].location == "down.bn"
    ok = aligner.align(p.build_torch(), p.build_jittor(), [x])
    assert ok.verdict == "pass", errors(ok)
    assert ok.rows and all(x.match == "name" for x in ok.rows)
