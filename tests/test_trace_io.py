"""Trace directories: round trip, version check, corruption, atomic replace. Pure numpy (no framework)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest

from aligner.errors import EXIT_ERROR, TraceFormatError, exit_code_for
from aligner.records import (CallRecord, FrozenBy, GradStatus, ModuleInfo, ParamInfo, ParamKind, TensorStats,
                             Trace, act_key, gact_key, pgrad_key)
from aligner.trace_io import _checksum  # noqa: PLC2701 - tests re-sign a deliberately edited manifest
from aligner.trace_io import (TRACE_FORMAT, atomic_dir, read_trace, read_trace_set, read_weights, write_trace,
                              write_trace_set)


def _trace(state: str = "init", full: bool = True) -> Trace:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    g = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    calls = [CallRecord(0, "backbone.conv", "Conv2d", 0, "", (2, 4, 3, 3), "float32", True, ("input/0",), True),
             CallRecord(1, "backbone", "Sequential", 0, "", (2, 4, 3, 3), "float32", True, ("input/0",), True,
                        alias_of="act/0/"),
             CallRecord(2, "", "Model", 0, "1.cls", (3,), "int64", False, (), False)]
    params = [ParamInfo("backbone.conv.weight", (4, 3, 1, 1), "float32", ParamKind.TRAINABLE, 12, "backbone.conv",
                        None, GradStatus.NONZERO, None, 0.5),
              ParamInfo("head.w", (4, 3, 1, 1), "float32", ParamKind.TRAINABLE, 12, "head",
                        "backbone.conv.weight", GradStatus.UNREACHABLE),
              ParamInfo("detect.proj", (17,), "float32", ParamKind.FROZEN, 17, "detect", None, GradStatus.FROZEN,
                        FrozenBy.EVAL),
              ParamInfo("bn.running_mean", (4,), "float32", ParamKind.BUFFER, 4, "bn")]
    modules = [ModuleInfo("", "Model", 0, True, {}, 0, 0, 12, 4),
               ModuleInfo("bn", "BatchNorm2d", 1, False, {"bn_eps": 1e-3, "bn_momentum": 0.03}, 0, 4, 0, 4)]
    arrays = {act_key(0): a, act_key(2, "1.cls"): np.array([1, 2, 3]), pgrad_key("backbone.conv.weight"): g[0, :, :1, :1].copy(),
              "stage/fg_mask": np.array([[True, False]]), "stage/loss": np.array(1.5, dtype=np.float64)}
    stats = {}
    if not full:
        stats = {k: TensorStats.of(v) for k, v in arrays.items() if not k.startswith("stage/")}
        stats[gact_key(0)] = TensorStats.of(np.array([np.nan, np.inf, 0.0], np.float32))
        arrays = {k: v for k, v in arrays.items() if k.startswith("stage/")}
    meta = {"framework": "torch", "state": state, "seed": 0, "dtype": "float32", "versions": {"numpy": np.__version__},
            "weight_transfer": [{"kind": "missing", "name": "x"}]}
    return Trace(meta, calls, params, modules, arrays, stats, {"loss": {"total": 1.5, "items": [1.0, 0.5]}})


def _rewrite(path, doc: dict, name: str = "manifest.json") -> None:
    """Write an edited manifest/index with a valid checksum (an edit the format allows, not damage)."""
    doc = {**doc, "checksum": _checksum(doc)}
    (path / name).write_text(json.dumps(doc))


def _as_format(doc: dict, version: int) -> dict:
    """The manifest as an older format wrote it (no integrity fields)."""
    return {**{k: v for k, v in doc.items() if k not in ("files", "checksum")}, "trace_format": version}


def _same(a: Trace, b: Trace) -> None:
    assert a.meta == b.meta and a.calls == b.calls and a.params == b.params and a.modules == b.modules
    assert a.stages == b.stages
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        assert a.arrays[k].dtype == b.arrays[k].dtype and a.arrays[k].shape == b.arrays[k].shape
        assert np.array_equal(a.arrays[k], b.arrays[k])
    assert set(a.stats) == set(b.stats)
    for k in a.stats:  # NaN-safe dataclass comparison through JSON-like dicts
        assert json.dumps(asdict(a.stats[k]), sort_keys=True) == json.dumps(asdict(b.stats[k]), sort_keys=True)


@pytest.mark.parametrize("full", [True, False])
def test_round_trip_identical(tmp_path, full):
    t = _trace(full=full)
    path = write_trace(t, tmp_path / "tr")
    back = read_trace(path)
    _same(t, back)
    assert isinstance(back.params[0].kind, ParamKind) and back.params[2].frozen_by is FrozenBy.EVAL
    assert back.calls[2].shape == (3,) and back.calls[0].input_keys == ("input/0",)


def test_arrays_are_mapped_copy_on_write(tmp_path):
    """Read arrays are views of the mapped file: writable, and writing one leaves the file (and the next read)
    as it was."""
    t = _trace()
    path = write_trace(t, tmp_path / "tr")
    before = (path / "arrays.npz").read_bytes()
    back = read_trace(path)
    key = next(k for k, v in back.arrays.items() if v.size and v.dtype.kind == "f")
    back.arrays[key][...] = 123.0
    assert (path / "arrays.npz").read_bytes() == before
    _same(t, read_trace(path))


def test_compressed_or_sha256_traces_still_read(tmp_path):
    """A format-3 trace (sha256 of its files, sha1 in its stats) whose arrays were written compressed reads
    through numpy."""
    t = _trace(full=False)
    path = write_trace(t, tmp_path / "tr")
    arrays = dict(np.load(path / "arrays.npz"))
    np.savez_compressed(path / "arrays.npz", **arrays)
    doc = json.loads((path / "manifest.json").read_text())
    doc["files"]["arrays.npz"] = hashlib.sha256((path / "arrays.npz").read_bytes()).hexdigest()
    doc = {**doc, "stats": {k: {**{f: v for f, v in s.items() if f != "fingerprint"}, "sha1": "0" * 40}
                            for k, s in doc["stats"].items()}}
    doc["trace_format"] = 3
    doc["checksum"] = _checksum(doc)
    (path / "manifest.json").write_text(json.dumps(doc))
    back = read_trace(path)
    for k, v in t.arrays.items():
        assert np.array_equal(back.arrays[k], v)
    assert back.stats and all(s.fingerprint == "sha1:" + "0" * 40 for s in back.stats.values())


def test_traces_written_before_the_compatible_additions_still_read(tmp_path):
    """Format 1 gained ``calls[].requires_grad``, ``buf/`` arrays and ``meta["init"]`` compatibly: a manifest
    without them reads, with ``requires_grad`` None (unknown) and no init summary."""
    t = _trace()
    t.calls[0] = CallRecord(**{**asdict(t.calls[0]), "requires_grad": False})
    t.meta["init"] = {"stats": {"bn.running_mean": [0.0, 0.0, 0.0, 0.0]}, "deterministic": ["bn.running_mean"]}
    path = write_trace(t, tmp_path / "tr")
    back = read_trace(path)
    assert back.calls[0].requires_grad is False and back.meta["init"] == t.meta["init"]
    doc = json.loads((path / "manifest.json").read_text())
    for c in doc["calls"]:
        del c["requires_grad"]
    del doc["meta"]["init"]
    (path / "manifest.json").write_text(json.dumps(_as_format(doc, 2)))
    old = read_trace(path)
    assert [c.requires_grad for c in old.calls] == [None, None, None] and "init" not in old.meta


def test_other_format_version_rejected(tmp_path):
    path = write_trace(_trace(), tmp_path / "tr")
    doc = json.loads((path / "manifest.json").read_text())
    assert doc["trace_format"] == TRACE_FORMAT
    for bad in (TRACE_FORMAT + 1, 0, None, "1"):
        doc["trace_format"] = bad
        _rewrite(path, doc)
        with pytest.raises(TraceFormatError) as err:
            read_trace(path)
        assert exit_code_for(err.value) == EXIT_ERROR and err.value.slug == "trace-format"


def test_corrupt_or_missing_rejected(tmp_path):
    with pytest.raises(TraceFormatError):
        read_trace(tmp_path / "nothing")
    path = write_trace(_trace(), tmp_path / "tr")
    np.savez(path / "arrays.npz", only=np.zeros(2))  # arrays no longer match the manifest
    with pytest.raises(TraceFormatError):
        read_trace(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(TraceFormatError):
        read_trace(path)


def test_object_arrays_refused_and_never_unpickled(tmp_path):
    t = _trace()
    bad = Trace(t.meta, t.calls, t.params, t.modules, {"act/0/": np.array([object()], dtype=object)})
    with pytest.raises(TypeError):
        write_trace(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written
    path = write_trace(t, tmp_path / "tr")
    np.savez(path / "arrays.npz", **{k: (np.array([{}], dtype=object) if k == "act/0/" else v)
                                     for k, v in t.arrays.items()})
    with pytest.raises(TraceFormatError):
        read_trace(path)  # allow_pickle=False refuses the object array


def test_atomic_replace_keeps_old_on_failure(tmp_path):
    target = tmp_path / "tr"
    write_trace(_trace("init"), target)
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "manifest.json").write_text("half")
            raise RuntimeError("boom")
    assert read_trace(target).state == "init"
    write_trace(_trace("perturbed"), target)
    assert read_trace(target).state == "perturbed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tr"]  # no temp or old dirs left behind


def test_trace_set_round_trip_with_weights(tmp_path):
    traces = {"init": _trace("init"), "perturbed": _trace("perturbed", full=False)}
    w = {"init": {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    root = write_trace_set(traces, tmp_path / "set", extra={"pair": "small"}, weights=w)
    back = read_trace_set(root)
    assert list(back) == ["init", "perturbed"]
    for s in traces:
        _same(traces[s], back[s])
    assert np.array_equal(read_weights(root, "init")["a.weight"], w["init"]["a.weight"])
    with pytest.raises(TraceFormatError):
        read_weights(root, "perturbed")
    single = read_trace_set(root / "init")  # a single trace directory reads as a one-state set
    assert list(single) == ["init"]
    idx = json.loads((root / "index.json").read_text())
    idx["trace_format"] = TRACE_FORMAT + 1
    _rewrite(root, idx, "index.json")
    with pytest.raises(TraceFormatError):
        read_trace_set(root)


def test_tensor_stats_against_numpy():
    a = np.array([[1.0, -2.0, 0.0], [np.nan, np.inf, 3.0]], np.float32)
    s = TensorStats.of(a)
    fin = np.array([1.0, -2.0, 0.0, 3.0])
    assert (s.nan, s.inf, s.shape, s.dtype) == (1, 1, (2, 3), "float32")
    assert s.min == -2.0 and s.max == 3.0 and s.zero_frac == pytest.approx(1 / 6)
    assert s.mean == pytest.approx(fin.mean()) and s.std == pytest.approx(fin.std())
    assert s.l2 == pytest.approx(np.sqrt((fin ** 2).sum()))
    assert s.fingerprint != TensorStats.of(a.astype(np.float64)).fingerprint  # bits differ with the dtype
    assert TensorStats.of(np.zeros(0)).zero_frac == 0.0


def test_shared_array_written_once_and_read_back_under_every_key(tmp_path):
    from dataclasses import replace
    t = _trace()
    a = t.arrays[act_key(0)]
    t = replace(t, arrays={**t.arrays, act_key(1): a})  # the Sequential's output is its child's array
    path = write_trace(t, tmp_path / "tr")
    doc = json.loads((path / "manifest.json").read_text())
    assert doc["arrays"][act_key(1)] == {"shape": [2, 4, 3, 3], "dtype": "float32", "same_as": act_key(0)}
    with np.load(path / "arrays.npz") as npz:
        assert act_key(1) not in npz.files and act_key(0) in npz.files
    back = read_trace(path)
    _same(t, back)
    assert back.arrays[act_key(1)] is back.arrays[act_key(0)]
    # a reference to a key that is not stored is a corrupt trace, not a silent gap
    doc["arrays"][act_key(1)]["same_as"] = "act/99/"
    _rewrite(path, doc)
    with pytest.raises(TraceFormatError):
        read_trace(path)


def test_format_1_traces_still_read(tmp_path):
    path = write_trace(_trace(), tmp_path / "tr")  # no shared arrays: the same files as format 1 wrote
    doc = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(_as_format(doc, 1)))
    _same(_trace(), read_trace(path))
