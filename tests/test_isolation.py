"""Module isolation: each port module replayed on the reference's own inputs finds its own deviation, even behind
an earlier one, and nothing on a correct port.

The small pair's port with a planted BatchNorm eps must be blamed at that BatchNorm alone (not at the block
around it, which deviates only through it); a graph break between modules (a detach in the top-level forward)
is no module's own deviation. The judging and the innermost rule are also checked on hand-made numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

from aligner.analysis_records import Kind
from aligner.isolation import CallPair, IsolatedCall, IsolatedModule, IsolatedTensor, IsolationRow, judge_isolated
from aligner.analysis_records import Judgement
from aligner.records import FindingType, Severity
from aligner.rules.isolation import isolation_findings
from aligner.tolerances import Tolerances


def _call(name: str, order: int) -> CallPair:
    return CallPair(order, name, 0, "port." + name, 0, "Conv2d")


def _mod(name: str, order: int, ok: bool) -> IsolatedModule:
    jd = Judgement(ok=ok, metric="rel_fp64", value=0.5 if not ok else 1e-7, bound=1e-4)
    return IsolatedModule(_call(name, order), [IsolationRow(Kind.FORWARD, "out", jd)])


def test_only_the_innermost_deviating_module_is_blamed() -> None:
    mods = [_mod("neck", 10, False), _mod("neck.block", 11, False), _mod("neck.block.bn", 12, False),
            _mod("neck.other", 13, True), _mod("head.conv", 20, False)]
    found = isolation_findings({"init": mods, "perturbed": mods[:3]})
    assert [(f.severity, f.type, f.location) for f in found] == [
        (Severity.ERROR, FindingType.MODULE_DEVIATION, "neck.block.bn"),
        (Severity.ERROR, FindingType.MODULE_DEVIATION, "head.conv")]
    assert found[0].evidence["enclosing"] == ["neck", "neck.block"]
    assert found[0].evidence["states"] == ["init", "perturbed"]
    assert found[1].evidence["states"] == ["init"]


def test_calls_that_cannot_be_replayed_are_counted_not_blamed() -> None:
    skipped = IsolatedModule(_call("head", 5), [], skipped="the port's module raised TypeError: 2 arguments")
    found = isolation_findings({"init": [skipped, _mod("a", 1, True)]})
    assert [(f.severity, f.location) for f in found] == [(Severity.INFO, "head")]
    assert found[0].evidence["replayed"] == 1 and found[0].evidence["skipped"] == 1
    assert "TypeError" in found[0].message


def test_judging_uses_the_noise_floor_and_the_port_float64_run() -> None:
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal(1000)
    x32 = x64.astype(np.float32)
    tol = Tolerances.coerce(None, "float32")
    scales = {k.value: 0.0 for k in Kind}

    def judged(port: np.ndarray, port64: np.ndarray | None = None) -> IsolatedModule:
        ic = IsolatedCall(_call("m", 1), [IsolatedTensor(Kind.FORWARD, "out", x32, x64, port)],
                          port64=(lambda: {(Kind.FORWARD, "out"): port64}) if port64 is not None else None)
        return judge_isolated(ic, tol, scales)
    # one float32 rounding of the same numbers: within the reference's own float32 error
    assert judged(x32.copy()).ok
    # a 1% scale (a wrong constant) fails, also when the port's float64 run is asked
    bad = judged((x64 * 1.01).astype(np.float32), port64=x64 * 1.01)
    assert not bad.ok and bad.rows[0].judgement.metric.endswith("_fp64")
    # a float32 error far above the reference's and its bound, whose float64 run agrees: the port's rounding, it passes
    noisy = (x64 + 1e-3 * rng.standard_normal(1000)).astype(np.float32)
    res = judged(noisy, port64=x64 + 1e-17)
    assert res.ok and res.rows[0].judgement.metric == "rel_port64"
    assert not judged(noisy).ok


@pytest.mark.parametrize("fault, expected", [(None, []), ("bn_eps", ["down.bn"]), ("detach", [])])
def test_small_pair_isolation(fault: str | None, expected: list[str]) -> None:
    from aligner import api
    from aligner.runconfig import Port

    res = api.run_pair("small", isolate=True, states=["perturbed"],
                       port=Port(options={"fault": fault}) if fault else None)
    found = [f.location for f in res.findings
             if f.type == FindingType.MODULE_DEVIATION and f.severity == Severity.ERROR]
    assert found == expected
    block = res.isolation["perturbed"]
    assert block["replayed"] == 33 and block["skipped"] == 0
    if fault == "bn_eps":  # the block around the BatchNorm deviates through it only: listed as enclosing
        f = next(f for f in res.findings if f.type == FindingType.MODULE_DEVIATION)
        assert f.evidence["enclosing"] == ["down"]
        assert f.evidence["failed"][0]["kind"] == "forward"


@pytest.mark.parametrize("fault, replayed", [(None, 0), ("bn_eps", 33)])
def test_auto_isolation_replays_only_states_that_differ(fault: str | None, replayed: int) -> None:
    """The default: a state whose end-to-end comparison matches is not replayed (a correct port pays nothing);
    one that differs is replayed in full and its module named."""
    from aligner import api
    from aligner.runconfig import Port

    res = api.run_pair("small", states=["perturbed"], port=Port(options={"fault": fault}) if fault else None)
    block = res.isolation["perturbed"]
    assert block["replayed"] == replayed and block.get("not_needed", False) == (fault is None)
    found = [f.location for f in res.findings if f.type == FindingType.MODULE_DEVIATION]
    assert found == (["down.bn"] if fault else [])


def test_isolate_modes_are_checked() -> None:
    from aligner.runconfig import RunConfig

    assert [RunConfig(isolate=v).isolate for v in (True, False, "auto")] == ["always", "never", "auto"]
    with pytest.raises(ValueError, match="isolate must be one of"):
        RunConfig(isolate="sometimes")
