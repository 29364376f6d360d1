"""Finding rules on synthetic traces (pure numpy): the right type, severity and location."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _synth import make_trace, port_of, set_param  # noqa: E402

from aligner.api import analyze, write_results
from aligner.analysis_records import Finding, StateTraces
from aligner.errors import NoMatchError
from aligner.pairs import rules_for
from aligner.pairs.gold_yolo_rules import RULES as GOLD_YOLO_RULES, expected_anchors
from aligner.records import FindingType as T, FrozenBy, GradStatus, ParamKind, Severity


def run(t, j, t64=None, state="perturbed", **kw):
    return analyze([StateTraces(state, t, j, t64)], **kw)


def types(result, severity=None):
    return [(f.type, f.location) for f in result.findings if severity is None or f.severity == severity]


def test_correct_port_passes_without_findings():
    t = make_trace()
    r = run(t, port_of(t))
    assert r.verdict == "pass" and r.findings == [] and r.first_divergence is None
    d = r.to_dict()
    assert d["schema"] == 1 and d["counts"] == {"error": 0, "warning": 0, "info": 0, "by_type": {}}
    assert {row["kind"] for row in d["layers"]} == {"forward", "backward", "param", "param_grad"}


def test_zero_vs_unreachable_is_an_error():
    t = make_trace(state="init", zero_head=True)
    j = port_of(t)
    # the reference's neck gradient is exactly zero but reachable; the port's graph is broken there
    j = set_param(j, "neck.conv.weight", grad_status=GradStatus.UNREACHABLE, grad_max_abs=None)
    j.arrays.pop("pgrad/neck.conv.weight")
    r = run(t, j, state="init")
    f = r.by_type(T.GRADIENT_PATTERN)
    assert len(f) == 1 and f[0].severity == Severity.ERROR and f[0].location == "neck.conv"
    assert f[0].evidence["torch_status"] == ["zero"] and f[0].evidence["jittor_status"] == ["unreachable"]
    assert r.verdict == "fail"
    assert not r.by_type(T.GRAD_SPARSITY_EXPLAINED)        # patterns differ: no "expected" info


def test_same_sparse_pattern_is_info_only():
    t = make_trace(state="init", zero_head=True)
    r = run(t, port_of(t), state="init")
    assert r.verdict == "pass"
    assert [f.severity for f in r.findings] == [Severity.INFO]
    f = r.findings[0]
    assert f.type == T.GRAD_SPARSITY_EXPLAINED
    assert f.message.startswith("only 2 of 6 parameter tensors receive a gradient in both frameworks")
    assert "head.pred.weight" in f.evidence["zero_initialised"]
    assert f.evidence["explained_by"] == "prediction convolutions"
    pat = r.to_dict()["params"]["grad_pattern"]["init"]
    assert pat["same"] and pat["torch"] == {"nonzero": 2, "zero": 4, "unreachable": 0, "frozen": 0}
    assert pat["per_module"]["backbone"] == {"torch": [0, 3, 0], "jittor": [0, 3, 0]}


def test_anchor_drift_explains_expected_count():
    assert sum(lv["expected"] for lv in expected_anchors(500, [8, 16, 32])) == 5249
    assert sum(lv["expected"] for lv in expected_anchors(320, [8, 16, 32])) == 2100
    assert sum(lv["expected"] for lv in expected_anchors(640, [8, 16, 32])) == 8400
    t = make_trace()
    t = replace(t, stages={"anchors": {"count": 5249, "strides": [8, 16, 32], "img_size": 500,
                                       "n_per_level": [3969, 1024, 256]}})
    j = replace(port_of(t), stages={"anchors": {"count": 2100, "strides": [8, 16, 32], "img_size": 500}})
    assert run(t, j).anchors is None and not run(t, j).by_type(T.ANCHOR_COUNT_DRIFT)  # the core knows no anchors
    r = run(t, j, rules=GOLD_YOLO_RULES)
    f = r.by_type(T.ANCHOR_COUNT_DRIFT)
    assert len(f) == 1 and f[0].severity == Severity.ERROR and f[0].location == "anchors"
    assert "expected 5249" in f[0].message and "63x63 + 32x32 + 16x16" in f[0].message
    assert "2100 is the count for 320x320" in f[0].message
    block = r.to_dict()["anchors"]
    assert block["expected"] == 5249 and block["torch"] == 5249 and block["jittor"] == 2100
    assert [lv["h"] for lv in block["levels"]] == [63, 32, 16]


def test_param_count_drift_at_the_right_module():
    t = make_trace()
    j = port_of(t)
    # the port's neck conv has 8 input channels instead of 4 (widths scaled twice)
    j = set_param(j, "neck.conv.weight", shape=(4, 8, 3, 3), numel=288)
    r = run(t, j)
    drift = r.by_type(T.PARAM_COUNT_DRIFT)
    assert len(drift) == 1 and drift[0].location == "neck.conv"
    assert drift[0].evidence["drift_trainable"] == 144 and drift[0].evidence["drift_buffers"] == 0
    shape = r.by_type(T.SHAPE_MISMATCH)
    assert shape and shape[0].location == "neck.conv"
    mods = {m["name"]: m for m in r.to_dict()["modules"]}
    assert not mods["neck"]["ok"] and mods["backbone"]["ok"]
    assert mods["neck"]["jittor"]["trainable"] == 288


def test_buffer_drift_reported_separately():
    t = make_trace()
    j = port_of(t)
    j = replace(j, params=[p for p in j.params if p.name != "backbone.1.running_var"])
    r = run(t, j)
    drift = r.by_type(T.PARAM_COUNT_DRIFT)
    assert drift[0].location == "backbone.1" and drift[0].evidence["drift_buffers"] == -4
    assert drift[0].evidence["drift_trainable"] == 0
    assert r.by_type(T.MISSING_PARAMETER)[0].location == "backbone.1"


def test_forward_divergence_first_module_and_introduced_ratio():
    t = make_trace()
    j = port_of(t)
    # neck.conv computes something else; everything after inherits the error
    for k in ("act/3/", "act/5/"):
        j.arrays[k] = j.arrays[k] * 1.01
    r = run(t, j)
    fd = r.first_divergence
    assert fd is not None and fd.direction == "forward" and fd.location == "neck.conv"
    rows = {(row.kind.value, row.torch_name): row for row in r.rows}
    assert rows[("forward", "neck.conv")].introduced_ratio > 1e3       # introduced here
    assert rows[("forward", "head.pred")].introduced_ratio == pytest.approx(1.0, rel=0.2) or \
        rows[("forward", "head.pred")].introduced_ratio < 10            # inherited
    f = r.by_type(T.FORWARD_DIVERGENCE)
    assert f[0].location == "neck.conv" and f[0].severity == Severity.ERROR
    assert r.findings[0].type == T.FORWARD_DIVERGENCE


def test_detach_in_a_module_is_the_backward_divergence():
    t = make_trace()
    j = port_of(t)
    # a detach at the output of "neck": its own output gradient is fine, nothing reaches inside it
    j.calls[4] = replace(j.calls[4], alias_of=None)          # the detached tensor is a new object
    for i in (5, 6):                                          # ... and it is what the head consumes
        j.calls[i] = replace(j.calls[i], input_keys=("act/4/",))
    j.arrays["act/4/"] = j.arrays["act/3/"].copy()
    j.arrays["gact/4/"] = t.arrays["gact/3/"].copy()
    t.arrays["gact/4/"] = t.arrays["gact/3/"].copy()
    for k in ("gact/0/", "gact/1/", "gact/3/"):
        j.arrays.pop(k)
    for name in ("backbone.0.weight", "backbone.1.weight", "backbone.1.bias", "neck.conv.weight"):
        j = set_param(j, name, grad_status=GradStatus.UNREACHABLE, grad_max_abs=None)
        j.arrays.pop("pgrad/" + name)
    r = run(t, j)
    fd = r.first_divergence
    assert fd.direction == "backward" and fd.location == "neck"
    assert fd.torch_name == "neck.conv"
    bd = r.by_type(T.BACKWARD_DIVERGENCE)[0]
    assert bd.location == "neck" and bd.evidence["graph_broken"]
    un = r.by_type(T.UNREACHABLE_GRADIENT)
    assert un and un[0].evidence["count"] == 4
    assert r.findings[0].type == T.BACKWARD_DIVERGENCE


def test_graph_break_in_the_loss():
    t = make_trace()
    j = port_of(t)
    for k in [k for k in j.arrays if k.startswith("gact/")]:
        j.arrays[k] = np.zeros_like(j.arrays[k])
    r = run(t, j)
    assert r.first_divergence.location == "loss"


def test_noise_floor_accepts_reference_level_gradient_error():
    # the reference's own float32 gradients are 2% off float64 (near-init BN), the port's as well
    t64 = make_trace(dtype="float64")
    t32 = port_of(t64, noise=0.0)
    t32 = replace(t32, meta={**t32.meta, "framework": "torch", "dtype": "float32"})
    rng = np.random.default_rng(5)
    t32.arrays.update({k: (a * (1 + 0.02 * rng.standard_normal(a.shape))).astype(np.float32)
                       for k, a in t64.arrays.items() if k.startswith("pgrad/")})
    t32.arrays.update({k: a.astype(np.float32) for k, a in t64.arrays.items() if not k.startswith("pgrad/")})
    j = port_of(t32, noise=0.0)
    j.arrays.update({k: (a * (1 + 0.02 * rng.standard_normal(a.shape))).astype(np.float32)
                     for k, a in t64.arrays.items() if k.startswith("pgrad/")})
    strict = run(t32, j, tolerances={"no_floor_factor": {}})
    assert strict.verdict == "fail"                   # a fixed 2e-2 bound raises false alarms ...
    with_floor = run(t32, j, t64)
    assert with_floor.verdict == "pass", [f.message for f in with_floor.errors]
    row = next(r for r in with_floor.rows if r.kind.value == "param_grad")
    assert row.judgement.metric == "rel_l2_fp64" and row.judgement.noise_floor > 1e-3
    # a real bug (one gradient 40% off) is caught with the floor (bound 10 x ~2% for tensors under 1000 elements) ...
    j.arrays["pgrad/neck.conv.weight"] = (t64.arrays["pgrad/neck.conv.weight"] * 1.4).astype(np.float32)
    bug = run(t32, j, t64)
    assert bug.verdict == "fail"
    assert [r.torch_name for r in bug.rows if not r.ok] == ["neck.conv.weight"]
    # ... and missed by the widened fixed bound a run without a float64 reference falls back to
    assert run(t32, j).verdict == "pass"


def test_mode_mismatch_bn_eps_and_eval():
    t = make_trace()
    j = port_of(t)
    mods = [replace(m, flags={**m.flags, "bn_eps": 1e-5}) if m.name == "backbone.1" else m for m in j.modules]
    r = run(t, replace(j, modules=mods))
    f = r.by_type(T.MODE_MISMATCH)
    assert len(f) == 1 and f[0].location == "backbone.1" and f[0].evidence["flag"] == "bn_eps"
    # eval() on the Jittor side: every module not training, every parameter frozen by eval
    mods = [replace(m, training=False) for m in j.modules]
    params = [replace(p, kind=ParamKind.FROZEN, grad_status=GradStatus.FROZEN, frozen_by=FrozenBy.EVAL,
                      grad_max_abs=None)
              if p.kind == ParamKind.TRAINABLE else p for p in j.params]
    je = replace(j, modules=mods, params=params,
                 arrays={k: v for k, v in j.arrays.items() if not k.startswith("pgrad/")})
    r = run(t, je)
    mm = r.by_type(T.MODE_MISMATCH)
    assert mm[0].location == "" and mm[0].evidence["flag"] == "training"
    fz = r.by_type(T.FROZEN_PARAMETER)
    assert fz and fz[0].evidence["frozen_by"] == "frozen_by_eval" and fz[0].location == ""
    assert "eval()" in fz[0].likely_cause and len(fz) == 1 and fz[0].evidence["count"] == 6
    assert not r.by_type(T.PARAM_COUNT_DRIFT)          # freezing is not a count drift
    assert r.findings[0].type == T.MODE_MISMATCH


def test_nan_in_port():
    t = make_trace()
    j = port_of(t)
    j.arrays["act/5/"] = j.arrays["act/5/"].copy()
    j.arrays["act/5/"][0, 0, 0, 0] = np.nan
    r = run(t, j)
    f = r.by_type(T.NAN_INF)
    assert f and f[0].location == "head.pred" and f[0].severity == Severity.ERROR


def test_loss_and_assigner():
    t = replace(make_trace(), stages={"loss": {"total": 5.0713584, "items": [1.14, 1.42, 2.51],
                                               "item_names": ["iou", "dfl", "cls"]},
                                      "assigner": {"fg_count": 78, "target_scores_sum": 3.2}})
    j = replace(port_of(t), stages={"loss": {"total": 5.0713590, "items": [1.14, 1.42, 2.60],
                                             "item_names": ["iou", "dfl", "cls"]},
                                    "assigner": {"fg_count": 77, "target_scores_sum": 3.2}})
    r = run(t, j, rules=GOLD_YOLO_RULES)
    locs = {f.location for f in r.by_type(T.LOSS_DIVERGENCE)}
    assert locs == {"loss.cls"}                         # total within 1e-4, cls 3.6% off
    a = r.by_type(T.ASSIGNER_MISMATCH)
    assert a and "fg_count 78 vs 77" in a[0].message
    d = r.to_dict()
    assert d["loss"]["perturbed"]["item_names"] == ["iou", "dfl", "cls"]
    assert d["assigner"]["perturbed"]["jittor"]["fg_count"] == 77


def test_unmatched_and_nothing_compared():
    t = make_trace()
    j = port_of(t)
    j = replace(j, calls=j.calls[:-1])                  # the port's root call is missing
    r = run(t, j)
    f = r.by_type(T.UNMATCHED_MODULE)
    assert f and f[0].severity == Severity.WARNING and r.to_dict()["unmatched"]["torch"] == [""]
    empty = replace(j, calls=[], params=[])
    with pytest.raises(NoMatchError):
        run(replace(t, params=[]), empty)


def test_results_json_roundtrip(tmp_path):
    from aligner.results_io import load_results
    t = make_trace()
    j = port_of(t)
    j.arrays["act/3/"] = j.arrays["act/3/"] * np.nan   # non-finite numbers must become null
    path = write_results(run(t, j), tmp_path)
    data = json.loads(path.read_text())
    assert load_results(tmp_path)["verdict"] == "fail"
    assert list(data)[:4] == ["schema", "run", "verdict", "first_divergence"]
    for key in ("counts", "findings", "layers", "unmatched", "params", "anchors", "loss", "assigner",
                "steps", "modules"):
        assert key in data
    f = data["findings"][0]
    assert f["id"] == "F001" and {"type", "severity", "state", "location", "message", "message_zh",
                                  "evidence", "likely_cause", "likely_cause_zh"} <= set(f)
    assert data["counts"]["error"] == sum(1 for x in data["findings"] if x["severity"] == "error")
    assert not list(tmp_path.glob(".results-*"))       # no temp file left behind


def test_float64_run_bounded_by_float32_sensitivity():
    # float64 run: the float32 reference measures how much each tensor amplifies float32 perturbations
    t64 = make_trace(dtype="float64")
    j64 = port_of(t64, noise=0.0)
    rng = np.random.default_rng(3)
    t32 = replace(port_of(t64, noise=0.0), meta={**t64.meta, "dtype": "float32"})
    t32.arrays.update({k: (a * (1 + 1e-3 * rng.standard_normal(a.shape))).astype(np.float32)
                       for k, a in t64.arrays.items() if k.startswith("act/")})
    k = "act/3/"
    j64.arrays[k] = t64.arrays[k] * (1 + 1e-3 * rng.standard_normal(t64.arrays[k].shape))
    j64.arrays["act/5/"] = t64.arrays["act/5/"] * (1 + 1e-3 * rng.standard_normal(t64.arrays["act/5/"].shape))
    assert analyze([StateTraces("s", t64, j64)]).verdict == "fail"            # fixed float64 bounds
    ok = analyze([StateTraces("s", t64, j64, None, t32)])
    assert ok.verdict == "pass" and ok.run["noise_floor_available"]
    j64.arrays[k] = t64.arrays[k] * 1.05                                        # 5%: a real difference
    bad = analyze([StateTraces("s", t64, j64, None, t32)])
    assert bad.first_divergence.location == "neck.conv"


def test_reference_with_other_weights_disables_the_noise_floor():
    t64 = make_trace(dtype="float64")
    t32 = replace(port_of(t64, noise=0.0), meta={**t64.meta, "framework": "torch", "dtype": "float32"})
    t32.arrays.update({k: a.astype(np.float32) for k, a in t64.arrays.items()})
    t64.arrays["param/head.pred.weight"] = t64.arrays["param/head.pred.weight"] + 0.01   # drawn separately
    r = run(t32, port_of(t32), t64)
    assert not r.run["noise_floor_available"]
    w = [f for f in r.findings if f.location == "noise reference"]
    assert w and w[0].severity == Severity.WARNING and "head.pred.weight" in w[0].evidence["params"]


def test_uncaptured_gradient_of_an_identity_is_not_a_graph_break():
    t = make_trace()
    j = port_of(t)
    # the port's "neck" call returns a new tensor (an identity-like op) whose grad hook never fired,
    # while the gradient of its producer (neck.conv) arrived and agrees
    j.calls[4] = replace(j.calls[4], alias_of=None, input_keys=("act/3/",), has_grad=False)
    j.arrays["act/4/"] = j.arrays["act/3/"].copy()
    t.arrays["gact/4/"] = t.arrays["gact/3/"].copy()
    r = run(t, j)
    assert r.verdict == "pass" and r.run["uncaptured_gradients"] == {"perturbed": ["neck"]}
    # but when the gradient is missing upstream as well, the graph is broken: a failure
    for k in ("gact/0/", "gact/1/", "gact/3/"):
        j.arrays.pop(k)
    r = run(t, j)
    assert r.verdict == "fail" and r.first_divergence.direction == "backward"


def test_inplace_modified_alias_gradient_is_skipped():
    t = make_trace()
    j = port_of(t)
    # torch: "neck" returns the same tensor object as neck.conv, modified in place (inplace ReLU):
    # the recorded value differs from the alias target, its gradient is the pre-ReLU one
    t.arrays["act/4/"] = np.maximum(t.arrays["act/3/"], 0)
    j.calls[4] = replace(j.calls[4], alias_of=None)
    j.arrays["act/4/"] = np.maximum(j.arrays["act/3/"], 0)
    j.arrays["gact/4/"] = j.arrays["gact/3/"] * (j.arrays["act/3/"] > 0)
    r = run(t, j)
    assert r.verdict == "pass"
    assert not [x for x in r.rows if x.kind.value == "backward" and x.torch_name == "neck"]
    assert [x for x in r.rows if x.kind.value == "forward" and x.torch_name == "neck"][0].ok


def test_counts_add_up():
    from aligner.summary import FindingCounts, verdict
    t = make_trace()
    j = port_of(t)
    j.arrays["act/3/"] = j.arrays["act/3/"] * 1.01
    j.arrays["act/5/"] = j.arrays["act/5/"] * 1.01
    r = run(t, j)
    per_state = [FindingCounts.of([f for f in r.findings if f.state == s]) for s in ("perturbed", None)]
    total = sum(per_state)
    assert total == r.counts and total.error == len(r.errors) and total.total == len(r.findings)
    assert verdict(r.findings) == "fail" and verdict([]) == "pass"


def test_pair_rules_come_from_the_registry():
    assert rules_for("gold_yolo-n") is GOLD_YOLO_RULES and rules_for("gold_yolo-l") is GOLD_YOLO_RULES
    assert rules_for("small") is None and rules_for("custom") is None and rules_for(None) is None


def test_diff_of_traces_takes_the_rules_of_the_recorded_pair(tmp_path):
    from aligner.api import diff
    from aligner.trace_io import write_trace_set
    anchors = {"count": 5249, "strides": [8, 16, 32], "img_size": 500}
    for pair, found in (("gold_yolo-n", 1), ("small", 0)):
        t = make_trace(state="init")
        t = replace(t, meta={**t.meta, "pair": pair}, stages={"anchors": anchors})
        j = replace(port_of(t), stages={"anchors": {**anchors, "count": 2100}})
        r = diff(write_trace_set({"init": t}, tmp_path / pair / "t"), write_trace_set({"init": j}, tmp_path / pair / "j"))
        assert len(r.by_type(T.ANCHOR_COUNT_DRIFT)) == found, pair


def test_causal_order_and_its_tie_break():
    from aligner.rules.order import CAUSAL_ORDER, sort_findings
    assert set(CAUSAL_ORDER) == set(T) and len(CAUSAL_ORDER) == len(T)

    def f(ftype, severity=Severity.ERROR, state=None, location="m", position=None):
        return Finding(type=ftype, severity=severity, state=state, location=location, message="", position=position)

    found = [f(T.GRAD_SPARSITY_EXPLAINED, Severity.INFO), f(T.BACKWARD_DIVERGENCE, state="b"),
             f(T.LOSS_DIVERGENCE, state="a", location="loss.cls", position=2),
             f(T.LOSS_DIVERGENCE, state="a", location="loss", position=0), f(T.FORWARD_DIVERGENCE, state="b"),
             f(T.UNMATCHED_MODULE, Severity.WARNING, location="z"), f(T.UNMATCHED_MODULE, Severity.WARNING, location="a"),
             f(T.EXTRA_PARAMETER), f(T.EXTRA_PARAMETER, position=7), f(T.WEIGHT_TRANSFER, Severity.WARNING, state="a")]
    got = [(x.type.value, x.state, x.location, x.position) for x in sort_findings(found, ["a", "b"])]
    assert got == [("extra_parameter", None, "m", 7), ("extra_parameter", None, "m", None),
                   ("forward_divergence", "b", "m", None), ("loss_divergence", "a", "loss", 0),
                   ("loss_divergence", "a", "loss.cls", 2), ("backward_divergence", "b", "m", None),
                   ("weight_transfer", "a", "m", None), ("unmatched_module", None, "a", None),
                   ("unmatched_module", None, "z", None), ("grad_sparsity_explained", None, "m", None)]


def test_message_templates_render_both_languages():
    from aligner.rules.messages import TEMPLATES, render
    out = render(T.LOSS_DIVERGENCE, item="cls", torch=2.51, jittor=2.6, rel=0.0358, tol=1e-4)
    assert out["message"] == "loss cls differs: torch 2.51, jittor 2.6 (rel 0.0358 > 0.0001)"
    assert out["message_zh"] == "损失 cls 不同：torch 2.51，jittor 2.6（相对误差 0.0358 > 0.0001）"
    assert set(out) == {"message", "message_zh", "likely_cause", "likely_cause_zh"}
    # every message exists in both languages (the port-only/both phrases are English-only by design)
    assert all(bool(t.message) == bool(t.message_zh) and bool(t.likely_cause) == bool(t.likely_cause_zh)
               for t in TEMPLATES.values())
    assert "{" not in render(T.UNMATCHED_MODULE, count=2, side="torch", ex="a")["likely_cause"].replace(
        "{torch_name: jittor_name}", "")


def _assign_arrays(fg_anchors, scores, boxes, n_anchor=12):
    """stage/assign/* of one image: positives at ``fg_anchors`` with these scores (1 class) and boxes."""
    fg = np.zeros((1, n_anchor), bool)
    sc = np.zeros((1, n_anchor, 2), np.float32)
    bx = np.zeros((1, n_anchor, 4), np.float32)
    for a, s, b in zip(fg_anchors, scores, boxes):
        fg[0, a], sc[0, a, 1], bx[0, a] = True, s, b
    return {"stage/assign/fg_mask": fg, "stage/assign/target_scores": sc, "stage/assign/target_bboxes": bx}


def _with_assignment(trace, fg_anchors, scores, boxes, iou):
    stages = {"loss": {"total": 4.0 + iou, "items": [iou, 1.0, 3.0], "item_names": ["iou", "dfl", "cls"]},
              "assigner": {"fg_count": len(fg_anchors), "target_scores_sum": float(sum(scores))}}
    return replace(trace, stages=stages, arrays={**trace.arrays, **_assign_arrays(fg_anchors, scores, boxes)})


def test_tied_assignment_explains_the_loss_difference():
    """The 640 px float32 init case: 3 tied positives land on other anchors (same boxes, same scores to
    float32 rounding), the iou item moves 2.4e-4: a warning that names the tie, not an error."""
    boxes = [[10, 10, 50, 50], [10, 10, 50, 50], [60, 20, 90, 70]]
    t = _with_assignment(make_trace(state="init"), [1, 2, 7], [0.5, 0.5, 0.25], boxes, iou=1.048986)
    j = _with_assignment(port_of(t), [1, 3, 7], [0.5, 0.50000012, 0.25], boxes, iou=1.049242)
    r = run(t, j, state="init", rules=GOLD_YOLO_RULES)
    assert not [f for f in r.findings if f.severity == Severity.ERROR], types(r, Severity.ERROR)
    tie = [f for f in r.by_type(T.ASSIGNER_MISMATCH) if f.severity == Severity.WARNING]
    assert tie and "swaps 1 tied" in tie[0].message
    loss = r.by_type(T.LOSS_DIVERGENCE)
    assert [f.location for f in loss] == ["loss.iou"] and loss[0].severity == Severity.WARNING
    assert r.to_dict()["assigner"]["init"]["tie_swap"]["swapped"] == 1
    # other scores (a changed alpha/beta) or other boxes (wrong target scaling) are not a tie
    for scores, bxs in (([0.5, 0.45, 0.25], boxes), ([0.5, 0.5, 0.25], [boxes[0], [10, 10, 50, 51], boxes[2]])):
        j = _with_assignment(port_of(t), [1, 3, 7], scores, bxs, iou=1.049242)
        r = run(t, j, state="init", rules=GOLD_YOLO_RULES)
        assert (T.LOSS_DIVERGENCE, "loss.iou") in types(r, Severity.ERROR)
        assert "tie_swap" not in r.to_dict()["assigner"]["init"]


def test_assigner_names_the_images_whose_positives_differ():
    """A batch-indexing bug moves positives from image 1 to image 0: the total is the same, the finding
    names both images and their counts."""
    t = make_trace(state="perturbed")
    fg_t, fg_j = np.zeros((3, 12), bool), np.zeros((3, 12), bool)
    fg_t[0, [1, 2]], fg_t[1, [3, 4, 5]], fg_t[2, [6]] = True, True, True
    fg_j[0, [1, 2, 3, 4]], fg_j[1, [5]], fg_j[2, [6]] = True, True, True
    stages = {"assigner": {"fg_count": 6, "target_scores_sum": 3.0}}
    t = replace(t, stages=stages, arrays={**t.arrays, "stage/assign/fg_mask": fg_t})
    j = replace(port_of(t), stages=stages, arrays={**port_of(t).arrays, "stage/assign/fg_mask": fg_j})
    r = run(t, j, state="perturbed", rules=GOLD_YOLO_RULES)
    f = [x for x in r.by_type(T.ASSIGNER_MISMATCH) if x.severity == Severity.ERROR]
    assert f and "image 0 2 vs 4, image 1 3 vs 1" in f[0].message, [x.message for x in f]
    block = r.to_dict()["assigner"]["perturbed"]
    assert block["torch"]["fg_per_image"] == [2, 3, 1] and block["jittor"]["fg_per_image"] == [4, 1, 1]


# ---------------------------------------------------------------------------------------------
# the port's own initialisation (checked before the weight transfer)


def _fresh(seed: int, head: str = "prior") -> dict[str, np.ndarray]:
    """Tensors of a freshly built synthetic model: random convs, BN ones/zeros, a deterministic non-constant
    tensor (neck.conv.weight, a linspace like the DFL projection) and a zero/prior head."""
    rng = np.random.default_rng(seed)
    out = {"backbone.0.weight": rng.uniform(-0.3, 0.3, (4, 3, 3, 3)).astype(np.float32),
           "backbone.1.weight": np.ones(4, np.float32), "backbone.1.bias": np.zeros(4, np.float32),
           "backbone.1.running_mean": np.zeros(4, np.float32), "backbone.1.running_var": np.ones(4, np.float32),
           "neck.conv.weight": np.linspace(0, 1, 144, dtype=np.float32).reshape(4, 4, 3, 3),
           "head.pred.weight": np.zeros((2, 4, 1, 1), np.float32),
           "head.pred.bias": np.full(2, -4.59512, np.float32)}
    if head == "default":  # a blanket re-init after the prior was set
        out["head.pred.weight"] = rng.uniform(-0.5, 0.5, (2, 4, 1, 1)).astype(np.float32)
        out["head.pred.bias"] = rng.uniform(-0.5, 0.5, 2).astype(np.float32)
    return out


def _with_init(trace, init):
    return replace(trace, meta={**trace.meta, "init": init})


def test_port_init_differing_from_a_deterministic_reference_init_is_an_error():
    from aligner.initcheck import init_summary
    t = _with_init(make_trace(), init_summary(_fresh(0), twin=_fresh(1)))
    # another random draw of the random tensors is no finding
    r = run(t, _with_init(port_of(t), init_summary(_fresh(7))))
    assert r.verdict == "pass" and not r.by_type(T.INIT_MISMATCH)
    # the head re-initialised after its prior was set: the transfer hides it, the init check does not
    bad = _fresh(7, head="default")
    r = run(t, _with_init(port_of(t), init_summary(bad)))
    f = r.by_type(T.INIT_MISMATCH)
    assert len(f) == 1 and f[0].severity == Severity.ERROR and f[0].state is None
    assert f[0].location == "head.pred" and f[0].evidence["params"] == ["head.pred.weight", "head.pred.bias"]
    assert r.findings[0] is f[0] and r.first_divergence.location == "head.pred"
    assert "all 0" in f[0].message
    # a deterministic non-constant tensor (identical under two seeds) is compared too
    bad["neck.conv.weight"] = bad["neck.conv.weight"] * 2
    f = run(t, _with_init(port_of(t), init_summary(bad))).by_type(T.INIT_MISMATCH)
    assert f[0].evidence["count"] == 3 and f[0].location == "neck.conv"  # first in execution order
    # without a twin build, or with one that ignored the seed, only all-equal tensors count as deterministic
    for init in (init_summary(_fresh(0)), init_summary(_fresh(0), twin=_fresh(0))):
        f = run(_with_init(t, init), _with_init(port_of(t), init_summary(bad))).by_type(T.INIT_MISMATCH)
        assert f[0].evidence["count"] == 2
    # traces without the summary (older captures, models handed in) are not checked
    assert not run(make_trace(), _with_init(port_of(t), init_summary(bad))).by_type(T.INIT_MISMATCH)


# ---------------------------------------------------------------------------------------------
# buffers after the captured train-mode forward


def _with_buffers(trace, rv, rm):
    arrays = {**trace.arrays, "buf/backbone.1.running_var": np.asarray(rv, np.float32),
              "buf/backbone.1.running_mean": np.asarray(rm, np.float32)}
    return replace(trace, arrays=arrays)


def test_running_stats_after_the_forward_are_compared():
    rv, rm = [0.98, 1.03, 1.11, 0.97], [0.012, -0.03, 0.05, 0.0]
    t = _with_buffers(make_trace(), rv, rm)
    j = port_of(t)  # float32-level noise on the buffers too
    r = run(t, j)
    rows = [x for x in r.rows if x.torch_key.startswith("buf/")]
    assert len(rows) == 2 and all(x.ok and x.kind.value == "param" for x in rows)
    assert r.verdict == "pass"
    # the biased batch variance in the port: 0.5% lower running_var, outputs untouched
    j = _with_buffers(port_of(t), np.asarray(rv) * 0.995, rm)
    r = run(t, j)
    f = r.by_type(T.FORWARD_DIVERGENCE)
    assert [x.location for x in f] == ["backbone.1.running_var"] and r.findings[0] is f[0]
    assert f[0].evidence["module"] == "backbone.1" and "biased" in f[0].likely_cause
    assert not r.by_type(T.WEIGHT_TRANSFER)  # not a transfer problem
    assert r.first_divergence.location == "backbone.1.running_var"
    # an earlier module output diverging: the running stats after it inherit the error, only that is reported
    j.arrays["act/0/"] = j.arrays["act/0/"] * 1.01
    f = run(t, j).by_type(T.FORWARD_DIVERGENCE)
    assert [x.location for x in f] == ["backbone.0"]


# ---------------------------------------------------------------------------------------------
# a block computed outside the autograd graph


def _block_trace(framework: str, no_grad_block: bool = False):
    """a -> blk(c1 -> c2) -> head; ``no_grad_block``: the port ran blk under no_grad (requires_grad_(False))."""
    from aligner.records import CallRecord, ModuleInfo, ParamInfo, Trace
    rng = np.random.default_rng(0 if framework == "torch" else 0)
    calls_spec = [("a", "Conv2d", ("input/0",), None), ("blk.c1", "Conv2d", ("act/0/",), None),
                  ("blk.c2", "Conv2d", ("act/1/",), None), ("blk", "Block", ("act/0/",), "act/2/"),
                  ("head", "Conv2d", ("act/3/",), None), ("", "Model", ("input/0",), "act/4/")]
    shape = (1, 4, 4, 4)
    arrays = {"input/0": rng.standard_normal(shape).astype(np.float32)}
    calls = []
    for order, (name, typ, ins, alias) in enumerate(calls_spec):
        outside = no_grad_block and name.startswith("blk")
        has_grad = not outside and not (no_grad_block and name == "a")
        calls.append(CallRecord(order, name, typ, 0, "", shape, "float32", True, ins, has_grad, alias,
                                requires_grad=not outside))
        if alias is None:
            arrays[f"act/{order}/"] = rng.standard_normal(shape).astype(np.float32)
            if has_grad:
                arrays[f"gact/{order}/"] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    params = []
    for module in ("a", "blk.c1", "blk.c2", "head"):
        name = f"{module}.weight"
        arrays[f"param/{name}"] = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
        cut = no_grad_block and module != "head"
        if not cut:
            arrays[f"pgrad/{name}"] = (rng.standard_normal((4, 4, 1, 1)) * 0.01).astype(np.float32)
        params.append(ParamInfo(name, (4, 4, 1, 1), "float32", ParamKind.TRAINABLE, 16, module,
                                grad_status=GradStatus.UNREACHABLE if cut else GradStatus.NONZERO,
                                grad_max_abs=None if cut else 0.01))
    modules = [ModuleInfo(n, t_, n.count(".") + (1 if n else 0), True, {}, 16 if t_ == "Conv2d" else 0, 0, 0, 0)
               for n, t_ in (("", "Model"), ("a", "Conv2d"), ("blk", "Block"), ("blk.c1", "Conv2d"),
                             ("blk.c2", "Conv2d"), ("head", "Conv2d"))]
    meta = {"framework": framework, "state": "perturbed", "dtype": "float32", "seed": 0, "pair": "synthetic",
            "config": {}}
    return Trace(meta, calls, params, modules, arrays, {}, {})


def test_block_without_autograd_graph_is_blamed_not_its_consumer():
    t = _block_trace("torch")
    j = _block_trace("jittor", no_grad_block=True)
    # same values where both exist: only the missing gradients differ
    j = replace(j, arrays={k: (t.arrays[k].copy() if k in t.arrays else v) for k, v in j.arrays.items()})
    r = run(t, j)
    bd = r.by_type(T.BACKWARD_DIVERGENCE)[0]
    # the first failing output gradient is blk.c2's (blk's own record is an alias of it); its consumer head
    # is fine, but the port's tensor there never required grad: blk made it outside the graph
    assert bd.evidence["torch_name"] == "blk.c2" and bd.location == "blk" and bd.evidence["graph_broken"]
    assert "does not require grad" in bd.message and bd.evidence["candidates"] == ["blk"]
    assert r.findings[0] is bd and r.first_divergence.location == "blk"
    un = r.by_type(T.UNREACHABLE_GRADIENT)
    assert un and un[0].evidence["count"] == 3
