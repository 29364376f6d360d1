"""Metrics and tolerances: hand-computed numbers, pure numpy (no framework import)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from aligner.metrics import EPS, compare_arrays, compare_stats, rel_error
from aligner.records import TensorStats
from aligner.analysis_records import Kind
from aligner.tolerances import Tolerances, judge, lookup


def test_basic_errors_hand_computed():
    ref = np.array([1.0, -2.0, 4.0, 0.0], dtype=np.float32)
    port = np.array([1.0, -2.5, 4.0, 0.25], dtype=np.float32)
    m = compare_arrays(ref, port, rtol=0.1, atol=0.0)
    assert m.max_abs == 0.5                       # |-2.5 - -2|
    assert m.rel == 0.5 / 4.0                     # max|a-b| / max|ref|
    assert m.mean_abs == pytest.approx(0.75 / 4)  # (0 + .5 + 0 + .25) / 4
    # cosine: a.b = 1 + 5 + 16 + 0 = 22; |a| = sqrt(21); |b| = sqrt(1 + 6.25 + 16 + .0625)
    assert m.cosine == pytest.approx(22 / math.sqrt(21) / math.sqrt(23.3125))
    # elementwise |d| <= 0 + 0.1*|ref|: [0<=.1 ok, .5<=.2 no, 0<=.4 ok, .25<=0 no]
    assert m.frac_close == 0.5
    # smallest atol with rtol .1: max(d - .1|ref|) = max(-.1, .3, -.4, .25) = .3
    assert m.required_atol == pytest.approx(0.3)
    assert m.zero_frac_ref == 0.25 and m.zero_frac_port == 0.0
    assert m.nan_ref == m.nan_port == m.inf_ref == m.inf_port == 0
    assert m.shape_ok and not m.exact


def test_cast_up_before_subtracting():
    # in float32, 1e8 + 1 == 1e8: the difference must be computed in float64 from the stored values
    ref = np.array([16777216.0], dtype=np.float32)    # 2**24
    port = np.array([16777218.0], dtype=np.float32)   # next float32 above 2**24
    assert compare_arrays(ref, port).max_abs == 2.0
    big = np.array([1e300], dtype=np.float64)
    assert compare_arrays(big, -big).max_abs == 2e300  # no overflow in float64


def test_zero_reference_uses_eps():
    ref = np.zeros(3)
    assert compare_arrays(ref, np.zeros(3)).rel == 0.0
    m = compare_arrays(ref, np.array([0.0, 1e-3, 0.0]))
    assert m.rel == pytest.approx(1e-3 / EPS)
    assert m.cosine == 0.0


def test_nan_fails_and_is_counted():
    ref = np.array([1.0, np.nan, 3.0])
    m = compare_arrays(ref, ref.copy())
    assert m.nan_ref == 1 and m.nan_port == 1
    assert math.isinf(m.max_abs)                  # NaN never compares equal
    assert not judge(m, rtol=1.0).ok
    inf = np.array([1.0, np.inf])
    m2 = compare_arrays(inf, inf.copy())
    assert m2.max_abs == 0.0 and m2.inf_ref == 1 and judge(m2, rtol=1e-6).ok
    m3 = compare_arrays(np.array([1.0, 2.0]), np.array([1.0, np.inf]))
    assert m3.inf_port == 1 and not judge(m3, rtol=1e9).ok


def test_shape_mismatch_fails_instead_of_broadcasting():
    m = compare_arrays(np.ones((1, 4)), np.ones((4,)))
    assert not m.shape_ok and math.isinf(m.max_abs)
    j = judge(m, rtol=1.0, atol=1.0)
    assert not j.ok and j.metric == "shape"
    assert rel_error(np.ones((2, 1)), np.ones((1, 2))) == math.inf


def test_stats_only_is_a_lower_bound():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1000)
    b = a + rng.standard_normal(1000) * 1e-3
    full = compare_arrays(a, b)
    st = compare_stats(TensorStats.of(a), TensorStats.of(b))
    assert st.stats_only and st.cosine is None and st.frac_close is None
    assert 0 < st.max_abs <= full.max_abs
    same = compare_stats(TensorStats.of(a), TensorStats.of(a.copy()))
    assert same.exact and same.max_abs == 0.0
    # hand example: max 3 vs 3.5, min -1 vs -1, mean .5 vs .6 -> lower bound .5; scale 3
    s1 = TensorStats((4,), "float64", -1.0, 3.0, 0.5, 1.0, 4.0, 0, 0, 0.0, "a")
    s2 = TensorStats((4,), "float64", -1.0, 3.5, 0.6, 1.0, 4.0, 0, 0, 0.0, "b")
    m = compare_stats(s1, s2)
    assert m.max_abs == pytest.approx(0.5) and m.rel == pytest.approx(0.5 / 3)
    s3 = TensorStats((4,), "float64", -1.0, 3.0, 0.5, 1.0, 4.0, 1, 0, 0.0, "c")
    assert not judge(compare_stats(s1, s3), rtol=1.0).ok


def test_default_tolerances_per_dtype():
    t32 = Tolerances.defaults("float32")
    assert t32.rtol(Kind.FORWARD, "x") == 1e-4
    assert t32.rtol(Kind.BACKWARD, "x") == 2e-2 and t32.norm(Kind.BACKWARD) == "l2"
    t64 = Tolerances.defaults("float64")
    assert t64.rtol(Kind.FORWARD, "x") < t32.rtol(Kind.FORWARD, "x")
    assert t64.rtol(Kind.PARAM_GRAD, "x") < t32.rtol(Kind.PARAM_GRAD, "x")
    # without a reference at the other precision (no noise floor) the float32 bounds are widened
    assert t32.widen(Kind.FORWARD) == 10.0 and t32.widen(Kind.PARAM) == 1.0
    assert t64.widen(Kind.BACKWARD) * t64.rtol(Kind.BACKWARD, "x") == pytest.approx(2e-3)
    with pytest.raises(ValueError):
        Tolerances.defaults("float16")


def test_per_layer_overrides_polygraphy_style():
    bound = {"": 1e-4, "neck": 1e-3, "neck.high_IFM": 1e-2, "head.x": 5e-2}
    assert lookup(bound, "backbone.stem") == 1e-4
    assert lookup(bound, "neck.Rep_p4.block.0") == 1e-3
    assert lookup(bound, "neck.high_IFM.transformer_blocks.0") == 1e-2   # longest prefix wins
    assert lookup(bound, "neck_extra") == 1e-4                          # dotted prefix only
    assert lookup(bound, "head.x") == 5e-2
    with pytest.raises(KeyError):
        lookup({"a": 1.0}, "b")
    t = Tolerances.defaults("float32", forward=bound)
    assert t.rtol("forward", "neck.LAF_p4") == 1e-3


def test_noise_floor_judgement_dynamo_style():
    # reference float32 is 3% off float64 (near-init gradients); port is 5% off float64
    ref64 = np.array([1.0, -1.0, 0.5])
    ref32 = ref64 * np.array([1.03, 1.0, 1.0])
    port = ref64 * np.array([1.0, 1.05, 1.0])
    m = compare_arrays(ref32, port)
    nf = rel_error(ref64, ref32)          # 0.03
    e64 = rel_error(ref64, port)          # 0.05
    assert nf == pytest.approx(0.03) and e64 == pytest.approx(0.05)
    j = judge(m, rtol=1e-3, noise_floor=nf, rel_fp64=e64, multiplier=3.0)
    assert j.ok and j.metric == "rel_fp64" and j.bound == pytest.approx(0.09)
    assert not judge(m, rtol=1e-3).ok                    # a fixed 1e-3 would be a false alarm
    bad = ref64 * np.array([1.0, 1.2, 1.0])              # 20%: a bug, beyond 3x the floor
    jb = judge(compare_arrays(ref32, bad), rtol=1e-3, noise_floor=nf,
               rel_fp64=rel_error(ref64, bad), multiplier=3.0)
    assert not jb.ok and jb.value == pytest.approx(0.2)
    # a tiny floor never tightens below the fixed bound: max(3*1e-9, 1e-4)
    jt = judge(compare_arrays(ref64, ref64 + 5e-5), rtol=1e-4, noise_floor=1e-9, rel_fp64=5e-5)
    assert jt.ok and jt.bound == 1e-4


def test_absolute_floor_for_mathematically_zero_tensors():
    ref = np.array([1e-9, -2e-9])          # pure round-off of a mathematically zero gradient
    port = np.array([3e-8, 1e-8])
    m = compare_arrays(ref, port)
    assert m.rel > 1                        # relative error is meaningless here
    t = Tolerances.defaults("float32")
    atol = t.atol(Kind.PARAM_GRAD, scale=0.5)   # 1e-6 * largest |grad| of the state
    assert atol == pytest.approx(5e-7)
    j = judge(m, rtol=t.rtol(Kind.PARAM_GRAD, "b"), atol=atol)
    assert j.ok and j.metric == "max_abs"
    assert not judge(compare_arrays(ref, np.array([1e-3, 0.0])), rtol=1e-3, atol=atol).ok


def test_core_imports_no_framework():
    import subprocess
    import sys
    code = ("import sys, aligner\n"
            "from aligner import analysis, analysis_records, api, compare, divergence, inventory, match, metrics\n"
            "from aligner import result, rules, sides, summary, tolerances\n"
            "from aligner.rules import divergence, gradients, init, loss, modes, order, structure\n"
            "from aligner.pairs import gold_yolo_rules\n"
            "aligner.run_pair; aligner.align; aligner.diff; aligner.Tolerances; aligner.load_trace\n"
            "print(sorted(m for m in ('torch', 'jittor') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
