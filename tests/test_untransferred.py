"""The weight-transfer finding names the port's modules that received no torch tensor at all (synthetic traces,
pure numpy): alone they are a warning (their cause is an extra/shape finding), next to tensors whose values
differ they extend the error's message, in both languages."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _synth import make_trace, port_of  # noqa: E402

from aligner.api import analyze
from aligner.analysis_records import StateTraces
from aligner.records import FindingType as T, Severity

LEFT = ["neck.conv", "head.pred"]


def _port(untransferred: list[str]):  # noqa: ANN202
    t = make_trace()
    j = port_of(t)
    return t, replace(j, meta={**j.meta, "weight_untransferred": untransferred})


def test_untransferred_modules_alone_are_a_warning_naming_them() -> None:
    t, j = _port(LEFT)
    r = analyze([StateTraces("perturbed", t, j, None)])
    f = r.by_type(T.WEIGHT_TRANSFER)
    assert len(f) == 1 and f[0].severity == Severity.WARNING and f[0].state == "perturbed"
    assert f[0].evidence["untransferred"] == LEFT and f[0].evidence["untransferred_count"] == 2
    assert f[0].evidence["count"] == 0
    assert "leaves 2 modules untransferred: neck.conv, head.pred" in f[0].message
    assert "2 个模块未迁移：neck.conv, head.pred" in f[0].message_zh
    assert f[0].location == "neck.conv"  # the first of them in the execution order
    assert r.verdict == "pass"  # the warning explains, the extra/shape finding is the error

    t, j = _port([])
    assert not analyze([StateTraces("perturbed", t, j, None)]).by_type(T.WEIGHT_TRANSFER)


def test_untransferred_modules_extend_a_value_transfer_error() -> None:
    t, j = _port(LEFT)
    arrays = dict(j.arrays)
    arrays["param/backbone.0.weight"] = arrays["param/backbone.0.weight"] * 1.5  # the load did not stick
    r = analyze([StateTraces("perturbed", t, replace(j, arrays=arrays), None)])
    f = r.by_type(T.WEIGHT_TRANSFER)
    assert len(f) == 1 and f[0].severity == Severity.ERROR and f[0].location == "backbone.0"
    assert f[0].evidence["params"] == ["backbone.0.weight"] and f[0].evidence["untransferred"] == LEFT
    assert f[0].message.startswith("1 tensors differ between the frameworks after the weight transfer")
    assert f[0].message.endswith("; it leaves 2 modules untransferred: neck.conv, head.pred")
    assert f[0].message_zh.endswith("；另有 2 个模块未迁移：neck.conv, head.pred")


def test_a_long_list_is_shortened_in_the_message_not_in_the_evidence() -> None:
    many = [f"extra.m{i}" for i in range(8)]
    t, j = _port(many)
    f = analyze([StateTraces("perturbed", t, j, None)]).by_type(T.WEIGHT_TRANSFER)[0]
    assert f.evidence["untransferred"] == many
    assert "8 modules untransferred: extra.m0, extra.m1, extra.m2, extra.m3, extra.m4, ... 3 more" in f.message
