"""Measurement entry points, each run in its own subprocess by :mod:`benchmarks.run`.

``python -m benchmarks.workers KIND JSON_ARGS`` runs one measurement and prints ``BENCH_RESULT {json}``
as its last line. One process per measurement keeps the peak resident memory (``ru_maxrss`` and
``VmHWM``) specific to it, and keeps framework state (kernel caches in memory, allocator pools)
from leaking between measurements.

Kinds: ``bare_torch``, ``bare_jittor`` (forward + loss + backward, no optimizer step), ``align``
(``api.run_pair`` + report writing: what ``aligner run`` does), ``trace`` (trace sets on disk),
``cold`` (Jittor with an empty kernel cache) and ``profile`` (pyinstrument over ``align``).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

RESULT_PREFIX = "BENCH_RESULT "
# The configuration of the golden data (gold_yolo_n_nc20_dfl_500): 20 classes, DFL with
# reg_max 16, drop_path 0 (deterministic train mode), TAL assigner from epoch 0.
NUM_CLASSES = 20
MODEL_OPTIONS: dict[str, Any] = {"num_classes": NUM_CLASSES, "use_dfl": True, "reg_max": 16, "drop_path_rate": 0.0}
LOSS_OPTIONS: dict[str, Any] = {"num_classes": NUM_CLASSES, "use_dfl": True, "reg_max": 16, "warmup_epoch": 0}


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (ru_maxrss and /proc's VmHWM, MiB) and its CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"ru_maxrss_mb": round(ru.ru_maxrss / 1024, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def pair_batch(model: str, img_size: int, batch: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The image and targets the GOLD-YOLO pair feeds `aligner run` (golden recipe), so both measure the same."""
    from aligner.pairs import get_pair  # noqa: PLC0415 - imports no framework
    data = get_pair(model, num_classes=NUM_CLASSES, img_size=img_size, batch=batch, seed=seed).make_inputs()
    return data.inputs[0], np.asarray(data.targets)


def _timed_loop(step: Callable[[], None], warmup: int, runs: int) -> dict[str, Any]:
    times, cpu = [], []
    for _ in range(warmup + runs):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    steady = times[warmup:]
    # CPU seconds (all threads) are less sensitive than wall time to a neighbour taking the cores
    return {"first_s": round(times[0], 4), "times_s": [round(t, 4) for t in steady],
            "median_s": round(statistics.median(steady), 4), "min_s": round(min(steady), 4),
            "cpu_median_s": round(statistics.median(cpu[warmup:]), 4)}


def bare_torch(args: dict[str, Any]) -> dict[str, Any]:
    """Official-style torch step: zero_grad, forward, loss, backward (no optimizer step)."""
    t0 = time.perf_counter()
    import torch  # noqa: PLC0415
    from reference_torch import build_loss, build_model  # noqa: PLC0415
    t_import = time.perf_counter() - t0
    dtype = getattr(torch, args.get("dtype", "float32"))
    torch.manual_seed(args.get("seed", 0))
    t1 = time.perf_counter()
    model = build_model(args["model"], **MODEL_OPTIONS).to(dtype).train()
    t_build = time.perf_counter() - t1
    if args.get("save_weights"):
        np.savez(args["save_weights"], **{k: v.detach().float().numpy() for k, v in model.state_dict().items()})
    loss_fn = build_loss(args["model"], img_size=args["img_size"], **LOSS_OPTIONS)
    if dtype == torch.float64:
        loss_fn.proj = torch.nn.Parameter(loss_fn.proj.double(), requires_grad=False)
    image, targets = pair_batch(args["model"], args["img_size"], args.get("batch", 1), args.get("seed", 0))
    x, tg = torch.from_numpy(image).to(dtype), torch.from_numpy(targets)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss, _ = loss_fn(out[0], tg, 0, 0)
        loss.backward()

    res = _timed_loop(step, args.get("warmup", 2), args.get("runs", 5))
    return {**res, "import_s": round(t_import, 3), "build_s": round(t_build, 3),
            "threads": torch.get_num_threads(), **peak_memory_mb()}


def bare_jittor(args: dict[str, Any]) -> dict[str, Any]:
    """The port's step: forward, loss, jt.grad over the trainable Vars, sync (no optimizer step)."""
    t0 = time.perf_counter()
    import jittor_impl.env  # noqa: F401, PLC0415 - before jittor: nvcc_path, oneDNN
    import jittor as jt  # noqa: PLC0415
    from jittor_impl import build_loss, build_model, load_torch_state_dict  # noqa: PLC0415
    t_import = time.perf_counter() - t0
    jt.set_global_seed(args.get("seed", 0))
    t1 = time.perf_counter()
    model = build_model(args["model"], **MODEL_OPTIONS)
    if args.get("load_weights"):
        load_torch_state_dict(model, args["load_weights"])
    t_build = time.perf_counter() - t1
    loss_fn = build_loss(args["model"], img_size=args["img_size"], **LOSS_OPTIONS)
    image, targets = pair_batch(args["model"], args["img_size"], args.get("batch", 1), args.get("seed", 0))
    x = jt.array(image)
    params = [p for p in model.parameters() if not p.is_stop_grad()]

    def step() -> None:
        out = model(x)
        loss, _ = loss_fn(out[0], targets, 0, 0)
        grads = jt.grad(loss, params)
        jt.sync([loss, *grads])
        jt.sync_all()  # BN running-stat updates are lazy too; torch does them in the forward

    res = _timed_loop(step, args.get("warmup", 2), args.get("runs", 5))
    return {**res, "import_s": round(t_import, 3), "build_s": round(t_build, 3),
            "use_mkl": os.environ.get("use_mkl"), "cache_path": str(jt.flags.cache_path), **peak_memory_mb()}


def _pair_options(args: dict[str, Any]) -> dict[str, Any]:
    """GOLD-YOLO options (20 classes, the image size, batch 1) unless ``pair_options`` says otherwise."""
    if "pair_options" in args:
        return dict(args["pair_options"])
    return {"num_classes": NUM_CLASSES, "img_size": args["img_size"], "batch": args.get("batch", 1)}


def _states(args: dict[str, Any]) -> list[str] | None:
    """``"first"``: only the pair's first state (one forward + backward per framework); None: all of them."""
    states = args.get("states")
    if states != "first":
        return states
    from aligner.pairs import get_pair  # noqa: PLC0415 - imports no framework
    return list(get_pair(args["pair"], **_pair_options(args)).states[:1])


@contextmanager
def _hooked_step_timer(trim: bool = False) -> Iterator[dict[str, Any]]:
    """Seconds spent in ``Adapter.capture`` (hooked forward + loss + backward + fetch) per framework.

    Wraps the method in this worker process only, to split each capture into that step and the rest
    (framework import, model build, weight states).
    """
    from aligner.adapters.base import Adapter  # noqa: PLC0415
    spent: dict[str, Any] = {}
    original = Adapter.capture

    def timed(self: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        key = f"step_{self.framework}" + ("64" if kw.get("dtype") == "float64" else "")
        before = _rss_mb()
        try:
            return original(self, *a, **kw)
        finally:
            if trim:  # experiment: free cycles, hand freed heap (and Jittor's cached blocks) back to the OS
                gc.collect()
                if str(self.framework) == "jittor":
                    self.jt.gc()
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            spent[key] = round(spent.get(key, 0.0) + time.perf_counter() - t, 4)
            # resident memory around each capture: which side sets the peak, and what stays behind
            spent.setdefault("memory", []).append(  # type: ignore[union-attr]
                {"step": key, "rss_before_mb": before, "rss_after_mb": _rss_mb(),
                 "hwm_after_mb": peak_memory_mb().get("vmhwm_mb")})

    Adapter.capture = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        Adapter.capture = original  # type: ignore[method-assign]


def _run_align(args: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """What `aligner run` does (api.run_pair, then the report files), with each part timed.

    ``repeats`` > 1 runs it again in the same process: the later runs show the cost without imports,
    first-call framework set-up and kernel loading (what a test suite calling the API pays per run).
    """
    t0 = time.perf_counter()
    from aligner import api  # noqa: PLC0415
    from aligner.report import write_outputs  # noqa: PLC0415
    t_import = time.perf_counter() - t0
    runs = []
    for i in range(args.get("repeats", 1)):
        rss0 = _rss_mb()
        with _hooked_step_timer(args.get("trim", False)) as steps:
            t1 = time.perf_counter()
            result = api.run_pair(args["pair"], stats_only=args.get("stats_only", False),
                                  noise_floor=args.get("noise_floor", True), states=_states(args),
                                  seed=args.get("seed", 0), **_pair_options(args))
            t_pair = time.perf_counter() - t1
        t2 = time.perf_counter()
        results = result.to_dict()
        write_outputs(results, out_dir / str(i), lang="en")
        t_report = time.perf_counter() - t2
        timings = dict(results["run"].get("timings") or {})
        timings["report"] = round(t_report, 4)
        runs.append({"run_pair_s": round(t_pair, 3), "report_s": round(t_report, 3), "timings": timings,
                     "hooked_steps": steps, "vmhwm_after_mb": peak_memory_mb().get("vmhwm_mb"),
                     "rss_start_mb": rss0, "rss_end_mb": _rss_mb()})
        del result
    first, last = runs[0], runs[-1]
    return {"import_s": round(t_import, 3), "in_process_s": round(time.perf_counter() - t0, 3),
            **first, "repeat": last if len(runs) > 1 else None,
            "verdict": results.get("verdict"), "rows": len(results.get("layers") or []),
            "states": results["run"].get("states"), "counts": results.get("counts"),
            "run_dir_bytes": _du(out_dir / "0")}


def align(args: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-align-") as tmp:
        res = _run_align(args, Path(tmp))
    return {**res, **peak_memory_mb()}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def trace(args: dict[str, Any]) -> dict[str, Any]:
    """Write both frameworks' trace sets (full or stats-only) and measure them on disk."""
    from aligner.capture import capture_pair  # noqa: PLC0415
    opts = {"seed": args.get("seed", 0), **_pair_options(args)}
    full = not args.get("stats_only", False)
    states = _states(args)
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        t0 = time.perf_counter()
        pt = capture_pair(args["pair"], "torch", Path(tmp) / "pt", states=states, full=full, **opts)
        t1 = time.perf_counter()
        jt_ = capture_pair(args["pair"], "jittor", Path(tmp) / "jt", states=states, full=full,
                           weights_from=pt, **opts)
        t2 = time.perf_counter()
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()}
        weights = sum(v for k, v in files.items() if "weight" in k.split("/")[-1] or "/weights" in k)
        return {"torch_bytes": _du(pt), "jittor_bytes": _du(jt_), "weights_bytes": weights,
                "torch_s": round(t1 - t0, 3), "jittor_s": round(t2 - t1, 3), "files": len(files),
                **peak_memory_mb()}


def cold(args: dict[str, Any]) -> dict[str, Any]:
    """Jittor in a separate, empty cache (env cache_name, set by the caller): core build, kernel compile."""
    name = os.environ.get("cache_name", "")
    if not name.startswith("bench_cold_"):
        raise SystemExit("cold: refusing to run without cache_name=bench_cold_<id> (it must not touch the user's cache)")
    t0 = time.perf_counter()
    import jittor_impl.env  # noqa: F401, PLC0415 - before jittor
    import jittor as jt  # noqa: PLC0415
    t_core = time.perf_counter() - t0
    cache_path = str(jt.flags.cache_path)
    jit_dir = Path(cache_path) / "jit"
    before = len(list(jit_dir.glob("*.so"))) if jit_dir.exists() else 0
    res = bare_jittor({**args, "warmup": 1, "runs": args.get("runs", 2)})
    after = len(list(jit_dir.glob("*.so"))) if jit_dir.exists() else 0
    return {"core_import_s": round(t_core, 2), "first_step_s": res["first_s"], "steady_step_s": res["median_s"],
            "kernel_compile_s": round(res["first_s"] - res["median_s"], 2), "kernels_compiled": after - before,
            "cache_path": cache_path, "cache_name": name, "cache_bytes": _du(Path(cache_path)),
            **peak_memory_mb()}


def profile(args: dict[str, Any]) -> dict[str, Any]:
    """pyinstrument over the align path; returns the top entries by own time and by total time."""
    from pyinstrument import Profiler  # noqa: PLC0415 - optional: pip install pyinstrument
    prof = Profiler(interval=args.get("interval", 0.002))
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        prof.start()
        res = _run_align(args, Path(tmp))
        prof.stop()
    root = prof.last_session.root_frame()
    if args.get("text_out"):
        Path(args["text_out"]).write_text(prof.output_text(unicode=False, color=False, show_all=False))
    own, total = _aggregate(root)
    top = args.get("top", 15)
    return {"align": res, "wall_s": round(root.time, 3),
            "top_self": _ranked(own, top), "top_total": _ranked(total, top, skip_outer=True), **peak_memory_mb()}


def cpu_profile(args: dict[str, Any]) -> dict[str, Any]:
    """cProfile with a CPU-time clock over the align path: on a loaded machine wall-clock samplers
    charge the waiting to whatever runs; CPU seconds show the work itself."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415
    prof = cProfile.Profile(time.process_time)
    with tempfile.TemporaryDirectory(prefix="bench-cprof-") as tmp:
        prof.enable()
        res = _run_align(args, Path(tmp))
        prof.disable()
    st = pstats.Stats(prof)
    top = args.get("top", 15)
    rows = [(_short(f"{fn} ({path}:{line})"), tt, ct) for (path, line, fn), (_, _, tt, ct, _) in st.stats.items()]
    if args.get("text_out"):
        with open(args["text_out"], "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
    own = sorted(rows, key=lambda r: -r[1])[:top]
    total = [r for r in sorted(rows, key=lambda r: -r[2]) if not _outer(r[0])][:top]
    return {"align": res, "cpu_s": round(st.total_tt, 3), "top_self": [[k, round(t, 3)] for k, t, _ in own],
            "top_total": [[k, round(c, 3)] for k, _, c in total], **peak_memory_mb()}


# where a profiled file lives is cut down to the part after one of these (the checkout, whatever its path)
_PATH_MARKERS = ("site-packages/", str(Path(__file__).resolve().parents[1]) + "/", "python3.11/")


def _relative(path: str) -> str:
    """``path`` without the prefix up to the first marker it contains (unchanged when none)."""
    marker = next((m for m in _PATH_MARKERS if m in path), None)
    return path.split(marker, 1)[1] if marker else path


def _short(key: str) -> str:
    head, _, tail = key.partition("(")
    return head + "(" + _relative(tail) if tail else key


def _outer(key: str) -> bool:
    """Entry points above run_pair: they say nothing about where the time goes."""
    return any(s in key for s in ("_run_align", "profile (", "<module>", "main (", "_run_module", "_timed (",
                                  "<lambda>", "run_pair (", "exec", "cpu_profile (", "timed (benchmarks",
                                  "_bootstrap>", "__import__", "_handle_fromlist"))


def _frame_key(f: Any) -> str:
    return f"{f.function} ({_relative(f.file_path or '')}:{f.line_no})"


def _aggregate(root: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Own time per function, and total time per function counted once per stack (no recursion double count)."""
    own: dict[str, float] = {}
    total: dict[str, float] = {}

    def walk(f: Any, active: frozenset[str]) -> None:
        if f.is_synthetic:  # "[self]" leaves: already in the parent's total_self_time
            return
        key = _frame_key(f)
        own[key] = own.get(key, 0.0) + f.total_self_time
        if key not in active:
            total[key] = total.get(key, 0.0) + f.time
        for c in f.children:
            walk(c, active | {key})

    walk(root, frozenset())
    return own, total


def _ranked(d: dict[str, float], top: int, skip_outer: bool = False) -> list[list[Any]]:
    items = sorted(d.items(), key=lambda kv: -kv[1])
    if skip_outer:
        items = [kv for kv in items if not _outer(kv[0])]
    return [[k, round(v, 3)] for k, v in items[:top]]


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bare_torch": bare_torch, "bare_jittor": bare_jittor, "align": align, "trace": trace, "cold": cold,
    "profile": profile, "cpu_profile": cpu_profile}


def main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    t0 = time.perf_counter()
    out = KINDS[kind](args)
    out["worker_s"] = round(time.perf_counter() - t0, 3)
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
