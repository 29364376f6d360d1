"""Benchmark: bare PyTorch / Jittor training steps versus `aligner run`, time and memory, one machine, one run.

    python -m benchmarks.run            # GOLD-YOLO N and S at 320/500/640, cold start, profile
    python -m benchmarks.run --quick    # N at 320 and 640, fewer repeats, no cold start

Every measurement runs in its own subprocess (``benchmarks.workers``), so each peak resident memory
(ru_maxrss / VmHWM) belongs to that measurement alone. The 1-minute load average is recorded with
each one: on a shared machine a busy neighbour shows up there. Results go to
``benchmarks/results/bench.json`` and ``bench.md`` (see :mod:`benchmarks.markdown`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.markdown import render
from benchmarks.workers import RESULT_PREFIX

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
JITTOR_CACHE_ROOT = Path.home() / ".cache" / "jittor"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS, package versions, oneDNN, load average."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem_kb = 0
    versions = {}
    for pkg in ("torch", "jittor", "numpy", "pandas", "aligner", "pyinstrument"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    import aligner.env as env  # noqa: PLC0415 - sets use_mkl etc. for the workers (no jittor import)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "onednn": env.onednn_linked(), "use_mkl": os.environ.get("use_mkl"),
            "jittor_cache_name": os.environ.get("cache_name", "(jittor default: git branch of its install dir)")}


def wait_for_quiet(max_load: float | None, max_wait: float) -> None:
    """Sleep (up to max_wait s) until the 1-minute load average is at most max_load."""
    if max_load is None:
        return
    deadline = time.time() + max_wait
    while os.getloadavg()[0] > max_load and time.time() < deadline:
        time.sleep(10)


def measure(kind: str, args: dict[str, Any], *, env: dict[str, str] | None = None, timeout: float = 3600,
            quiet: tuple[float | None, float] = (None, 0)) -> dict[str, Any]:
    """Run one worker in a fresh process; its result plus wall time and the load before/after."""
    wait_for_quiet(*quiet)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.workers", kind, json.dumps(args)], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                          check=False)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    out: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):]) if lines and proc.returncode == 0 else {}
    if not out:
        out["error"] = f"rc={proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"
        log(f"{kind} failed: {out['error'][-400:]}")
    out.update(wall_s=round(wall, 3), load_before=round(load0[0], 2), load_after=round(load1[0], 2))
    return out


def bench_size(model: str, size: int, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Bare steps, align runs (full / stats-only, then the CLI default), trace sizes for one model and size."""
    q = (opts.max_load, opts.max_wait)
    pair = f"gold_yolo-{model}"
    weights = tmp / f"{model}.npz"
    row: dict[str, Any] = {"model": model.upper(), "img_size": size}
    base = {"model": pair, "img_size": size, "runs": opts.runs, "warmup": opts.warmup}
    log(f"{pair} {size}: bare torch")
    row["bare_torch"] = measure("bare_torch", {**base, "save_weights": str(weights)}, quiet=q)
    log(f"{pair} {size}: bare jittor")
    row["bare_jittor"] = measure("bare_jittor", {**base, "load_weights": str(weights)}, quiet=q)
    one = {"pair": pair, "img_size": size, "states": "first", "noise_floor": False}
    log(f"{pair} {size}: align warm-up (fills the kernel cache for the hooked graph)")
    row["align_warmup"] = measure("align", {**one, "stats_only": True}, quiet=q)
    for mode, stats_only in (("full", False), ("stats", True)):
        runs = []
        for _ in range(opts.align_runs):
            log(f"{pair} {size}: align {mode} (one state, no noise floor)")
            runs.append(measure("align", {**one, "stats_only": stats_only, "repeats": opts.repeats}, quiet=q))
        row[f"align_{mode}"] = _median_run(runs)
    if opts.default_run(model, size):
        log(f"{pair} {size}: align with the CLI defaults (all states, float64 noise floor)")
        row["align_default"] = measure("align", {"pair": pair, "img_size": size, "noise_floor": True}, quiet=q)
    if not opts.no_trace:
        for mode, stats_only in (("full", False), ("stats", True)):
            log(f"{pair} {size}: trace sets on disk ({mode})")
            row[f"trace_{mode}"] = measure("trace", {"pair": pair, "img_size": size, "states": "first",
                                                     "stats_only": stats_only}, quiet=q)
    return row


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r["in_process_s"])
    best = dict(ok[len(ok) // 2])
    best["processes"] = [r["in_process_s"] for r in ok]
    return best


def interleaved(size: int) -> dict[str, Any]:
    """benchmarks/bare_step.py (model-only loss, both frameworks in one process, steps interleaved so that
    both see the same background load): its wall and CPU medians and ratios."""
    script = Path(__file__).resolve().parent / "bare_step.py"
    if not script.exists():
        return {"error": "benchmarks/bare_step.py not found"}
    load0 = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, str(script), "--size", str(size), "--repeats", "5"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=3600)
    out: dict[str, Any] = {"size": size, "load_before": round(load0, 2), "output": proc.stdout.strip()[-800:]}
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(wall|cpu)\s+torch\s+([\d.]+) s\s+jittor\s+([\d.]+) s\s+ratio jittor/torch ([\d.]+)", line)
        if m:
            out[m.group(1)] = {"torch_s": float(m.group(2)), "jittor_s": float(m.group(3)), "ratio": float(m.group(4))}
    if proc.returncode != 0 or "wall" not in out:
        out["error"] = f"rc={proc.returncode}: {proc.stderr[-600:]}"
    return out


def cold_start(opts: argparse.Namespace, tmp: Path, default_cache: str | None) -> dict[str, Any]:
    """Jittor with an empty cache (cache_name=bench_cold_<pid>, a sibling of the user's cache), then delete it."""
    name = f"bench_cold_{os.getpid()}"
    weights = tmp / "n.npz"
    if not weights.exists():
        measure("bare_torch", {"model": "gold_yolo-n", "img_size": 500, "runs": 1, "warmup": 0,
                               "save_weights": str(weights)})
    config = JITTOR_CACHE_ROOT / "config.json"
    config_before = config.read_bytes() if config.exists() else None
    log(f"cold start in a separate cache ({name}): core build + kernel compile, minutes")
    res = measure("cold", {"model": "gold_yolo-n", "img_size": 500, "runs": 2, "load_weights": str(weights)},
                  env={"cache_name": name}, timeout=3600)
    if "error" in res and "please rerun" in res["error"]:  # jittor exits 0 after rebuilding jit_utils
        res = {**measure("cold", {"model": "gold_yolo-n", "img_size": 500, "runs": 2,
                                  "load_weights": str(weights)}, env={"cache_name": name}), "rerun": True}
    candidates = {Path(res["cache_path"])} if res.get("cache_path") else set()
    if default_cache:
        candidates.add(Path(default_cache).parent / name)
    for path in candidates:  # only ever the separate cache: its last part is our own bench_cold_<pid>
        if path.name == name and JITTOR_CACHE_ROOT in path.parents and path.exists():
            shutil.rmtree(path)
            res["deleted"] = str(path)
    config_after = config.read_bytes() if config.exists() else None
    res["config_json_unchanged"] = config_before == config_after
    return res


def profile(opts: argparse.Namespace, label: str) -> dict[str, Any]:
    """The align path of N at --profile-size, one state, full and stats-only: pyinstrument (wall clock)
    and cProfile on a CPU-time clock (robust to a busy neighbour); text reports beside bench.md."""
    out: dict[str, Any] = {}
    kinds = {"wall": "profile", "cpu": "cpu_profile"}
    for clock in opts.profilers:
        if clock == "wall" and importlib.util.find_spec("pyinstrument") is None:
            log("pyinstrument is not installed (.venv/bin/pip install pyinstrument): wall-clock profile skipped")
            out["wall_skipped"] = "pyinstrument not installed"
            continue
        for mode, stats_only in (("full", False), ("stats", True)):
            text = opts.out / f"profile_{label}_{clock}_{mode}.txt"
            log(f"profiling align {mode} (N {opts.profile_size}, {clock} clock) -> {text.name}")
            out[f"{clock}_{mode}"] = measure(kinds[clock], {
                "pair": "gold_yolo-n", "img_size": opts.profile_size, "states": "first", "noise_floor": False,
                "stats_only": stats_only, "text_out": str(text)})
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N at 320 and 640 only, 3 repeats, no cold start")
    ap.add_argument("--models", default=None, help="comma list of n,s (default n,s; quick: n)")
    ap.add_argument("--sizes", default=None, help="comma list (default 320,500,640; quick: 320,640)")
    ap.add_argument("--runs", type=int, default=None, help="timed bare steps (default 5; quick 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed bare steps first (default 2)")
    ap.add_argument("--align-runs", type=int, default=1, help="timed align processes per mode (median taken)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="align runs inside each align process (the 2nd+ show the warm, in-process cost)")
    ap.add_argument("--cold", dest="cold", action="store_true", default=None, help="measure the cold start")
    ap.add_argument("--no-cold", dest="cold", action="store_false")
    ap.add_argument("--no-trace", action="store_true", help="skip the trace-size measurement")
    ap.add_argument("--no-interleaved", action="store_true", help="skip benchmarks/bare_step.py")
    ap.add_argument("--profile", choices=("none", "before", "after"), default="before",
                    help="pyinstrument profile label (none: skip)")
    ap.add_argument("--profile-size", type=int, default=640)
    ap.add_argument("--profilers", default="wall,cpu", help="comma list: wall (pyinstrument), cpu (cProfile)")
    ap.add_argument("--max-load", type=float, default=None,
                    help="before each measurement wait until the 1-min load average is at most this")
    ap.add_argument("--max-wait", type=float, default=300, help="longest such wait, seconds")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every worker (default: unset, each framework's own default)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    opts = ap.parse_args(argv)
    opts.models = (opts.models or ("n" if opts.quick else "n,s")).split(",")
    opts.sizes = [int(s) for s in (opts.sizes or ("320,640" if opts.quick else "320,500,640")).split(",")]
    opts.runs = opts.runs or (3 if opts.quick else 5)
    opts.cold = (not opts.quick) if opts.cold is None else opts.cold
    opts.profilers = [p for p in opts.profilers.split(",") if p]
    top = max(opts.sizes)
    # the CLI-default run (2 states + float64 reference) costs several passes: N at the largest size only
    opts.default_run = lambda model, size: model == "n" and size == top
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    if opts.threads:  # inherited by every worker; both frameworks' OpenMP pools read it
        os.environ["OMP_NUM_THREADS"] = str(opts.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    doc: dict[str, Any] = {"schema": 1, "created": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
                           "options": {"quick": opts.quick, "models": opts.models, "sizes": opts.sizes,
                                       "runs": opts.runs, "warmup": opts.warmup, "align_runs": opts.align_runs,
                                       "repeats": opts.repeats,
                                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                       "batch": 1},
                           "load_start": [round(x, 2) for x in os.getloadavg()]}
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for model in opts.models:
            for size in opts.sizes:
                rows.append(bench_size(model, size, opts, Path(tmp)))
                _write(doc, rows, opts, partial=True)
        doc["rows"] = rows
        if not opts.no_interleaved:
            log(f"benchmarks/bare_step.py --size {max(opts.sizes)} (interleaved, model-only loss)")
            doc["interleaved"] = interleaved(max(opts.sizes))
        if opts.cold:
            cache = next((r["bare_jittor"].get("cache_path") for r in rows if r["bare_jittor"].get("cache_path")), None)
            doc["cold"] = cold_start(opts, Path(tmp), cache)
    if opts.profile != "none":
        doc["profile"] = {"label": opts.profile, "size": opts.profile_size, **profile(opts, opts.profile)}
    doc["load_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    _write(doc, rows, opts, partial=False)
    log(f"wrote {opts.out / 'bench.md'} and bench.json in {doc['total_s']} s")
    return 0


def _write(doc: dict[str, Any], rows: list[dict[str, Any]], opts: argparse.Namespace, partial: bool) -> None:
    doc = {**doc, "rows": rows, "partial": partial}
    (opts.out / "bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    (opts.out / "bench.md").write_text(render(doc))


if __name__ == "__main__":
    sys.exit(main())
