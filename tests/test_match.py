"""Matching module calls: by name, by order + shape signature, by an explicit mapping; unmatched kept."""
from __future__ import annotations

import json

import pytest

from aligner.errors import UsageError
from aligner.match import MatchMethod, calls_of, load_mapping, match_calls, rename
from aligner.records import CallRecord


def rec(order, module, shape, call=0, sub="", typ="Conv2d"):
    return CallRecord(order, module, typ, call, sub, shape, "float32", True)


def test_by_name_including_shared_module_calls():
    t = calls_of([rec(0, "a", (1, 2)), rec(1, "shared", (1, 3)), rec(2, "shared", (1, 3), call=1),
                  rec(3, "b", (1, 4))])
    # jittor executes in another order and has one extra module
    j = calls_of([rec(0, "a", (1, 2)), rec(1, "extra", (9,)), rec(2, "shared", (1, 3)),
                  rec(3, "shared", (1, 3), call=1), rec(4, "b", (1, 4))])
    r = match_calls(t, j)
    assert [(m.torch.order, m.jittor.order, m.method) for m in r.matches] == [
        (0, 0, MatchMethod.NAME), (1, 2, MatchMethod.NAME), (2, 3, MatchMethod.NAME), (3, 4, MatchMethod.NAME)]
    assert r.unmatched_torch == []
    assert r.unmatched_labels("jittor") == ["extra"]


def test_by_order_and_shape_signature_for_renamed_modules():
    t = calls_of([rec(0, "stem", (1, 8)), rec(1, "blk.conv", (1, 16)), rec(2, "blk.act", (1, 16), typ="ReLU"),
                  rec(3, "head", (1, 4)), rec(4, "aux", (1, 5))])
    j = calls_of([rec(0, "stem", (1, 8)), rec(1, "block.cv", (1, 16)), rec(2, "block.relu", (1, 16), typ="ReLU"),
                  rec(3, "head", (1, 4)), rec(4, "other", (7,))])
    r = match_calls(t, j)
    pairs = {(m.torch.module, m.jittor.module): m.method for m in r.matches}
    assert pairs[("stem", "stem")] == MatchMethod.NAME
    assert pairs[("blk.conv", "block.cv")] == MatchMethod.ORDER
    assert pairs[("blk.act", "block.relu")] == MatchMethod.ORDER
    assert pairs[("head", "head")] == MatchMethod.NAME
    # different signatures are never paired: both kept as unmatched
    assert r.unmatched_labels("torch") == ["aux"] and r.unmatched_labels("jittor") == ["other"]
    conf = {m.torch.module: m.confidence for m in r.matches}
    assert conf["stem"] == 1.0 and conf["blk.act"] == 0.9


def test_order_pass_keeps_sequence_order():
    # two candidates with the same signature: LCS pairs them in order, not crosswise
    t = calls_of([rec(0, "x1", (2,)), rec(1, "x2", (2,))])
    j = calls_of([rec(0, "y1", (2,)), rec(1, "y2", (2,))])
    r = match_calls(t, j)
    assert [(m.torch.module, m.jittor.module) for m in r.matches] == [("x1", "y1"), ("x2", "y2")]


def test_mapping_overrides_and_renames_subtrees(tmp_path):
    t = calls_of([rec(0, "neck.reduce.conv", (1, 4)), rec(1, "neck.reduce", (1, 4)), rec(2, "a", (3,))])
    j = calls_of([rec(0, "neck.reduce_layer.conv", (1, 4)), rec(1, "neck.reduce_layer", (1, 4)),
                  rec(2, "a", (3,)), rec(3, "b", (3,))])
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"neck.reduce": "neck.reduce_layer", "a": "b"}))
    mapping = load_mapping(path)
    assert rename("neck.reduce.conv", mapping) == "neck.reduce_layer.conv"
    assert rename("neck.reducex", mapping) is None
    r = match_calls(t, j, mapping)
    got = {(m.torch.module, m.jittor.module): m.method for m in r.matches}
    assert got == {("neck.reduce.conv", "neck.reduce_layer.conv"): MatchMethod.MAP,
                   ("neck.reduce", "neck.reduce_layer"): MatchMethod.MAP,
                   ("a", "b"): MatchMethod.MAP}          # the mapping wins over the same-name "a"
    assert r.unmatched_labels("jittor") == ["a"]


def test_bad_mapping_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UsageError):
        load_mapping(bad)
    with pytest.raises(UsageError):
        load_mapping(tmp_path / "missing.json")


def test_tuple_outputs_grouped_per_call():
    t = calls_of([rec(0, "head", (1, 4), sub="0"), rec(0, "head", (1, 5), sub="1")])
    assert len(t) == 1 and t[0].signature == ((1, 4), (1, 5))
    j = calls_of([rec(0, "detect", (1, 4), sub="0"), rec(0, "detect", (1, 5), sub="1")])
    r = match_calls(t, j)
    assert len(r.matches) == 1 and r.matches[0].method == MatchMethod.ORDER
