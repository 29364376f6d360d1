"""Run the fault catalogue through the aligner and measure detection and false alarms.

``python -m aligner.faults.run [--subset fast|all] [--img-size N] [--out DIR]`` plants every catalogued
fault in the correct Jittor port in turn, runs the GOLD-YOLO pair through :func:`aligner.api.run_pair`,
and scores the findings: *detected* when an error finding of the expected type (or an accepted
alternative) is reported, *localised* when the FIRST error finding has such a type at the expected
location. It also runs the unmodified port at 320, 500 and 640 in float32 and float64 and counts the
error findings there (false alarms). Writes ``faults.md`` and ``faults.json`` (default
``benchmarks/results/``).

The torch side does not depend on the planted fault, so its captures are computed once per
configuration and reused (``--no-cache`` recomputes them for every fault, as a plain ``run_pair`` does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .catalogue import FAST_SUBSET, Fault, catalogue

__all__ = ["FaultOutcome", "CleanOutcome", "run_fault", "run_clean", "run_catalogue", "write_tables", "main",
           "DEFAULT_OUT", "PAIR"]

PAIR = "gold_yolo-n"
NUM_CLASSES = 20
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


@contextmanager
def reference_cache(enabled: bool = True) -> Iterator[dict[tuple[Any, ...], Any]]:
    """Memoise the torch-side captures of :func:`aligner.api.run_pair` (they do not see Jittor faults).

    The key holds everything the torch capture depends on: pair label, config, dtype, seed, states,
    full/stats-only and the extra capture options (steps).
    """
    import aligner.capture as cap  # noqa: PLC0415 - lazy: imports no framework itself

    memo: dict[tuple[Any, ...], Any] = {}
    if not enabled:
        yield memo
        return
    orig_capture, orig_weights = cap.capture_in_process, cap.torch_weights

    def key(kind: str, p: Any, states: Any, extra: dict[str, Any]) -> tuple[Any, ...]:
        return (kind, p.label, json.dumps(p.config(), sort_keys=True, default=str), p.dtype, p.seed,
                tuple(states or p.states), json.dumps(extra, sort_keys=True, default=str))

    def capture_in_process(pair: Any, framework: Any, **kw: Any) -> Any:
        if str(framework) != "torch" or isinstance(pair, str) or kw.get("model") is not None:
            return orig_capture(pair, framework, **kw)
        k = key("capture", pair, kw.get("states"), {a: b for a, b in kw.items() if a != "states"})
        if k not in memo:
            memo[k] = orig_capture(pair, framework, **kw)
        return memo[k]

    def torch_weights(pair: Any, states: Any = None) -> Any:
        k = key("weights", pair, states, {})
        if k not in memo:
            memo[k] = orig_weights(pair, states)
        return memo[k]

    cap.capture_in_process, cap.torch_weights = capture_in_process, torch_weights
    try:
        yield memo
    finally:
        cap.capture_in_process, cap.torch_weights = orig_capture, orig_weights


# ---------------------------------------------------------------------------------------------
# runs


def _run_pair(img_size: int, dtype: str, steps: int, options: dict[str, Any], seed: int) -> Any:
    from aligner.api import run_pair  # noqa: PLC0415 - lazy: the frameworks load here

    return run_pair(PAIR, num_classes=NUM_CLASSES, img_size=img_size, dtype=dtype, seed=seed, steps=steps,
                    **options)


def fault_size(fault: Fault, img_size: int) -> int:
    """The input size ``fault`` runs at (a non-multiple of 32 when it needs one)."""
    return _odd(img_size) if fault.odd_size else img_size


def run_fault(fault: Fault, *, img_size: int, dtype: str = "float32", seed: int = 0,
              baseline: Sequence[dict[str, Any]] = ()) -> FaultOutcome:
    """Plant ``fault``, run the pair, score the findings (``baseline``: the clean port's error findings)."""
    size = fault_size(fault, img_size)
    out = FaultOutcome(fault.name, fault.category, fault.expected_type.value, fault.expected_location,
                       fault.description, fault.description_zh, size, fault.steps, note=fault.note)
    t0 = time.perf_counter()
    try:
        with fault.planted() as probe:
            result = _run_pair(size, dtype, fault.steps, dict(fault.options), seed)
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


def run_clean(img_size: int, dtype: str, *, seed: int = 0, steps: int = 0,
              options: dict[str, Any] | None = None) -> CleanOutcome:
    """The unmodified port: every error finding is a false alarm."""
    out = CleanOutcome(img_size, dtype, steps=steps, options=dict(options or {}))
    t0 = time.perf_counter()
    try:
        result = _run_pair(img_size, dtype, steps, dict(options or {}), seed)
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
                  cache: bool = True, progress: Callable[[str], None] | None = None
                  ) -> tuple[list[FaultOutcome], list[CleanOutcome]]:
    """Every fault in turn (the torch reference captured once per configuration), after a clean run of
    the unmodified port at each input size used: its error findings are false alarms, not detections."""
    say = progress or (lambda _m: None)
    outcomes: list[FaultOutcome] = []
    baselines: dict[tuple[Any, ...], CleanOutcome] = {}
    with reference_cache(cache):
        for i, f in enumerate(faults):
            size = fault_size(f, img_size)
            key = (size, f.steps, f.options)
            if key not in baselines:
                extra = f", {f.steps} steps" if f.steps else ""
                say(f"baseline: the correct port at {size} {dtype}{extra} {dict(f.options) or ''}")
                baselines[key] = b = run_clean(size, dtype, seed=seed, steps=f.steps, options=dict(f.options))
                say(f"    verdict={b.verdict} errors={b.n_errors} {b.seconds}s")
            say(f"[{i + 1}/{len(faults)}] {f.name}")
            o = run_fault(f, img_size=img_size, dtype=dtype, seed=seed, baseline=baselines[key].errors)
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
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aligner.faults.run", description=__doc__.splitlines()[0])
    ap.add_argument("--subset", choices=("all", "fast"), default="all")
    ap.add_argument("--only", nargs="*", default=None, help="fault names to run (default: the subset)")
    ap.add_argument("--img-size", type=int, default=100,
                    help="input size of the fault runs (default 100: small, and not a multiple of 32)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default benchmarks/results)")
    ap.add_argument("--no-faults", action="store_true", help="skip the catalogue (clean runs only)")
    ap.add_argument("--no-clean", action="store_true", help="skip the clean runs on the correct port")
    ap.add_argument("--clean-sizes", default=",".join(map(str, CLEAN_SIZES)))
    ap.add_argument("--no-cache", action="store_true", help="recapture the torch side for every fault")
    args = ap.parse_args(argv)

    names = args.only if args.only else (list(FAST_SUBSET) if args.subset == "fast" else None)
    faults = [f for f in catalogue() if names is None or f.name in names]
    if names is not None and len(faults) != len(set(names)):
        known = {f.name for f in catalogue()}
        print(f"unknown fault(s): {', '.join(sorted(set(names) - known))}", file=sys.stderr)
        return 2
    say = lambda m: print(m, flush=True)  # noqa: E731
    meta: dict[str, Any] = {"pair": PAIR, "num_classes": NUM_CLASSES, "seed": args.seed, "img_size": args.img_size,
                            "dtype": args.dtype, "subset": args.subset if not args.only else "only",
                            "load_start": _loadavg(), "cpus": os.cpu_count(), "cache": not args.no_cache}
    outcomes: list[FaultOutcome] = []
    clean: list[CleanOutcome] = []
    baselines: list[CleanOutcome] = []
    t0 = time.perf_counter()
    if not args.no_faults:
        outcomes, baselines = run_catalogue(faults, img_size=args.img_size, dtype=args.dtype, seed=args.seed,
                                 cache=not args.no_cache, progress=say)
    meta["catalogue_seconds"] = round(time.perf_counter() - t0, 1)
    meta["baseline_seconds"] = round(sum(b.seconds for b in baselines), 1)
    t1 = time.perf_counter()
    if not args.no_clean:
        for size in (int(s) for s in args.clean_sizes.split(",") if s):
            for dtype in CLEAN_DTYPES:
                say(f"clean {size} {dtype}")
                c = run_clean(size, dtype, seed=args.seed)
                say(f"    verdict={c.verdict} errors={c.n_errors} {c.seconds}s")
                clean.append(c)
    meta["clean_seconds"] = round(time.perf_counter() - t1, 1)
    meta["load_end"] = _loadavg()
    md, js = write_tables(outcomes, clean, meta, args.out, baselines=baselines)
    h = headline(outcomes, clean, baselines)
    say(f"wrote {md} and {js}: detected {h['detected']}/{h['faults']}, localised {h['localised']}/{h['faults']}, "
        f"false alarms {h['false_alarms']} in {h['clean_runs']} clean runs "
        f"(+{h['baseline_false_alarms']} at the catalogue sizes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
