"""The performance targets, measured as ratios in one run on this machine.

    python -m benchmarks.targets [--size 640] [--rounds 3]

One process, rounds interleaved (every measurement of a round runs next to the bare steps it is divided by, so
a busy neighbour inflates both):

* GOLD-YOLO-N at ``--size`` (official configuration, 20 classes, batch 1, its first state): the bare torch float32,
  torch float64 and Jittor steps (forward + the pair's loss + backward, no hooks); ``aligner run`` as the CLI runs
  it by default (noise floor, module isolation "auto") with the reference in the cache and with an empty cache
  directory; the torch side's stats-only capture.
* The 5-layer conv net at 320 (four 3x3 conv + BatchNorm + ReLU blocks of 16-64 channels and a 1x1 conv, batch 1,
  probe loss): bare torch and Jittor steps, ``align`` in its default mode (float64 reference captured when a
  tensor needs it) with the reference in the cache and without a cache; extra cost in bare torch steps.
* Compare throughput: the fused pair metrics over 5x10^7 float32 pairs (element pairs per second).
* Peak resident memory of a default run with the reference cached, in a fresh process (``benchmarks.workers``).

Each run's own timings (``results.json`` ``run.timings``) give where its time goes, and a cProfile of one cached
run the functions behind them. Results:
``benchmarks/results/targets.{md,json}``.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

import aligner.env  # noqa: F401 - configures Jittor before it is imported
from benchmarks.run import ROOT, machine
from benchmarks.workers import RESULT_PREFIX

RESULTS = Path(__file__).resolve().parent / "results"
CONV_SIZE = 320

# (key, what, bound, ratio of)
TARGETS = [
    ("run_cached", "default `aligner run`, reference cached / (bare torch + bare Jittor)", 1.5),
    ("run_empty", "default `aligner run`, empty cache / (bare torch + bare torch float64 + bare Jittor)", 4.0),
    ("align_extra", "`align` default, conv net: extra cost in bare torch steps (reference cached)", 1.9),
    ("stats_capture", "stats-only torch capture / bare torch step", 1.5),
    ("compare_gps", "compare throughput, G element pairs/s (at least)", 1.0),
    ("peak_gb", "peak memory of a default run, reference cached, GB", 2.0),
]


def log(msg: str) -> None:
    print(f"[targets {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class _NoRecorder:
    def on_stage(self, *_: Any) -> None:
        pass


class GoldSteps:
    """The bare steps of the pair's own models and loss, and the aligner's measurements on the same pair."""

    def __init__(self, size: int) -> None:
        import jittor as jt
        import torch

        from aligner.adapters import get_adapter
        from aligner.pairs import get_pair

        self.jt, self.torch = jt, torch
        self.options = {"num_classes": 20, "img_size": size, "batch": 1}
        self.pair = get_pair("gold_yolo-n", **self.options)
        self.state = self.pair.states[0]
        self.ta, self.ja = get_adapter("torch"), get_adapter("jittor")
        self.data = self.pair.make_inputs()
        self.t32 = self._torch_model(self.pair)
        self.pair64 = get_pair("gold_yolo-n", dtype="float64", **self.options)
        self.t64 = self._torch_model(self.pair64)
        self.jm = self.pair.build_jittor()
        self.pair.prepare(self.jm, "jittor")
        self.jparams = [p for p in self.jm.parameters() if not p.is_stop_grad()]

    def _torch_model(self, pair: Any) -> Any:
        m = pair.build_torch()
        pair.apply_state(m, self.state)
        pair.prepare(m, "torch")
        return m

    def _ctx(self, adapter: Any, dtype: str) -> Any:
        from aligner.adapters.recording import LossContext
        return LossContext(adapter, _NoRecorder(), dtype)

    def bare_torch(self, dtype: str = "float32") -> float:
        torch = self.torch
        model, pair = (self.t32, self.pair) if dtype == "float32" else (self.t64, self.pair64)
        x = [torch.from_numpy(np.asarray(a, dtype=dtype) if a.dtype.kind == "f" else a) for a in self.data.inputs]
        tg = self.ta._convert_targets(self.data.targets)
        loss = pair.loss_for("torch")

        def step() -> None:
            model.zero_grad(set_to_none=True)
            loss(model(*x), tg, self._ctx(self.ta, dtype)).backward()
        return _timed(step)[0]

    def bare_jittor(self) -> float:
        jt = self.jt
        x = [jt.array(a) for a in self.data.inputs]
        tg = self.ja._convert_targets(self.data.targets)
        loss = self.pair.loss_for("jittor")

        def step() -> None:
            total = loss(self.jm(*x), tg, self._ctx(self.ja, "float32"))
            grads = jt.grad(total, self.jparams)
            jt.sync([total, *grads])
            jt.sync_all()
        return _timed(step)[0]

    def stats_capture(self) -> float:
        loss = self.pair.loss_for("torch")
        return _timed(lambda: self.ta.capture(self.t32, self.data.inputs, loss, self.data.targets, full=False,
                                              dtype="float32", meta={}))[0]

    def run(self, cache: str | bool) -> tuple[float, dict[str, Any]]:
        from aligner import api
        seconds, result = _timed(lambda: api.run_pair("gold_yolo-n", states=[self.state], cache=cache,
                                                      **self.options))
        return seconds, {"timings": result.run.get("timings") or {}, "verdict": result.verdict,
                         "floor_not_needed": result.run.get("noise_floor_not_needed"),
                         "errors": sum(1 for f in result.findings if f.severity.value == "error")}


class ConvNet:
    """The 5-layer conv net in both frameworks (the same seeded weights through align's transfer)."""

    def __init__(self) -> None:
        import jittor as jt
        import torch
        from jittor import nn as jnn

        self.jt, self.torch = jt, torch
        torch.manual_seed(0)
        self.tm = self._build(torch.nn)
        jt.set_global_seed(0)
        self.jm = self._build(jnn)
        self.state = copy.deepcopy(self.tm.state_dict())
        self.x = np.random.default_rng(0).standard_normal((1, 3, CONV_SIZE, CONV_SIZE)).astype(np.float32)
        self.jparams = [p for p in self.jm.parameters() if not p.is_stop_grad()]

    @staticmethod
    def _build(nn: Any) -> Any:
        layers, c = [], 3
        for o in (16, 32, 64, 64):
            layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
            c = o
        return nn.Sequential(*layers, nn.Conv2d(c, 10, 1))

    def bare_torch(self) -> float:
        def step() -> None:
            self.tm.zero_grad(set_to_none=True)
            y = self.tm(self.torch.from_numpy(self.x))
            (y * y).sum().backward()
        seconds = _timed(step)[0]
        self.tm.load_state_dict(self.state)  # train-mode BN statistics moved: align starts from the same model
        return seconds

    def bare_jittor(self) -> float:
        jt = self.jt

        def step() -> None:
            y = self.jm(jt.array(self.x))
            total = (y * y).sum()
            jt.sync([total, *jt.grad(total, self.jparams)])
            jt.sync_all()
        return _timed(step)[0]

    def align(self, cache: str | bool) -> tuple[float, dict[str, Any]]:
        from aligner import api
        self.tm.load_state_dict(self.state)
        seconds, result = _timed(lambda: api.align(self.tm, self.jm, self.x, cache=cache))
        self.tm.load_state_dict(self.state)
        return seconds, {"timings": result.run.get("timings") or {}, "verdict": result.verdict,
                         "floor_not_needed": result.run.get("noise_floor_not_needed")}


def compare_throughput(n: int = 50_000_000, repeats: int = 7) -> float:
    from aligner import reductions
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(n).astype(np.float32)
    port = (ref + rng.standard_normal(n).astype(np.float32) * 1e-5).astype(np.float32)
    reductions.pair_sums(ref, port, 1e-4, 1e-7)
    times = [_timed(lambda: reductions.pair_sums(ref, port, 1e-4, 1e-7))[0] for _ in range(repeats)]
    return n / statistics.median(times) / 1e9


def peak_of_cached_run(size: int, cache: str) -> dict[str, Any]:
    """A default run in a fresh process against the populated cache (the report files included)."""
    args = {"pair": "gold_yolo-n", "img_size": size, "states": "first", "repeats": 1}
    env = {**os.environ, "ALIGNER_CACHE_DIR": cache}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.workers", "align", json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=3600)
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"the memory worker failed: {proc.stderr[-2000:]}")
    return json.loads(line[len(RESULT_PREFIX):])


def profile_run(gold: GoldSteps, cache: str | None, top: int = 14) -> dict[str, Any]:
    """cProfile of one cached default run (``cache`` None: of one stats-only torch capture): the functions with the
    most time inside them, and the aligner's own functions by cumulative time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    if cache is None:
        gold.stats_capture()
    else:
        gold.run(cache)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = [(f"{Path(fn).name}:{line}({name})" if fn != "~" else name, nc, tt, ct)
            for (fn, line, name), (_, nc, tt, ct, _) in stats.stats.items()]  # type: ignore[attr-defined]
    own = [r for (fn, _, _), r in zip(stats.stats, rows) if "/aligner/" in fn]  # type: ignore[attr-defined]
    pick = lambda rs, k: [[r[0], r[1], round(r[2], 3), round(r[3], 3)] for r in sorted(rs, key=k)[:top]]  # noqa: E731
    return {"total_s": round(stats.total_tt, 3),  # type: ignore[attr-defined]
            "self": pick(rows, lambda r: -r[2]), "aligner_cumulative": pick(own, lambda r: -r[3])}


def _median_timings(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r["timings"]})
    return {k: round(statistics.median(r["timings"].get(k, 0.0) for r in runs), 3) for k in keys}


@click.command()
@click.option("--size", default=640, show_default=True, help="GOLD-YOLO-N image size.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved timed rounds (medians).")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default=True)
def main(size: int, rounds: int, out: Path) -> None:
    started = _dt.datetime.now(_dt.timezone.utc)
    mach = {**machine(), "load_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="targets-") as tmp:
        cache = str(Path(tmp) / "cache")
        gold, conv = GoldSteps(size), ConvNet()
        log("warm-up: kernels, the reference into the cache")
        for _ in range(2):
            gold.bare_torch(), gold.bare_torch("float64"), gold.bare_jittor(), gold.stats_capture()
            conv.bare_torch(), conv.bare_jittor()
        gold.run(cache)
        conv.align(cache)
        conv.align(cache)
        t: dict[str, list[Any]] = {k: [] for k in ("t32", "t64", "j", "stats", "run_cached", "run_empty", "ct", "cj",
                                                   "align_cached", "align_cold")}
        details: dict[str, list[dict[str, Any]]] = {"run_cached": [], "run_empty": [], "align_cached": [],
                                                    "align_cold": []}
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}")
            t["t32"].append(gold.bare_torch())
            t["j"].append(gold.bare_jittor())
            t["t64"].append(gold.bare_torch("float64"))
            t["stats"].append(gold.stats_capture())
            for key, cache_of in (("run_cached", cache), ("run_empty", str(Path(tmp) / f"empty{r}"))):
                seconds, info = gold.run(cache_of)
                t[key].append(seconds)
                details[key].append(info)
            t["ct"].append(conv.bare_torch())
            t["cj"].append(conv.bare_jittor())
            for key, cache_of in (("align_cached", cache), ("align_cold", False)):
                seconds, info = conv.align(cache_of)
                t[key].append(seconds)
                details[key].append(info)
        log("profile of one cached run")
        profile = profile_run(gold, cache)
        stats_profile = profile_run(gold, None)
        log("compare throughput")
        gps = compare_throughput()
        log("peak memory of a cached default run (fresh process)")
        mem = peak_of_cached_run(size, cache)
    med = {k: statistics.median(v) for k, v in t.items()}
    measured = {
        "run_cached": med["run_cached"] / (med["t32"] + med["j"]),
        "run_empty": med["run_empty"] / (med["t32"] + med["t64"] + med["j"]),
        "align_extra": (med["align_cached"] - med["ct"] - med["cj"]) / med["ct"],
        "align_extra_cold": (med["align_cold"] - med["ct"] - med["cj"]) / med["ct"],
        "stats_capture": med["stats"] / med["t32"],
        "compare_gps": gps,
        "peak_gb": (mem.get("vmhwm_mb") or mem.get("ru_maxrss_mb") or 0) / 1024,
    }
    doc = {"generated": started.isoformat(timespec="seconds"), "size": size, "rounds": rounds,
           "machine": {**mach, "load_end": [round(v, 2) for v in os.getloadavg()]},
           "seconds": {k: [round(x, 4) for x in v] for k, v in t.items()},
           "medians": {k: round(v, 4) for k, v in med.items()}, "measured": measured,
           "profiles": {k: _median_timings(v) for k, v in details.items()},
           "verdicts": {k: sorted({str(d["verdict"]) for d in v}) for k, v in details.items()},
           "floor_not_needed": {k: [d["floor_not_needed"] for d in v] for k, v in details.items()},
           "memory_worker": mem, "profile": profile, "stats_profile": stats_profile}
    out.mkdir(parents=True, exist_ok=True)
    (out / "targets.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "targets.md").write_text(render(doc), encoding="utf-8")
    log(f"wrote {out / 'targets.md'}")


def render(doc: dict[str, Any]) -> str:
    m, med, got = doc["machine"], doc["medians"], doc["measured"]
    lines = [f"# Performance targets ({doc['generated']})", "",
             f"Generated by `python -m benchmarks.targets --size {doc['size']} --rounds {doc['rounds']}`: one process, "
             "rounds interleaved, medians; ratios are taken within the run.", "",
             "## Machine", "",
             f"* CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gb']} GiB; {m['platform']}",
             f"* Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
             f"* oneDNN linked: {m['onednn']}; load average at start {m['load_start']}, at end {m['load_end']} "
             "(2 cores: above ~2 a neighbour takes CPU; the ratios divide by bare steps of the same rounds)", "",
             "## Targets", "", "| target | measured | bound | status |", "|---|---|---|---|"]
    for key, what, bound in TARGETS:
        value = got[key]
        ok = value >= bound if key == "compare_gps" else value <= bound
        lines.append(f"| {what} | {value:.2f} | {'≥' if key == 'compare_gps' else '≤'} {bound} | "
                     f"{'met' if ok else '**missed**'} |")
    lines += ["", "`align` without a cache (first run: the float64 reference captured when a tensor needs it): "
              f"extra cost {got['align_extra_cold']:.2f} bare torch steps.", "",
              "## Bare steps and runs (median seconds)", "",
              "| GOLD-YOLO-N torch | torch float64 | Jittor | run, cached | run, empty cache "
              "| stats-only torch capture | conv torch | conv Jittor | align, cached | align, no cache |",
              "|---|---|---|---|---|---|---|---|---|---|",
              "| " + " | ".join(f"{med[k]:.3f}" for k in ("t32", "t64", "j", "run_cached", "run_empty", "stats", "ct",
                                                           "cj", "align_cached", "align_cold")) + " |", "",
              "## Where the time goes (each run's own timings, median seconds)", "",
              "`capture_torch`: the reference (a cache load when cached); `capture_torch64`: the float64 reference, "
              "only when a tensor needs it; `capture_jittor64`: the port in float64, only when a tensor leaves the "
              "noise floor; `isolate`: module isolation (auto: only when the end-to-end comparison differs).", ""]
    prof = doc["profiles"]
    keys = sorted({k for v in prof.values() for k in v})
    lines += ["| run | " + " | ".join(keys) + " | verdicts | float64 reference not needed |",
              "|---|" + "---|" * (len(keys) + 2)]
    for name, timings in prof.items():
        nn = doc["floor_not_needed"][name]
        lines.append(f"| {name} | " + " | ".join(f"{timings.get(k, 0):.3f}" for k in keys)
                     + f" | {', '.join(doc['verdicts'][name])} | {sum(1 for x in nn if x)}/{len(nn)} |")
    for what, prof in (("one cached default run", doc["profile"]),
                       ("one stats-only torch capture", doc.get("stats_profile"))):
        if not prof:
            continue
        for title, key in (("functions with the most time inside them", "self"),
                           ("the aligner's functions by cumulative time", "aligner_cumulative")):
            lines += ["", f"Profile of {what} (cProfile, {prof['total_s']} s in total): {title}.", "",
                      "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
            lines += [f"| `{name}` | {calls} | {own} | {cum} |" for name, calls, own, cum in prof[key]]
    mem = doc["memory_worker"]
    steps = (mem.get("hooked_steps") or {}).get("memory") or []
    around = "; ".join(f"{m['step']}: resident {m['rss_before_mb']} MiB before, {m['rss_after_mb']} after"
                       for m in steps)
    lines += ["", "## Where the memory goes", "",
              "A default run in a fresh process, reference cached, report written: resident "
              f"{mem.get('rss_start_mb')} MiB after the imports; {around}; peak (VmHWM) {mem.get('vmhwm_mb')} MiB, "
              "reached after the port's capture, in the comparison (the port's trace, the mapped float32 and "
              "float64 references, the working set) or the report; "
              f"{mem.get('rss_end_mb')} MiB at the end. Its timings: {json.dumps(mem.get('timings'))}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
