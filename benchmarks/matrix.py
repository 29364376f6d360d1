"""The correct-port matrix: GOLD-YOLO through ``aligner.api.run_pair`` across sizes, precisions, batches,
optimizer steps and loss configurations; every cell should end with zero error findings.

    python -m benchmarks.matrix                       # every cell (hours on a small CPU)
    python -m benchmarks.matrix --only n-100          # the cells whose id starts with n-100 (merged into the table)
    python -m benchmarks.matrix --list                # the cell ids, in table order

Default mode of ``run_pair`` (noise floor on, both states ``init`` and ``perturbed``), seed 0, 20 classes.
Each cell runs in its own Python process (``python -m benchmarks.matrix cell ID``), so its peak resident
memory is its own and a crash or a timeout is one row of the table, not the end of the matrix. Results are
merged by cell id into ``benchmarks/results/matrix.json``; ``matrix.md`` is regenerated from it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click

from aligner.fsio import atomic_write
from benchmarks.zoo import _g, _judged, _judged_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SEED, NUM_CLASSES = 0, 20
DTYPE_TAG = {"float32": "f32", "float64": "f64"}


@dataclass(frozen=True)
class Cell:
    """One run of the matrix; ``overrides`` are GOLD-YOLO pair options on top of the size's official
    configuration (empty: official), ``tag`` names them in the id."""
    name: str
    size: str
    img: int
    dtype: str = "float32"
    batch: int = 2
    steps: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    tag: str = ""

    @property
    def id(self) -> str:
        base = f"{self.size}-{self.img}-{DTYPE_TAG[self.dtype]}-b{self.batch}-s{self.steps}"
        return f"{base}-{self.tag}" if self.tag else base


CELLS: tuple[Cell, ...] = (
    *(Cell("N official", "n", img, dt) for img in (100, 160, 320, 416, 500, 640) for dt in ("float32", "float64")),
    *(Cell("N official, optimizer steps", "n", img, steps=k) for img in (100, 320) for k in (1, 3)),
    *(Cell("N official, batch 1", "n", img, batch=1) for img in (320, 500)),
    *(Cell("N with DFL", "n", img, overrides={"use_dfl": True, "reg_max": 16}, tag="dfl") for img in (320, 500)),
    *(Cell(f"{s.upper()} official", s, img, dt) for s in ("s", "m", "l")
      for img, dt in ((160, "float32"), (416, "float32"), (160, "float64"))),
)
BY_ID = {c.id: c for c in CELLS}


def select(only: tuple[str, ...]) -> list[Cell]:
    """The cells whose id is one of ``only`` or starts with one of them, in the order of ``only`` (all cells,
    in table order, when empty)."""
    if not only:
        return list(CELLS)
    unknown = [o for o in only if not any(c.id.startswith(o) for c in CELLS)]
    if unknown:
        raise click.BadParameter(f"no cell id starts with: {', '.join(unknown)} (see --list)", param_hint="--only")
    # in the order asked for (the longest runs can go last), each cell once
    picked = [c for o in only for c in CELLS if c.id == o or c.id.startswith(o)]
    return [c for i, c in enumerate(picked) if c.id not in {p.id for p in picked[:i]}]


# ---------------------------------------------------------------------------------------------
# one cell, in its own process


def _rss_peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def run_cell(cell: Cell) -> dict[str, Any]:
    """Align the cell's pair in the default mode; the table row as a dict."""
    from aligner.api import run_pair  # noqa: PLC0415 - the parent process never loads a framework
    from aligner.pairs import get_pair  # noqa: PLC0415

    pair = get_pair(f"gold_yolo-{cell.size}", img_size=cell.img, batch=cell.batch, dtype=cell.dtype, seed=SEED,
                    num_classes=NUM_CLASSES, **cell.overrides)
    t0 = time.perf_counter()
    r = run_pair(pair, steps=cell.steps, cache=False)  # each configuration runs once: nothing to reuse
    secs = time.perf_counter() - t0
    errors = [f for f in r.findings if str(f.severity) == "error"]
    warnings = [f for f in r.findings if str(f.severity) == "warning"]
    judged = [_judged(f) for f in errors]
    # how the rows were judged (metric names such as rel_l2_fp64 or a noise-dominated status), over all states
    metrics = Counter(str(x.judgement.metric) for x in r.rows)
    statuses = Counter(str(s) for s in (getattr(x.judgement, "status", None) for x in r.rows) if s is not None)
    return {"status": "done", "verdict": r.verdict, "config": r.run.get("config") or {},
            "dtype": r.run.get("dtype"), "states": r.run.get("states"), "errors": len(errors),
            "warnings": len(warnings), "first_error": judged[0] if judged else None, "error_findings": judged[:20],
            "rows": len(r.rows), "rows_not_ok": sum(1 for x in r.rows if not x.ok),
            "judged_metrics": dict(metrics.most_common()), "judged_status": dict(statuses.most_common()),
            "seconds": round(secs, 1), "peak_rss_mb": _rss_peak_mb(), "timings": r.run.get("timings")}


def run_in_subprocess(cell: Cell, timeout: float) -> dict[str, Any]:
    """``run_cell`` in a fresh Python; a crash or a timeout comes back as a row with that status."""
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="matrix-") as tmp:
        out = Path(tmp) / "cell.json"
        t0 = time.perf_counter()
        # own session: on a timeout the whole group goes (Jittor's compiler children included)
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.matrix", "cell", cell.id, "--json-out", str(out)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
            status = "done" if proc.returncode == 0 and out.exists() else "crashed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            status = "timeout"
        wall = round(time.perf_counter() - t0, 1)
        row: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if status == "done" else {
            "status": status, "verdict": status, "rc": proc.returncode, "errors": None, "warnings": None,
            "first_error": None, "error": _tail(log or "")}
    return {"id": cell.id, "name": cell.name, "cell": asdict(cell), **row, "wall_s": wall,
            "timeout_s": timeout, "load_before": load,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _tail(log: str, n: int = 1200) -> str:
    lines = [ln for ln in log.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-15:])[-n:]


# ---------------------------------------------------------------------------------------------
# the matrix


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS and framework versions (nothing that names this machine's folders)."""
    cpu, mem_kb = "", 0
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
        mem_kb = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                       if ln.startswith("MemTotal:")), 0)
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "jittor", "numpy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions}


@click.group(invoke_without_command=True)
@click.option("--only", multiple=True, help="cell id or id prefix, e.g. n-100 (repeatable); merged into the table")
@click.option("--list", "list_", is_flag=True, help="print the cell ids and exit")
@click.option("--timeout", default=1800.0, show_default=True, help="seconds per cell before it is killed")
@click.option("--out", "out_dir", default=str(RESULTS_DIR), show_default=True, type=click.Path(file_okay=False))
@click.pass_context
def main(ctx: click.Context, only: tuple[str, ...], list_: bool, timeout: float, out_dir: str) -> None:
    if ctx.invoked_subcommand is not None:
        return
    cells = select(only)
    if list_:
        for c in cells:
            click.echo(f"{c.id:22s} {c.name}")
        return
    out = Path(out_dir)
    jpath = out / "matrix.json"
    doc = json.loads(jpath.read_text(encoding="utf-8")) if jpath.exists() else {}
    rows = {r["id"]: r for r in doc.get("cells", []) if r.get("id") in BY_ID}
    command = "python -m benchmarks.matrix" + "".join(f" {a}" for a in sys.argv[1:])
    for i, cell in enumerate(cells, 1):
        row = run_in_subprocess(cell, timeout)
        rows[cell.id] = row
        fe = row.get("first_error")
        what = f"{fe['type']} @ {fe['location']}" if fe else "-"
        print(f"[{i}/{len(cells)}] {cell.id:22s} {row['verdict']:7s} errors={_g(row['errors'])} "
              f"warnings={_g(row['warnings'])} first={what}  {row['wall_s']:.1f}s "
              f"peak={_mb(row.get('peak_rss_mb'))} MiB", flush=True)
        write(out, rows, command)


@main.command("cell", hidden=True)
@click.argument("cell_id")
@click.option("--json-out", required=True, type=click.Path(dir_okay=False))
def cell_command(cell_id: str, json_out: str) -> None:
    """Run one cell in this process and write its row (the matrix runs this in a subprocess)."""
    if cell_id not in BY_ID:
        raise click.BadParameter(f"unknown cell {cell_id!r} (see --list)", param_hint="CELL_ID")
    atomic_write(json_out, json.dumps(run_cell(BY_ID[cell_id]), indent=1, default=str) + "\n")


def write(out: Path, rows: dict[str, dict[str, Any]], command: str) -> None:
    """matrix.json (rows in cell order) and matrix.md from it, each written atomically."""
    rank = {c.id: i for i, c in enumerate(CELLS)}
    doc = {"format": 1, "seed": SEED, "num_classes": NUM_CLASSES,
           "mode": "aligner.api.run_pair default (noise floor on, states init and perturbed)",
           "command": command, "date": _dt.date.today().isoformat(), "machine": machine(),
           "cells": sorted(rows.values(), key=lambda r: rank[r["id"]])}
    atomic_write(out / "matrix.json", json.dumps(doc, indent=1, default=str) + "\n")
    atomic_write(out / "matrix.md", render(doc))


# ---------------------------------------------------------------------------------------------
# matrix.json -> matrix.md


def _config_text(cfg: dict[str, Any]) -> str:
    if not cfg:
        return "–"
    dfl = f"DFL {cfg.get('reg_max')}" if cfg.get("use_dfl") else "no DFL"
    official = " (official)" if cfg.get("official") else (" (override)" if "official" in cfg else "")
    return f"{dfl}, {cfg.get('iou_type', '?')}{official}"


def _mb(x: Any) -> str:
    return "–" if x is None else f"{x:.0f}"


def _counts_text(c: dict[str, Any]) -> str:
    """Rows per judgement status (when the rows carry one), then per judged metric."""
    parts = [", ".join(f"{k} {v}" for k, v in (c.get(key) or {}).items()) for key in ("judged_status", "judged_metrics")]
    return "; ".join(p for p in parts if p) or "–"


def render(doc: dict[str, Any]) -> str:
    cells = doc["cells"]
    m = doc["machine"]
    flagged = sum(1 for c in cells if c.get("errors"))
    failed = [c for c in cells if c["status"] != "done"]
    missing = [c.id for c in CELLS if c.id not in {r["id"] for r in cells}]
    lines = ["# Correct-port matrix: GOLD-YOLO through `aligner.api.run_pair`", "",
             f"`{doc['command']}` (last run; {doc['date']}). {doc['mode']}; seed {doc['seed']}, "
             f"{doc['num_classes']} classes; each cell in its own process.", "",
             f"Machine: {m['cpu'] or 'unknown CPU'}, {m['cores']} cores, {m['memory_gb']} GiB; {m['platform']}; "
             f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".", "",
             f"**{flagged} of {len(cells)} cells with error findings.**"
             + (f" {len(failed)} crashed or timed out." if failed else "")
             + (f" Not run yet: {len(missing)} of {len(CELLS)} ({', '.join(missing)})." if missing else ""), "",
             "`judged` counts the rows (every state, every step) by the metric or status the verdict used; "
             "`time` is the whole cell process (imports, builds, every capture), `peak` its maximum resident "
             "memory.", "",
             "| cell | configuration | verdict | errors | warnings | first error | judged (metric value > bound) "
             "| judged rows | time (s) | peak MiB |", "|" + "---|" * 10]
    for c in cells:
        if c["status"] != "done":
            why = (f"killed after {c['timeout_s']:.0f} s" if c["status"] == "timeout"
                   else ((c.get("error") or "").splitlines() or ["(no output)"])[-1][:160].replace("|", "/"))
            lines.append(f"| `{c['id']}` | {c['name']} | **{c['status']}** (rc {c.get('rc')}) | – | – | "
                         f"{why} | – | – | {c['wall_s']:.1f} | – |")
            continue
        first, judged = _judged_text(c["first_error"])
        cfg = c.get("config") or {}
        lines.append(f"| `{c['id']}` | {_config_text(cfg)}, batch {cfg.get('batch', '?')}, {c.get('dtype')} | "
                     f"{c['verdict']} | {c['errors']} | {c['warnings']} | {first} | {judged} | "
                     f"{_counts_text(c)} | "
                     f"{c['wall_s']:.1f} | {_mb(c.get('peak_rss_mb'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
