"""The float64 reference is captured only when a verdict can depend on it (aligner/noise_gate.py): the verdicts
must be those of the run that always captures it, row by row and finding by finding."""
from __future__ import annotations

import numpy as np
import pytest

from aligner.analysis import analyze
from aligner.analysis_records import Kind, StateTraces
from aligner.capture import capture_in_process
from aligner.pairs import get_pair
from aligner.tolerances import Tolerances

STATE = "perturbed"


def _traces(fault: str | None, **pair_options):
    pair = get_pair("small", **pair_options)
    t = capture_in_process(pair, "torch", states=[STATE])[STATE]
    j = capture_in_process(pair, "jittor", states=[STATE],
                           jittor_options={"fault": fault} if fault else None)[STATE]
    t64 = capture_in_process(get_pair("small", dtype="float64", **pair_options), "torch", states=[STATE],
                             init=False)[STATE]
    return pair, t, j, t64


def _verdicts(res):
    rows = [(r.kind, r.torch_name, r.sub, r.judgement.ok) for c in res.states for r in c.rows]
    found = sorted((f.type.value, f.severity.value, f.location) for f in res.findings)
    return rows, found


@pytest.mark.parametrize("fault", [None, "bn_eps", "detach"])
def test_lazy_reference_gives_the_verdicts_of_the_eager_one(fault):
    pair, t, j, t64 = _traces(fault)
    asked = []

    def later():
        asked.append(1)
        return t64

    eager = analyze([StateTraces(STATE, t, j, t64)], rules=pair.rules())
    lazy = analyze([StateTraces(STATE, t, j)], rules=pair.rules(), reference64={STATE: later})
    assert _verdicts(lazy) == _verdicts(eager)
    # the correct port is within half its bounds everywhere: no float64 reference needed; a faulty one needs it
    assert asked == ([] if fault is None else [1])
    assert lazy.run["noise_floor_not_needed"] == ([STATE] if fault is None else [])
    assert lazy.run["noise_floor_available"]
    if fault is None:
        judged = {r.judgement.metric for c in lazy.states for r in c.rows if r.missing is None}
        assert judged <= {"rel", "rel_l2", "max_abs"}
        assert all(r.judgement.value <= r.judgement.bound for c in lazy.states for r in c.rows if r.missing is None)


def test_a_port_off_by_more_than_half_a_bound_gets_the_reference():
    """A clean port whose error is scaled past rtol/2 (not past rtol) must not skip the float64 reference."""
    pair, t, j, t64 = _traces(None)
    call = next(c for c in t.calls if c.module)
    rtol = Tolerances.coerce(None, "float32").rtol(Kind.FORWARD, call.module)
    key, ref = call.key, t.arrays[call.key]
    j.arrays[key] = (ref + 0.75 * rtol * np.abs(ref).max() * np.sign(ref)).astype(ref.dtype)
    asked = []
    analyze([StateTraces(STATE, t, j)], rules=pair.rules(), reference64={STATE: lambda: asked.append(1) or t64})
    assert asked == [1]


def test_with_the_noise_floor_off_the_reference_is_never_asked():
    pair, t, j, t64 = _traces("bn_eps")
    asked = []
    res = analyze([StateTraces(STATE, t, j)], rules=pair.rules(), tolerances={"noise_floor": False},
                  reference64={STATE: lambda: asked.append(1) or t64})
    eager = analyze([StateTraces(STATE, t, j, t64)], rules=pair.rules(), tolerances={"noise_floor": False})
    assert asked == [] and _verdicts(res) == _verdicts(eager)
    assert res.run["noise_floor_not_needed"] == [] and not res.run["noise_floor_available"]
