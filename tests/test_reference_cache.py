"""The on-disk cache of the torch reference (aligner.reference_cache), on real captures of the small pair.

A cached run gives the uncached run's results without capturing the torch side; every change of what
determines the reference misses the cache; a damaged entry is a miss and is rewritten; the directory
stays under its size bound. Every cache here lives in a tmp dir, never in the user's home.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aligner import reference as reference_mod
from aligner.pairs import get_pair
from aligner.records import Trace
from aligner.reference import Reference
from aligner.reference_cache import ENV_DIR, ReferenceCache, default_dir
from aligner.runconfig import RunConfig

STATE = "perturbed"


def _result_doc(result):
    """Everything the analysis produced (results.json without the run's timings and environment)."""
    doc = result.to_dict()
    doc.pop("run")
    return doc


@pytest.mark.parametrize("fault, captures", [("bn_eps", 4), (None, 2)])
def test_cached_run_captures_no_reference_and_gives_the_same_result(tmp_path, fault, captures):
    """Two states; the float64 reference is captured (and cached) only where a tensor needs it: everywhere for a
    port with a wrong BatchNorm eps, nowhere for the correct one (aligner/noise_gate.py)."""
    from aligner.api import run
    from aligner.runconfig import Port

    pair, cfg = get_pair("small"), RunConfig()
    port = Port(options={"fault": fault}) if fault else None
    plain = run(pair, cfg, reference=Reference(pair, cfg), port=port)
    cold_ref = Reference(pair, cfg, cache=ReferenceCache(tmp_path))
    cold = run(pair, cfg, reference=cold_ref, port=port)
    warm_ref = Reference(pair, cfg, cache=ReferenceCache(tmp_path))
    warm = run(pair, cfg, reference=warm_ref, port=port)

    assert cold_ref.captures == captures
    assert cold.run["noise_floor_not_needed"] == ([] if fault else ["init", "perturbed"])
    assert cold_ref.cache.stores == captures
    assert warm_ref.captures == 0 and warm_ref.cache.hits == captures
    rows = [r.to_row() for r in plain.rows]
    assert rows and [r.to_row() for r in warm.rows] == rows == [r.to_row() for r in cold.rows]
    findings = [f.to_dict(str(i)) for i, f in enumerate(plain.findings)]
    assert findings and [f.to_dict(str(i)) for i, f in enumerate(warm.findings)] == findings
    assert _result_doc(warm) == _result_doc(plain)


def test_run_config_selects_the_cache(tmp_path, monkeypatch):
    from aligner.api import run_pair

    monkeypatch.setenv(ENV_DIR, str(tmp_path / "env"))
    assert default_dir() == tmp_path / "env"
    assert ReferenceCache.of(True).root == tmp_path / "env"
    assert ReferenceCache.of(False) is None
    assert ReferenceCache.of(tmp_path / "arg").root == tmp_path / "arg"
    run_pair("small", states=[STATE], noise_floor=False, cache=tmp_path / "arg")
    assert len([p for p in (tmp_path / "arg").iterdir() if not p.name.startswith(".")]) == 1
    assert not (tmp_path / "env").exists()
    run_pair("small", states=[STATE], noise_floor=False, cache=False)
    assert not (tmp_path / "env").exists()


# ---- key completeness: each change of the reference side is a miss -----------------------------

def _captures(cache: ReferenceCache, pair=None, config: RunConfig | None = None, other: bool = False) -> int:
    """Torch captures a fresh Reference needs for one trace of STATE (0: found in the cache)."""
    pair = pair or get_pair("small")
    ref = Reference(pair, config or RunConfig(), cache=cache)
    state = STATE if STATE in ref.states else ref.states[0]
    trace = ref.other_trace(state) if other else ref.trace(state)
    assert trace is not None
    return ref.captures


@pytest.fixture()
def filled(tmp_path):
    """A cache holding the default small pair's reference of STATE (and a check that it is then a hit)."""
    cache = ReferenceCache(tmp_path / "cache")
    assert _captures(cache) == 1
    assert _captures(cache) == 0
    return cache


@pytest.mark.parametrize("options", [{"seed": 1}, {"img_size": 36}, {"dtype": "float64"}, {"batch": 1},
                                     {"num_classes": 4}])
def test_another_pair_option_misses(filled, options):
    assert _captures(filled, pair=get_pair("small", **options)) == 1
    assert _captures(filled, pair=get_pair("small", **options)) == 0


@pytest.mark.parametrize("config", [RunConfig(steps=1), RunConfig(stats_only=True), RunConfig(states=(STATE,)),
                                    RunConfig(states=(STATE, "init")), RunConfig(noise_floor=False)])
def test_other_capture_options_miss(filled, config):
    assert _captures(filled, config=config) == 1


def test_judging_options_hit(filled):
    # tolerances and mapping judge the traces, they do not change them
    assert _captures(filled, config=RunConfig(tolerances={"rel": 1e-3}, mapping={"a": "b"})) == 0


def test_other_precision_is_its_own_entry(filled):
    assert _captures(filled, other=True) == 1
    assert _captures(filled, other=True) == 0
    assert _captures(filled) == 0


def test_changed_weights_miss(filled, monkeypatch):
    import aligner.capture as capture

    states = capture.reference_states

    def nudged(pair, model, names):
        out = states(pair, model, names)
        w = out[STATE]["cls_pred.weight"]
        out[STATE]["cls_pred.weight"] = np.nextafter(w, w.dtype.type(np.inf))  # one ulp: nothing else changes
        assert not np.array_equal(out[STATE]["cls_pred.weight"], w)
        return out

    monkeypatch.setattr(capture, "reference_states", nudged)
    assert _captures(filled) == 1


def test_changed_inputs_miss(filled, monkeypatch):
    from aligner.pairs.small import SmallPair

    make = SmallPair.make_inputs

    def nudged(self, seed=None):
        data = make(self, seed)
        x = data.inputs[0].copy()
        x[0, 0, 0, 0] = np.nextafter(x[0, 0, 0, 0], x.dtype.type(np.inf))  # one ulp
        assert not np.array_equal(x, data.inputs[0])
        return replace(data, inputs=[x])

    monkeypatch.setattr(SmallPair, "make_inputs", nudged)
    assert _captures(filled) == 1


def test_changed_reference_source_misses(tmp_path, monkeypatch):
    source = tmp_path / "layer.py"
    source.write_text("EPS = 1e-5\n")
    monkeypatch.setattr(reference_mod, "REFERENCE_SOURCES", (*reference_mod.REFERENCE_SOURCES, str(source)))
    cache = ReferenceCache(tmp_path / "cache")

    def next_process() -> None:  # a new process first sees the files as they are now
        monkeypatch.setattr(reference_mod, "_SEEN", {})

    next_process()
    assert _captures(cache) == 1
    next_process()
    assert _captures(cache) == 0
    source.write_text("EPS = 1e-3\n")
    next_process()
    assert _captures(cache) == 1
    source.write_text("EPS = 1e-5\n")
    next_process()
    assert _captures(cache) == 0


def test_source_changed_under_a_running_process_bypasses_the_cache(tmp_path, monkeypatch):
    # the process still runs the code it imported: its traces must not be stored under the new code's key
    source = tmp_path / "layer.py"
    source.write_text("EPS = 1e-5\n")
    monkeypatch.setattr(reference_mod, "REFERENCE_SOURCES", (*reference_mod.REFERENCE_SOURCES, str(source)))
    monkeypatch.setattr(reference_mod, "_SEEN", {})
    cache = ReferenceCache(tmp_path / "cache")
    assert _captures(cache) == 1 and cache.stores == 1
    source.write_text("EPS = 0.001\n")  # another size: a changed stamp whatever the clock's resolution
    assert _captures(cache) == 1
    assert cache.stores == 1 and cache.hits == 0  # neither stored nor looked up


def test_the_shipped_reference_sources_are_hashed():
    pair = get_pair("small")
    files = {p.resolve() for p in reference_mod.reference_sources(pair, Reference(pair, RunConfig()).model())}
    root = Path(reference_mod.__file__).resolve().parent.parent
    for rel in ("reference_torch/model.py", "aligner/adapters/torch_adapter.py", "aligner/adapters/base.py",
                "aligner/adapters/recording.py", "aligner/capture.py", "aligner/records.py", "aligner/trace_io.py",
                "aligner/pairs/small.py", "aligner/pairs/_small_torch.py"):
        assert (root / rel).resolve() in files, rel
    assert (root / "aligner/pairs/_small_jittor.py").resolve() not in files  # the port is not the reference


def test_a_pairs_helper_module_is_hashed():
    # GOLD-YOLO's stage summaries use its rules module's strides and expected anchors
    from aligner.pairs.gold_yolo import GoldYoloPair

    root = Path(reference_mod.__file__).resolve().parent.parent
    assert "aligner.pairs.gold_yolo_rules" in reference_mod._sibling_imports(GoldYoloPair.__module__)
    assert (root / "aligner/pairs/gold_yolo_rules.py").resolve() in {
        p.resolve() for p in reference_mod.reference_sources(GoldYoloPair(size="n"))}


def test_another_torch_version_misses(filled, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert _captures(filled) == 1


# ---- damaged entries, races, the size bound ------------------------------------------------------

def _entry(cache: ReferenceCache) -> Path:
    entries = [p for p in cache.root.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    return entries[0]


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "key", "partial"])
def test_damaged_entry_is_a_miss_and_is_replaced(filled, damage):
    entry = _entry(filled)
    arrays = entry / "trace" / "arrays.npz"
    if damage == "truncate":
        arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    elif damage == "flip":
        raw = bytearray(arrays.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        arrays.write_bytes(bytes(raw))
    elif damage == "manifest":
        (entry / "trace" / "manifest.json").write_text("{")
    elif damage == "key":
        (entry / "key.json").write_text('{"another": "key"}')
    else:
        (entry / "trace" / "manifest.json").unlink()
    assert _captures(filled) == 1
    assert _entry(filled) == entry
    assert _captures(filled) == 0


def _trace(n_bytes: int, tag: int) -> Trace:
    return Trace(meta={"framework": "torch", "state": "s", "tag": tag}, calls=[], params=[], modules=[],
                 arrays={"act/0/": np.full(n_bytes // 4, tag, dtype=np.float32)})


def test_racing_writers_keep_one_whole_entry(tmp_path):
    a, b = ReferenceCache(tmp_path), ReferenceCache(tmp_path)
    key = {"k": 1}
    assert a.store(key, _trace(4096, 1))
    assert not b.store(key, _trace(4096, 2))  # the first writer's entry stays
    got = b.load(key)
    assert got is not None and got.meta["tag"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_eviction_keeps_the_directory_under_the_bound(tmp_path):
    one = 400_000
    cache = ReferenceCache(tmp_path, max_bytes=3 * one)
    for i in range(3):
        assert cache.store({"k": i}, _trace(one - 20_000, i))
        os.utime(cache.entry({"k": i}), (1000.0 + i, 1000.0 + i))  # distinct ages, oldest first
        assert cache.size() <= cache.max_bytes
    assert cache.load({"k": 0}) is not None  # used now: the most recent of the three
    assert cache.store({"k": 3}, _trace(one - 20_000, 3))
    assert cache.size() <= cache.max_bytes
    assert [i for i in range(4) if cache.entry({"k": i}).is_dir()] == [0, 2, 3]  # the least recently used went
    for i in range(4, 7):
        assert cache.store({"k": i}, _trace(one - 20_000, i))
        assert cache.size() <= cache.max_bytes
    assert [i for i in range(7) if cache.entry({"k": i}).is_dir()] == [4, 5, 6]
    assert not cache.store({"k": "huge"}, _trace(4 * one, 9))  # larger than the whole bound: not stored
    assert cache.size() <= cache.max_bytes and not cache.entry({"k": "huge"}).exists()


@pytest.mark.parametrize("flags, cache", [([], True), (["--no-cache"], False)])
def test_cli_no_cache_reaches_the_run(tmp_path, monkeypatch, flags, cache):
    from click.testing import CliRunner

    from aligner import api
    from aligner.cli import cli

    seen = {}

    def stub(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop before the capture")

    monkeypatch.setattr(api, "run_pair", stub)
    result = CliRunner().invoke(cli, ["run", "--model", "small", "--out", str(tmp_path / "out"), *flags])
    assert "cache" in seen, result.output  # the run was reached (the stub then stops it)
    assert seen["cache"] is cache
