"""Benchmark: bare PyTorch / Jittor training steps versus `aligner run`, time and memory, one machine, one run.

    python -m benchmarks.run                    # GOLD-YOLO N and S at 320/500/640, cold start
    python -m benchmarks.run --quick            # N at 320 and 640, fewer repeats, no cold start
    python -m benchmarks.run --profile after    # also profile the align path (text reports in --profile-dir)

Every measurement runs in its own subprocess (``benchmarks.workers``), so each peak resident memory
(ru_maxrss / VmHWM) belongs to that measurement alone. The 1-minute load average is recorded with
each one: on a shared machine a busy neighbour shows up there. Results go to
``benchmarks/results/bench.json`` and ``bench.md`` (see :mod:`benchmarks.markdown`).
"""
from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click

from benchmarks.markdown import render
from benchmarks.workers import RESULT_PREFIX

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"  # ignored by git: regenerated on request, never committed


@dataclass(frozen=True)
class Options:
    """What one benchmark run measures (see the command-line options of :func:`main`)."""
    quick: bool = False
    models: tuple[str, ...] = ("n", "s")
    sizes: tuple[int, ...] = (320, 500, 640)
    runs: int = 5
    warmup: int = 2
    align_runs: int = 1
    repeats: int = 2
    cold: bool = True
    no_trace: bool = False
    no_interleaved: bool = False
    profile: str = "none"
    profile_size: int = 640
    profilers: tuple[str, ...] = ("wall", "cpu")
    profile_dir: Path = PROFILE_DIR
    max_load: float | None = None
    max_wait: float = 300
    threads: int | None = None
    out: Path = RESULTS_DIR
    default_run: Callable[[str, int], bool] = field(default=lambda model, size: False)
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
    for pkg in ("torch", "jittor", "numpy", "aligner", "pyinstrument"):
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


def bench_size(model: str, size: int, opts: Options, tmp: Path) -> dict[str, Any]:
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


def cold_start(opts: Options, tmp: Path, default_cache: str | None) -> dict[str, Any]:
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


def profile(opts: Options, label: str) -> dict[str, Any]:
    """The align path of N at --profile-size, one state, full and stats-only: pyinstrument (wall clock)
    and cProfile on a CPU-time clock (robust to a busy neighbour); text reports in ``opts.profile_dir``."""
    out: dict[str, Any] = {}
    kinds = {"wall": "profile", "cpu": "cpu_profile"}
    for clock in opts.profilers:
        if clock == "wall" and importlib.util.find_spec("pyinstrument") is None:
            log("pyinstrument is not installed (.venv/bin/pip install pyinstrument): wall-clock profile skipped")
            out["wall_skipped"] = "pyinstrument not installed"
            continue
        for mode, stats_only in (("full", False), ("stats", True)):
            opts.profile_dir.mkdir(parents=True, exist_ok=True)
            text = opts.profile_dir / f"profile_{label}_{clock}_{mode}.txt"
            log(f"profiling align {mode} (N {opts.profile_size}, {clock} clock) -> {text.name}")
            out[f"{clock}_{mode}"] = measure(kinds[clock], {
                "pair": "gold_yolo-n", "img_size": opts.profile_size, "states": "first", "noise_floor": False,
                "stats_only": stats_only, "text_out": str(text)})
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n")[0])
@click.option("--quick", is_flag=True, help="N at 320 and 640 only, 3 repeats, no cold start")
@click.option("--models", default=None, help="comma list of n,s (default n,s; quick: n)")
@click.option("--sizes", default=None, help="comma list (default 320,500,640; quick: 320,640)")
@click.option("--runs", type=int, default=None, help="timed bare steps (default 5; quick 3)")
@click.option("--warmup", type=int, default=2, show_default=True, help="untimed bare steps first")
@click.option("--align-runs", type=int, default=1, show_default=True,
              help="timed align processes per mode (median taken)")
@click.option("--repeats", type=int, default=2, show_default=True,
              help="align runs inside each align process (the 2nd+ show the warm, in-process cost)")
@click.option("--cold/--no-cold", default=None, help="measure the cold start (default: yes unless --quick)")
@click.option("--no-trace", is_flag=True, help="skip the trace-size measurement")
@click.option("--no-interleaved", is_flag=True, help="skip benchmarks/bare_step.py")
@click.option("--profile", "profile_label", type=click.Choice(["none", "before", "after"]), default="none",
              show_default=True, help="profile the align path under this label (none: skip)")
@click.option("--profile-size", type=int, default=640, show_default=True)
@click.option("--profilers", default="wall,cpu", show_default=True,
              help="comma list: wall (pyinstrument), cpu (cProfile)")
@click.option("--profile-dir", type=click.Path(file_okay=False, path_type=Path), default=PROFILE_DIR,
              help="folder of the profiler text reports (default benchmarks/profiles, ignored by git)")
@click.option("--max-load", type=float, default=None,
              help="before each measurement wait until the 1-min load average is at most this")
@click.option("--max-wait", type=float, default=300, show_default=True, help="longest such wait, seconds")
@click.option("--threads", type=int, default=None,
              help="OMP_NUM_THREADS for every worker (default: unset, each framework's own default)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              help="folder of bench.json and bench.md (default benchmarks/results)")
def main(quick: bool, models: str | None, sizes: str | None, runs: int | None, warmup: int, align_runs: int,
         repeats: int, cold: bool | None, no_trace: bool, no_interleaved: bool, profile_label: str,
         profile_size: int, profilers: str, profile_dir: Path, max_load: float | None, max_wait: float,
         threads: int | None, out: Path) -> None:
    size_list = tuple(int(x) for x in (sizes or ("320,640" if quick else "320,500,640")).split(","))
    top = max(size_list)
    opts = Options(
        quick=quick, models=tuple((models or ("n" if quick else "n,s")).split(",")), sizes=size_list,
        runs=runs or (3 if quick else 5), warmup=warmup, align_runs=align_runs, repeats=repeats,
        cold=(not quick) if cold is None else cold, no_trace=no_trace, no_interleaved=no_interleaved,
        profile=profile_label, profile_size=profile_size, profilers=tuple(p for p in profilers.split(",") if p),
        profile_dir=profile_dir, max_load=max_load, max_wait=max_wait, threads=threads, out=out,
        # the CLI-default run (2 states + float64 reference) costs several passes: N at the largest size only
        default_run=lambda model, size: model == "n" and size == top)
    run_benchmark(opts)


def run_benchmark(opts: Options) -> dict[str, Any]:
    """Every measurement of ``opts``; writes bench.json and bench.md under ``opts.out`` and returns the document."""
    opts.out.mkdir(parents=True, exist_ok=True)
    if opts.threads:  # inherited by every worker; both frameworks' OpenMP pools read it
        os.environ["OMP_NUM_THREADS"] = str(opts.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    doc: dict[str, Any] = {"schema": 1, "created": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
                           "options": {"quick": opts.quick, "models": list(opts.models), "sizes": list(opts.sizes),
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
    return doc


def _write(doc: dict[str, Any], rows: list[dict[str, Any]], opts: Options, partial: bool) -> None:
    doc = {**doc, "rows": rows, "partial": partial}
    # the committed tables name no machine's home folder (the Jittor cache path lies under it)
    home = str(Path.home()) + "/"
    (opts.out / "bench.json").write_text(json.dumps(doc, indent=1).replace(home, "~/") + "\n")
    (opts.out / "bench.md").write_text(render(doc).replace(home, "~/"))


if __name__ == "__main__":
    main()
