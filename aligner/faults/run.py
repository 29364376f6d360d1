"""Run the fault catalogue through the aligner and measure detection and false alarms.

``aligner faults [--subset fast|all] [--img-size N] [--out DIR]`` (also ``python -m aligner.faults.run``)
plants every catalogued fault in the correct Jittor port in turn, runs the GOLD-YOLO pair through
:func:`aligner.api.run`, and scores the findings: *detected* when an error finding of the expected type
(or an accepted alternative) is reported, *localised* when the FIRST error finding has such a type at the
expected location. It also runs the unmodified port at 320, 500 and 640 in float32 and float64 and counts
the error findings there (false alarms). Writes ``faults.md`` and ``faults.json`` (default
``benchmarks/results/``).

The torch side does not depend on the planted fault, so each configuration's reference is built and
captured once (:class:`References`) and passed to every run of that configuration (``cache=False``
recaptures it for every run, as a plain ``run_pair`` does).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aligner.errors import UsageError
from aligner.fsio import atomic_write
from aligner.pairs import Pair, get_pair
from aligner.reference import Reference
from aligner.runconfig import RunConfig

from .catalogue import FAST_SUBSET, Fault, catalogue

__all__ = ["FaultOutcome", "CleanOutcome", "References", "run_fault", "run_clean", "run_catalogue", "run_faults",
           "select", "write_tables", "DEFAULT_OUT", "PAIR", "PAIR_OPTIONS"]

PAIR = "gold_yolo-n"
NUM_CLASSES = 20
# The catalogue runs N with DFL (the golden data's configuration, not the shipped one): several faults
# (proj_trainable, reg_max_from_config, ...) live on the DFL path; a fault's own options override this.
PAIR_OPTIONS: dict[str, Any] = {"use_dfl": True}
DEFAULT_OUT = Path("benchmarks/results")
CLEAN_SIZES = (320, 500, 640)
CLEAN_DTYPES = ("float32", "float64")


@dataclass
class FaultOutcome:
    """One fault's row of the table."""
    name: str
    category: str
    expected_type: str
    expected_location: str
    description: str
    description_zh: str
    img_size: int
    steps: int
    applied: bool = False                 # the planted code actually ran
    crashed: str | None = None            # exception text when the run itself failed
    first: dict[str, Any] | None = None   # first error finding: type, location, state, message
    detected: bool = False
    localised: bool = False
    rank: int | None = None               # 1-based rank of the first accepted error finding
    n_errors: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # every error finding, in report order (brief)
    seconds: float = 0.0
    note: str = ""


@dataclass
class CleanOutcome:
    """The unmodified port at one size and dtype: every error finding is a false alarm."""
    img_size: int
    dtype: str
    steps: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    verdict: str = "error"
    n_errors: int = 0
    n_warnings: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    crashed: str | None = None
    seconds: float = 0.0


def _odd(size: int) -> int:
    """An input size that is not a multiple of 32 (non-divisible pools, strides != size // feature)."""
    return size if size % 32 else size - 20


def _brief(f: Any) -> dict[str, Any]:
    return {"type": str(f.type), "location": f.location, "state": f.state, "message": f.message}


def _key(f: Any) -> tuple[str, str, str | None]:
    return (str(f["type"]), f["location"], f["state"]) if isinstance(f, dict) else (str(f.type), f.location, f.state)


def score(fault: Fault, findings: Sequence[Any], baseline: Sequence[dict[str, Any]] = ()
          ) -> tuple[bool, bool, int | None, dict[str, Any] | None, int]:
    """(detected, localised, rank, first error finding, error count) of one run's findings.

    *detected*: an error finding of an accepted type that the unmodified port does not also produce
    (``baseline``: its error findings at the same size, matched by type, location and state).
    *localised*: the FIRST error finding has an accepted type at an accepted location.
    *rank*: 1-based position of the first error finding with accepted type and location.
    """
    errors = [f for f in findings if str(f.severity) == "error"]
    first = _brief(errors[0]) if errors else None
    known = {_key(b) for b in baseline}
    detected = any(str(f.type) in {t.value for t in fault.types} and _key(f) not in known for f in errors)
    rank = next((i + 1 for i, f in enumerate(errors) if fault.accepts(str(f.type), f.location)), None)
    return detected, rank == 1, rank, first, len(errors)


# ---------------------------------------------------------------------------------------------
# the torch side once per configuration


class References:
    """The torch reference of each configuration (pair options and run options), built and captured
    once and handed to every run of that configuration; with ``enabled=False`` every run gets a fresh one.
    ``captures()`` tells how many torch captures each configuration took."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._current: dict[tuple[Any, ...], Reference] = {}
        self._replaced: dict[tuple[Any, ...], tuple[int, int]] = {}  # (references, captures) no longer held

    def get(self, pair: Pair, config: RunConfig) -> Reference:
        key = (pair, config.capture_key())
        old = self._current.get(key)
        if old is not None and self.enabled:
            return old
        if old is not None:  # a fresh reference per run: only the count of the previous one is kept
            n, c = self._replaced.get(key, (0, 0))
            self._replaced[key] = (n + 1, c + old.captures)
        self._current[key] = ref = Reference(pair, config, keep=self.enabled)
        return ref

    def captures(self) -> list[dict[str, Any]]:
        """One row per configuration: its pair options, run options, references made and torch captures."""
        rows = []
        for (pair, key), ref in self._current.items():
            n, c = self._replaced.get((pair, key), (0, 0))
            rows.append({"pair": pair.label, "config": {**pair.config(), "dtype": pair.dtype, "seed": pair.seed},
                         "steps": key[3], "references": n + 1, "torch_captures": c + ref.captures})
        return rows


# ---------------------------------------------------------------------------------------------
# runs


def _run_pair(img_size: int, dtype: str, steps: int, options: dict[str, Any], seed: int,
              references: References | None) -> Any:
    from aligner.api import run  # noqa: PLC0415 - lazy: the frameworks load here

    pair = get_pair(PAIR, num_classes=NUM_CLASSES, img_size=img_size, dtype=dtype, seed=seed,
                    **{**PAIR_OPTIONS, **options})
    # the catalogue scores the end-to-end localisation (its first findings); module isolation, which would
    # add its own finding at each planted module, is measured on the port zoo (tests/test_port_*.py)
    config = RunConfig(steps=steps, isolate=False)
    return run(pair, config, reference=references.get(pair, config) if references is not None else None)


def fault_size(fault: Fault, img_size: int) -> int:
    """The input size ``fault`` runs at (a non-multiple of 32 when it needs one)."""
    return _odd(img_size) if fault.odd_size else img_size


def run_fault(fault: Fault, *, img_size: int, dtype: str = "float32", seed: int = 0,
              baseline: Sequence[dict[str, Any]] = (), references: References | None = None) -> FaultOutcome:
    """Plant ``fault``, run the pair, score the findings (``baseline``: the clean port's error findings;
    ``references``: the torch sides to reuse, by default captured for this run)."""
    size = fault_size(fault, img_size)
    out = FaultOutcome(fault.name, fault.category, fault.expected_type.value, fault.expected_location,
                       fault.description, fault.description_zh, size, fault.steps, note=fault.note)
    t0 = time.perf_counter()
    try:
        with fault.planted() as probe:
            result = _run_pair(size, dtype, fault.steps, dict(fault.options), seed, references)
        out.applied = probe.hits > 0
        out.detected, out.localised, out.rank, out.first, out.n_errors = score(fault, result.findings, baseline)
        out.errors = [_brief(f) for f in result.findings if str(f.severity) == "error"]
    except Exception as exc:  # noqa: BLE001 - a crash is a row of the table, not the end of the benchmark
        out.crashed = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        out.note = (out.note + " " if out.note else "") + "the run crashed"
        traceback.print_exc(file=sys.stderr)
    out.seconds = round(time.perf_counter() - t0, 1)
    if not out.applied and out.crashed is None:
        out.note = (out.note + " " if out.note else "") + "fault code never ran (not exercised by this run)"
    return out


def run_clean(img_size: int, dtype: str, *, seed: int = 0, steps: int = 0, options: dict[str, Any] | None = None,
              references: References | None = None) -> CleanOutcome:
    """The unmodified port: every error finding is a false alarm."""
    out = CleanOutcome(img_size, dtype, steps=steps, options=dict(options or {}))
    t0 = time.perf_counter()
    try:
        result = _run_pair(img_size, dtype, steps, dict(options or {}), seed, references)
        out.verdict = str(result.verdict)
        errs = [f for f in result.findings if str(f.severity) == "error"]
        out.n_errors, out.errors = len(errs), [_brief(f) for f in errs]
        out.n_warnings = sum(1 for f in result.findings if str(f.severity) == "warning")
    except Exception as exc:  # noqa: BLE001
        out.crashed = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        traceback.print_exc(file=sys.stderr)
    out.seconds = round(time.perf_counter() - t0, 1)
    return out


def run_catalogue(faults: Sequence[Fault], *, img_size: int, dtype: str = "float32", seed: int = 0,
                  references: References | None = None, progress: Callable[[str], None] | None = None
                  ) -> tuple[list[FaultOutcome], list[CleanOutcome]]:
    """Every fault in turn (the torch reference captured once per configuration unless ``references``
    says otherwise), after a clean run of the unmodified port at each input size used: its error findings
    are false alarms, not detections."""
    say = progress or (lambda _m: None)
    refs = references if references is not None else References()
    outcomes: list[FaultOutcome] = []
    baselines: dict[tuple[Any, ...], CleanOutcome] = {}
    for i, f in enumerate(faults):
        size = fault_size(f, img_size)
        key = (size, f.steps, f.options)
        if key not in baselines:
            extra = f", {f.steps} steps" if f.steps else ""
            say(f"baseline: the correct port at {size} {dtype}{extra} {dict(f.options) or ''}")
            baselines[key] = b = run_clean(size, dtype, seed=seed, steps=f.steps, options=dict(f.options),
                                           references=refs)
            say(f"    verdict={b.verdict} errors={b.n_errors} {b.seconds}s")
        say(f"[{i + 1}/{len(faults)}] {f.name}")
        o = run_fault(f, img_size=img_size, dtype=dtype, seed=seed, baseline=baselines[key].errors, references=refs)
        outcomes.append(o)
        say(f"    detected={o.detected} localised={o.localised} first={_fmt_first(o.first)} {o.seconds}s")
    return outcomes, list(baselines.values())


# ---------------------------------------------------------------------------------------------
# output


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _fmt_first(first: dict[str, Any] | None) -> str:
    if not first:
        return "none"
    loc = first["location"] if first["location"] != "" else "(whole model)"
    return f"{first['type']} @ {loc}" + (f" [{first['state']}]" if first.get("state") else "")


def _yn(b: bool) -> str:
    return "yes" if b else "**no**"


def headline(outcomes: Sequence[FaultOutcome], clean: Sequence[CleanOutcome],
             baselines: Sequence[CleanOutcome] = ()) -> dict[str, Any]:
    """The two headline numbers (detection with localisation, false alarms) and their context."""
    n = len(outcomes)
    det = sum(o.detected for o in outcomes)
    loc = sum(o.localised for o in outcomes)
    return {"faults": n, "detected": det, "localised": loc,
            "localised_pct": round(100.0 * loc / n, 1) if n else None,
            "crashed": sum(o.crashed is not None for o in outcomes),
            "not_exercised": sum((not o.applied) and o.crashed is None for o in outcomes),
            "clean_runs": len(clean), "false_alarms": sum(c.n_errors for c in clean),
            "clean_crashed": sum(c.crashed is not None for c in clean),
            "baseline_false_alarms": sum(b.n_errors for b in baselines)}


def _clean_rows(runs: Sequence[CleanOutcome]) -> list[str]:
    rows = ["| size | dtype | steps / options | verdict | errors | warnings | time (s) | error findings |",
            "|---|---|---|---|---|---|---|---|"]
    for c in runs:
        errs = "crashed: " + c.crashed if c.crashed else "; ".join(_fmt_first(e) for e in c.errors[:5])
        opts = " ".join([f"{c.steps} steps"] * bool(c.steps) + [f"{k}={v}" for k, v in c.options.items()])
        rows.append(f"| {c.img_size} | {c.dtype} | {opts} | {c.verdict} | {c.n_errors} | {c.n_warnings} | "
                    f"{c.seconds} | {errs} |")
    return rows


def render_markdown(outcomes: Sequence[FaultOutcome], clean: Sequence[CleanOutcome], meta: dict[str, Any],
                    baselines: Sequence[CleanOutcome] = ()) -> str:
    h = headline(outcomes, clean, baselines)
    lines = ["# Fault catalogue: detection and false alarms", ""]
    if outcomes:
        lines += [f"**Detection:** {h['detected']}/{h['faults']} faults detected; {h['localised']}/{h['faults']} "
                  f"({h['localised_pct']}%) localised as the first error finding.", ""]
    if clean:
        lines += [f"**False alarms on the correct port:** {h['false_alarms']} error findings in {h['clean_runs']} runs "
                  f"({', '.join(f'{c.img_size}/{c.dtype}' for c in clean)}).", ""]
    if outcomes:
        lines += ["*Detected*: an error finding of the expected type (or an accepted alternative) that the "
                  "unmodified port does not also report at the same size. *Localised*: the FIRST error finding "
                  "has an accepted type at the expected location (a module path matches itself and its "
                  "submodules; `(whole model)` only matches the root)."]
    lines += ["", f"Pair `{meta['pair']}` (nc={meta['num_classes']}), seed {meta['seed']}, fault runs at "
              f"{meta.get('img_size')} px {meta.get('dtype')} (faults needing a non-multiple-of-32 size at "
              f"{_odd(int(meta.get('img_size') or 0))}). Total {meta.get('catalogue_seconds')} s for the catalogue (of which "
              f"{meta.get('baseline_seconds', 0)} s baseline runs of the correct port), "
              f"{meta.get('clean_seconds')} s for the clean runs; load average {meta.get('load_start')} at start, "
              f"{meta.get('load_end')} at end, {meta.get('cpus')} CPUs. Generated by `python -m aligner.faults.run`.", ""]
    if outcomes:
        lines += ["| # | fault | category | expected type @ location | first error finding | detected | localised "
                  "| steps | time (s) | note |", "|---|---|---|---|---|---|---|---|---|---|"]
        for i, o in enumerate(outcomes, 1):
            exp = f"{o.expected_type} @ {o.expected_location or '(whole model)'}"
            first = "crashed: " + o.crashed if o.crashed else _fmt_first(o.first)
            note = o.note
            if o.detected and not o.localised and o.rank:
                note = (note + "; " if note else "") + f"named correctly as error finding #{o.rank}"
            lines.append(f"| {i} | `{o.name}` — {o.description} | {o.category} | {exp} | {first} | "
                         f"{_yn(o.detected)} | {_yn(o.localised)} | {o.steps or ''} | {o.seconds} | {note} |")
    if clean:
        lines += ["", "## Correct port (false alarms)", ""] + _clean_rows(clean)
    if baselines:
        lines += ["", "## Correct port at the catalogue sizes (baseline of the fault runs)", ""] + _clean_rows(baselines)
    return "\n".join(lines) + "\n"


def write_tables(outcomes: Sequence[FaultOutcome], clean: Sequence[CleanOutcome], meta: dict[str, Any],
                 out_dir: str | os.PathLike[str] = DEFAULT_OUT, stem: str = "faults",
                 baselines: Sequence[CleanOutcome] = ()) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` under ``out_dir`` (atomically, via a temp file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"schema": 1, "meta": meta, "headline": headline(outcomes, clean, baselines),
            "faults": [asdict(o) for o in outcomes], "clean": [asdict(c) for c in clean],
            "baselines": [asdict(b) for b in baselines]}
    paths = (out / f"{stem}.md", out / f"{stem}.json")
    texts = (render_markdown(outcomes, clean, meta, baselines),
             json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    for path, text in zip(paths, texts):
        atomic_write(path, text)
    return paths


def select(subset: str = "all", only: Sequence[str] = ()) -> list[Fault]:
    """The faults named in ``only`` (catalogue order), else the subset ("all" or "fast")."""
    names = list(only) or (list(FAST_SUBSET) if subset == "fast" else None)
    known = [f.name for f in catalogue()]
    unknown = [n for n in dict.fromkeys(names or ()) if n not in known]
    if unknown:
        raise UsageError(f"unknown fault(s): {', '.join(unknown)}; valid names: {', '.join(known)} "
                         f"(fast subset: {', '.join(FAST_SUBSET)})")
    return [f for f in catalogue() if names is None or f.name in names]


def run_faults(*, subset: str = "all", only: Sequence[str] = (), img_size: int = 100, dtype: str = "float32",
               seed: int = 0, out: str | os.PathLike[str] = DEFAULT_OUT, faults: bool = True, clean: bool = True,
               clean_sizes: Sequence[int] = CLEAN_SIZES, cache: bool = True,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the catalogue (``faults``) and the clean runs (``clean``), write ``faults.md`` / ``faults.json``
    under ``out`` and return the headline numbers. ``cache=False`` recaptures the torch side every run."""
    chosen = select(subset, only)
    say = progress or (lambda _m: None)
    meta: dict[str, Any] = {"pair": PAIR, "pair_options": PAIR_OPTIONS, "num_classes": NUM_CLASSES, "seed": seed,
                            "img_size": img_size,
                            "dtype": dtype, "subset": "only" if only else subset,
                            "load_start": _loadavg(), "cpus": os.cpu_count(), "cache": cache}
    outcomes: list[FaultOutcome] = []
    clean_runs: list[CleanOutcome] = []
    baselines: list[CleanOutcome] = []
    refs = References(cache)
    t0 = time.perf_counter()
    if faults:
        outcomes, baselines = run_catalogue(chosen, img_size=img_size, dtype=dtype, seed=seed, references=refs,
                                            progress=say)
    meta["catalogue_seconds"] = round(time.perf_counter() - t0, 1)
    meta["baseline_seconds"] = round(sum(b.seconds for b in baselines), 1)
    meta["torch_captures"] = refs.captures()
    t1 = time.perf_counter()
    if clean:
        for size in clean_sizes:
            for dt in CLEAN_DTYPES:
                say(f"clean {size} {dt}")
                c = run_clean(size, dt, seed=seed)
                say(f"    verdict={c.verdict} errors={c.n_errors} {c.seconds}s")
                clean_runs.append(c)
    meta["clean_seconds"] = round(time.perf_counter() - t1, 1)
    meta["load_end"] = _loadavg()
    md, js = write_tables(outcomes, clean_runs, meta, out, baselines=baselines)
    h = headline(outcomes, clean_runs, baselines)
    for row in meta["torch_captures"]:
        say(f"torch side of {row['pair']} {row['config']['img_size']} {row['config']['dtype']}"
            f"{' steps=' + str(row['steps']) if row['steps'] else ''}: {row['torch_captures']} captures "
            f"for {row['references']} reference(s)")
    say(f"wrote {md} and {js}: detected {h['detected']}/{h['faults']}, localised {h['localised']}/{h['faults']}, "
        f"false alarms {h['false_alarms']} in {h['clean_runs']} clean runs "
        f"(+{h['baseline_false_alarms']} at the catalogue sizes)")
    return h


if __name__ == "__main__":  # the same command as `aligner faults`
    from aligner.cli import main as _cli_main

    sys.exit(_cli_main(["faults", *sys.argv[1:]]))
