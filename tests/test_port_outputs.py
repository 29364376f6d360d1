"""A port whose model returns another output structure than the reference: the leaves are paired by shape and
order (and, where shapes repeat, by sub-path tail), an extra leaf stays a structural mismatch, and a wrong value
fails exactly its own row. Also the GOLD-YOLO loss wrapper, which takes a port's bare head tuple.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from aligner.analysis_records import Kind
from aligner.errors import AdapterError
from aligner.records import CallRecord, FindingType, Severity, act_key

# a: (2, 4, 8, 8) from conv a, b: (2, 2, 8, 8) from conv b on a, c: (2, 8, 8) the input's channel mean
X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _torch_net():  # noqa: ANN202
    import torch

    class Net(torch.nn.Module):
        """The reference: returns [(a, b), c]."""

        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            a = self.a(x)
            return [(a, self.b(a)), x.mean(dim=1)]

    torch.manual_seed(0)
    return Net()


def _jittor_net(flat: bool, c_scale: float = 1.0):  # noqa: ANN202
    import aligner.env  # noqa: F401 - configures Jittor before it is imported
    from jittor import nn

    class Port(nn.Module):
        """The port: (a, b) only, or (a, b, c) flat."""

        def __init__(self) -> None:
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 2, 1)

        def execute(self, x):  # noqa: ANN001, ANN202
            a = self.a(x)
            return (a, self.b(a), x.mean(dim=1) * c_scale) if flat else (a, self.b(a))

    return Port()


def _root_rows(result, kind: Kind = Kind.FORWARD) -> dict[str, object]:  # noqa: ANN001
    rows = [r for r in result.rows if r.torch_name == "" and r.kind == kind]
    out = {r.sub: r for r in rows}
    assert len(out) == len(rows), "two root rows with one sub"
    return out


def _align(flat: bool, c_scale: float = 1.0):  # noqa: ANN202
    import aligner

    return aligner.align(_torch_net(), _jittor_net(flat, c_scale), [X])


def test_bare_tuple_port_pairs_by_shape_and_reports_the_extra_leaf() -> None:
    r = _align(flat=False)
    fwd = _root_rows(r)
    assert set(fwd) == {"0.0", "0.1"}
    a, b = fwd["0.0"], fwd["0.1"]
    assert a.ok and b.ok and a.missing is None and b.missing is None
    assert (a.torch_key, a.jittor_key) == (act_key(a.order, "0.0"), act_key(a.jittor_order, "0"))
    assert (b.torch_key, b.jittor_key) == (act_key(b.order, "0.1"), act_key(b.jittor_order, "1"))
    assert a.metrics.shape_ref == a.metrics.shape_port == (2, 4, 8, 8)
    # c only the reference model returns: not compared at the model's output, one warning instead of an error
    warned = [f for f in r.findings if f.type == FindingType.UNMATCHED_MODULE and f.evidence.get("outputs")]
    assert [(f.severity, f.evidence["side"], [o.split()[0] for o in f.evidence["outputs"]]) for f in warned] == \
        [(Severity.WARNING, "torch", ["1"])]
    assert not r.errors, [(f.type, f.location) for f in r.errors]
    # the probe loss weights the leaves in order, so the port's a and b get the reference's gradients
    bwd = _root_rows(r, Kind.BACKWARD)
    assert bwd["0.0"].ok and bwd["0.1"].ok and bwd["0.0"].jittor_key.endswith("/0")
    # the leaves' own modules still pair by name, their rows pass
    assert all(x.ok for x in r.rows if x.torch_name in ("a", "b"))


def test_flat_port_pairs_every_leaf_and_a_wrong_leaf_fails_only_its_row() -> None:
    r = _align(flat=True)
    fwd = _root_rows(r)
    assert set(fwd) == {"0.0", "0.1", "1"}
    assert all(x.ok and x.missing is None for x in fwd.values())
    assert [fwd[s].jittor_key for s in ("0.0", "0.1", "1")] == \
        [act_key(fwd["1"].jittor_order, s) for s in ("0", "1", "2")]
    assert r.verdict == "pass", [(f.type, f.location, f.message) for f in r.errors]

    wrong = _align(flat=True, c_scale=1.01)
    failed = [(x.kind, x.torch_name, x.sub) for x in wrong.rows if not x.ok]
    assert failed == [(Kind.FORWARD, "", "1")]
    row = _root_rows(wrong)["1"]
    assert row.jittor_key == act_key(row.jittor_order, "2")
    assert row.metrics.rel == pytest.approx(0.01, rel=1e-3)


def _rec(sub: str, shape: tuple[int, ...]) -> CallRecord:
    return CallRecord(order=0, module="", module_type="Model", call_index=0, sub=sub, shape=shape,
                      dtype="float32", training=True)


def test_repeated_shapes_pair_by_sub_path_tail() -> None:
    """GOLD-YOLO: the reference returns [(feats, scores, distri), featmaps] where featmaps have the feats'
    shapes; a port's bare (feats, scores, distri) pairs its feats with the head's feats, not the featmaps."""
    from aligner.compare import pair_leaves

    maps = [(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    ref = [_rec(f"0.0.{i}", s) for i, s in enumerate(maps)] + [_rec("0.1", (2, 84, 20)), _rec("0.2", (2, 84, 68))]
    ref += [_rec(f"1.{i}", s) for i, s in enumerate(maps)]
    port = [_rec(f"0.{i}", s) for i, s in enumerate(maps)] + [_rec("1", (2, 84, 20)), _rec("2", (2, 84, 68))]
    pairs = {(t.sub if t else None): (j.sub if j else None) for t, j in pair_leaves(ref, port)}
    assert pairs == {"0.0.0": "0.0", "0.0.1": "0.1", "0.0.2": "0.2", "0.1": "1", "0.2": "2",
                     "1.0": None, "1.1": None, "1.2": None}
    # equal structures still pair by sub-path, a changed shape there is a shape mismatch
    same = {t.sub: j.sub for t, j in pair_leaves([_rec("0", (1, 2)), _rec("1", (3,))],
                                                   [_rec("0", (1, 2)), _rec("1", (4,))])}
    assert same == {"0": "0", "1": "1"}


# ----- GOLD-YOLO loss wrapper, with framework-free stand-ins --------------------------------------------------

class _Shape:
    """A shape that is a sequence but neither tuple nor list, as Jittor's NanoVector."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        self.dims = dims

    def __len__(self) -> int:
        return len(self.dims)

    def __iter__(self):  # noqa: ANN204
        return iter(self.dims)

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        return self.dims[i]


class _T:
    """A stand-in tensor: only a shape."""

    def __init__(self, *shape: int) -> None:
        self.shape = _Shape(tuple(shape))


def generate_anchors(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - swapped by the wrapper's tap
    return ()


class _Loss:
    """Stands in for a ComputeLoss: records the head it was given."""

    formal_assigner = warmup_assigner = None

    def __init__(self) -> None:
        self.head = None

    def __call__(self, head, targets, epoch_num, step_num):  # noqa: ANN001, ANN204
        self.head = head
        return 1.5, [0.5, 0.5, 0.5]


class _Ctx:
    def __init__(self) -> None:
        self.stages: dict[str, object] = {}

    def record(self, name: str, value: object) -> None:
        self.stages[name] = value


def _head():  # noqa: ANN202
    feats = [_T(2, 16, 8, 8), _T(2, 32, 4, 4), _T(2, 64, 2, 2)]
    return (feats, _T(2, 84, 20), _T(2, 84, 68)), feats


def test_gold_yolo_loss_takes_the_reference_output_and_a_bare_head() -> None:
    from aligner.pairs.gold_yolo import GoldYoloPair

    assert sys.modules[_Loss.__module__].generate_anchors is generate_anchors
    head, featmaps = _head()
    for outputs in ([head, list(featmaps)], head):
        obj, ctx = _Loss(), _Ctx()
        assert GoldYoloPair._wrap(obj)(outputs, None, ctx) == 1.5
        assert obj.head is head
        assert ctx.stages["feat_hw"].tolist() == [[8, 8], [4, 4], [2, 2]]
        assert ctx.stages["loss_items"] == [0.5, 0.5, 0.5]


def test_gold_yolo_loss_rejects_another_structure_in_one_line() -> None:
    from aligner.pairs.gold_yolo import GoldYoloPair

    head, _ = _head()
    wrong = (head[0], head[1])  # distri missing
    with pytest.raises(AdapterError, match=r"expected .*\(feats, pred_scores, pred_distri\).*got tuple\[list\[") as e:
        GoldYoloPair._wrap(_Loss())(wrong, None, _Ctx())
    assert "\n" not in str(e.value)
