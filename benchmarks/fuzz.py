"""Fuzz the readers of files the aligner did not necessarily write: trace sets, results.json, gate
baselines and fix logs. Writes benchmarks/results/fuzz.md.

    python -m benchmarks.fuzz                 # the full run (seeded, 10,000 cases)
    python -m benchmarks.fuzz --cases 300     # a quick slice

Every case corrupts one valid original (truncation, bit flips, inserted or deleted bytes, non-UTF-8 bytes,
wrong JSON types, wrong enum values, huge or negative numbers, deep nesting, deleted keys, missing files,
damaged zip members) and loads it with the project's reader. Outcomes:

* intact: loaded and equal to the original;
* refused: the project's error (:class:`aligner.errors.AlignerError`), one line at the command line;
* raw exception: anything else (a crash of the reader) - must be 0;
* other valid document: loaded, different, and still valid by the schema's own rules (checked here,
  independently of the reader): e.g. a flipped letter in a message, a digit in a measured number, a
  removed fix-log entry. No reader can tell these from a real file; a trace has none (any changed byte is
  caught by its checksums);
* silently accepted invalid: loaded, different, and not valid - must be 0.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # synthetic traces of the unit tests (pure numpy)

from _synth import make_trace, port_of  # noqa: E402

from aligner import api, fixlog, gate  # noqa: E402
from aligner.errors import AlignerError  # noqa: E402
from aligner.records import FindingType, Severity  # noqa: E402
from aligner.results_io import load_baseline, load_results, write_json, write_results  # noqa: E402
from aligner.trace_io import read_trace_set, read_weights, write_trace_set  # noqa: E402

KINDS = ("trace", "results", "baseline", "fixlog")
OUTCOMES = ("intact", "refused", "raw", "valid_variant", "silent")
# Values the schema fixes (docs/results-schema.md, the fix-log format): a change must be refused.
_RESULT_ENUMS: dict[str, set[Any]] = {
    "type": {t.value for t in FindingType}, "severity": {s.value for s in Severity}, "verdict": {"pass", "fail"},
    "kind": {"forward", "backward", "param_grad", "param"}, "dtype": {"float32", "float64"},
    "match": {"name", "order", "map"}, "missing": {"torch", "jittor", None},
    "metric": {"rel", "rel_l2", "rel_fp64", "rel_l2_fp64", "max_abs", "shape", "nan_inf", None},
    "schema": {1}, "baseline": {True}, "direction": {"forward", "backward"},
}
ENUMS = {"results": _RESULT_ENUMS, "baseline": _RESULT_ENUMS, "fixlog": {"status": {"open", "partial", "done"},
                                                                         "format": {1}}}
# Free-form objects of the schema: any JSON inside them is valid.
FREE = {"evidence", "config", "versions", "timings", "tolerances", "loss", "assigner", "steps", "modules",
        "anchors", "params", "uncaptured_gradients", "first_divergence"}
# Fields whose value may be null or a number / null or text.
NULL_NUM = {"max_abs", "rel", "mean_abs", "cosine", "frac_close", "required_atol", "zero_frac_torch",
            "zero_frac_jittor", "tol", "noise_floor", "introduced_ratio", "rel_fp64", "rel_l2", "seed", "open_value",
            "value"}
# Fields a valid file may lack (layer fields added compatibly; fix-log fields that manual entries leave out).
OPTIONAL = {"rel_fp64", "rel_l2", "metric", "missing", "stats_only", "problem_zh", "analysis_zh", "fix_zh",
            "verification_zh", "key", "pair", "opened_run", "last_run", "open_value", "value", "tol", "history"}
RUN_KEYS = ("id", "pair", "config", "dtype", "seed", "states")
NON_EMPTY = {"problem", "state", "id", "message"}
NULL_TEXT = {"key", "pair", "opened_run", "last_run", "metric", "state", "location", "jittor_name", "module_type",
             "likely_cause", "likely_cause_zh", "created", "sub"}


# ---- originals ---------------------------------------------------------------------------------------

def originals(work: Path) -> dict[str, Path]:
    """One valid file (or directory) per kind, written by the aligner's own writers."""
    ref = make_trace("torch", state="init")
    port = port_of(ref)
    port.arrays["act/3/"] = port.arrays["act/3/"] * 1.01  # a divergence: error findings, a failing verdict
    pt = write_trace_set({"init": ref, "perturbed": make_trace("torch", state="perturbed", seed=2)}, work / "trace",
                         extra={"pair": "synthetic"},
                         weights={"init": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}})
    jt = write_trace_set({"init": port}, work / "jt")
    results = api.diff(pt, jt)
    write_results(results, work / "results")
    write_json(gate.make_baseline(results.to_dict()), work / "baseline.json")
    now = datetime(2026, 11, 26, 11, 30)
    fixlog.sync_with_results(results.to_dict(), work / "fixlog", now=now)
    fixlog.add(work / "fixlog", problem="anchor count 2100 at 500 px", analysis="320-px formula", now=now)
    fixlog.edit(work / "fixlog", "FX0001", status="partial")
    return {"trace": pt, "results": work / "results" / "results.json", "baseline": work / "baseline.json",
            "fixlog": work / "fixlog" / "entries.jsonl"}


def load(kind: str, path: Path) -> Any:
    """The project's reader for ``kind``, as the commands call it."""
    if kind == "trace":  # as `diff` reads it, and the stored weights as `capture --weights-from` does
        return read_trace_set(path), read_weights(path, "init")
    if kind == "results":
        return load_results(path)
    if kind == "baseline":
        return load_baseline(path)
    return fixlog.load(path.parent, must_exist=True)


def _trace_equal(got: tuple[dict[str, Any], dict[str, Any]], want: tuple[dict[str, Any], dict[str, Any]]) -> bool:
    (a, wa), (b, wb) = got, want
    if list(a) != list(b) or list(wa) != list(wb) or not all(np.array_equal(wa[k], wb[k]) for k in wa):
        return False
    for s in a:
        x, y = a[s], b[s]
        if (json.dumps(x.meta, sort_keys=True) != json.dumps(y.meta, sort_keys=True) or x.calls != y.calls
                or x.params != y.params or x.modules != y.modules or x.stages != y.stages
                or set(x.arrays) != set(y.arrays) or repr(x.stats) != repr(y.stats)):
            return False
        if any(x.arrays[k].dtype != y.arrays[k].dtype or not np.array_equal(x.arrays[k], y.arrays[k], equal_nan=True)
               for k in x.arrays):
            return False
    return True


def same(kind: str, a: Any, b: Any) -> bool:
    if kind == "trace":
        return _trace_equal(a, b)
    if kind == "fixlog":
        return [e.to_json() for e in a] == [e.to_json() for e in b]
    return a == b


# ---- the independent validity oracle ----------------------------------------------------------------

def _strict_json(raw: bytes) -> Any:
    def bad(_: str) -> Any:
        raise ValueError
    return json.loads(raw.decode("utf-8"), parse_constant=bad)


def _same_shape(orig: Any, new: Any, enums: dict[str, set[Any]], key: str = "") -> bool:
    """``new`` is ``orig`` with only values changed that the schema lets vary (free text, measured numbers,
    anything inside a free-form object); enum fields keep allowed values, integers stay integers and keep
    their sign, nullable fields may turn null."""
    if key in FREE:
        return True
    if key in enums and orig != new:
        return new in enums[key] and (new is None or type(new) is type(orig))
    if key in ("shape_torch", "shape_jittor"):  # any shape is a shape
        return isinstance(new, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in new)
    if key == "run" and isinstance(orig, dict):  # informational keys besides these are free-form
        return isinstance(new, dict) and all(k in new and _same_shape(orig[k], new[k], enums, k) for k in RUN_KEYS)
    if isinstance(orig, dict):
        return isinstance(new, dict) and [k for k in orig if k in new] == list(new) and all(
            _same_shape(orig[k], new[k], enums, k) if k in new else k in OPTIONAL for k in orig)
    if key == "history":  # free lines of text
        return isinstance(new, list) and all(isinstance(h, str) for h in new)
    if key == "layers" and isinstance(new, list) and len(new) < len(orig):  # rows pruned: a smaller valid file
        return all(any(_same_shape(o, n, enums) for o in orig) for n in new)
    if isinstance(orig, list):
        return isinstance(new, list) and len(orig) == len(new) and all(
            _same_shape(o, n, enums, key) for o, n in zip(orig, new))
    number = (int, float)
    if key in NULL_NUM and (orig is None or new is None or isinstance(orig, float)):
        return new is None or (isinstance(new, number) and not isinstance(new, bool)
                               and (isinstance(new, int) or math.isfinite(new)))
    if key in NULL_TEXT and (orig is None or new is None):
        return new is None or isinstance(new, str)
    if type(orig) is not type(new):
        return False
    if orig is None:
        return new is None
    if isinstance(orig, bool):  # another value of the type (a row judged otherwise, a flag set)
        return key != "baseline" or new == orig
    if isinstance(orig, (int, float)):
        return (isinstance(new, int) or math.isfinite(new)) and (new < 0) == (orig < 0)
    if key == "date":
        for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d"):
            try:
                if datetime.strptime(new, fmt).strftime(fmt) == new:
                    return True
            except ValueError:
                pass
        return False
    if key == "id" and orig.startswith("FX"):
        return new.startswith("FX") and new[2:].isdigit() and len(new) >= 6
    return isinstance(new, str) and (bool(new.strip()) or key not in NON_EMPTY)


def valid_variant(kind: str, original: Path, mutant: Path) -> bool:
    """Whether a loaded, changed mutant is still a valid document of its kind (never for traces)."""
    if kind == "trace":
        return False
    try:
        if kind == "fixlog":
            old = [_strict_json(ln) for ln in original.read_bytes().splitlines() if ln.strip()]
            raw = mutant.read_bytes()
            new = [_strict_json(ln) for ln in raw.splitlines() if ln.strip()]
            ids = [e.get("id") for e in new]
            # whole entries removed at the end is a log a person can make; each kept line must match
            return len(ids) == len(set(ids)) and len(new) <= len(old) and (raw.endswith(b"\n") or not raw) and all(
                _same_shape(o, n, ENUMS[kind]) for o, n in zip(old, new))
        return _same_shape(_strict_json(original.read_bytes()), _strict_json(mutant.read_bytes()), ENUMS[kind])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


# ---- mutations ---------------------------------------------------------------------------------------

def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    node = doc
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def _bytes_mutation(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    op = rng.choice(("truncate", "flip", "insert", "delete", "non_utf8", "empty"))
    n = len(data)
    i = rng.randrange(max(n, 1))
    if op == "truncate":
        return op, data[:i]
    if op == "flip":
        return op, data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:] if n else data
    if op == "insert":
        return op, data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[i:]
    if op == "delete":
        return op, data[:i] + data[i + rng.randint(1, 64):]
    if op == "non_utf8":
        return op, data[:i] + rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80")) + data[i:]
    return op, b""


def _json_mutation(rng: random.Random, data: bytes, lines: bool) -> tuple[str, bytes]:
    if lines:
        rows = data.splitlines()
        j = rng.randrange(len(rows))
        op, row = _json_mutation(rng, rows[j], False)
        rows[j] = row
        return op, b"\n".join(rows) + b"\n"
    doc = json.loads(data)
    path = rng.choice(_paths(doc)[1:] or [()])
    op = rng.choice(("wrong_type", "wrong_enum", "huge", "negative", "deep", "del_key", "nan"))
    value: Any
    if op == "wrong_type":
        value = rng.choice(([], {}, "x", 7, -1, True, None, 1.5, [1, "a"], {"k": []}))
    elif op == "wrong_enum":
        value = rng.choice(("bogus", "PASS", "Error", "", "float16", "fatal", "FORWARD"))
    elif op == "huge":
        value = rng.choice((10 ** 400, 10 ** 30, 2 ** 63, 1e308))
    elif op == "negative":
        value = rng.choice((-1, -10 ** 9, -0.5))
    elif op == "deep":
        depth = rng.choice((65, 500, 100_000))  # just past the readers' limit, and past the parser's
        text = json.dumps(_set(doc, path, "@@DEEP@@"))
        return op, text.replace('"@@DEEP@@"', "[" * depth + "]" * depth).encode()
    elif op == "nan":
        text = json.dumps(_set(doc, path, "@@NAN@@"))
        return op, text.replace('"@@NAN@@"', rng.choice(("NaN", "Infinity", "-Infinity", "1e999"))).encode()
    if op == "del_key":
        if not path or not isinstance(path[-1], str):
            return op, json.dumps(doc).encode()
        return op, json.dumps(_set(doc, path, None, delete=True)).encode()
    try:
        return op, json.dumps(_set(doc, path, value)).encode()
    except RecursionError:
        return op, b"[" * 5000
    except ValueError:  # an int too long for str(): write the digits directly
        text = json.dumps(_set(doc, path, "@@BIG@@"))
        return op, text.replace('"@@BIG@@"', "9" * 5000).encode()


def _npz_mutation(rng: random.Random, f: Path) -> str:
    """Damage a member of an .npz (a zip of .npy files): header, data or the zip directory."""
    data = bytearray(f.read_bytes())
    where = rng.choice(("zip_header", "npy_header", "data", "central_dir"))
    if where == "zip_header":
        i = rng.randrange(min(30, len(data)))
    elif where == "npy_header":
        i = min(len(data) - 1, 30 + rng.randrange(100))
    elif where == "central_dir":
        i = max(0, len(data) - 1 - rng.randrange(min(100, len(data))))
    else:
        i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    f.write_bytes(bytes(data))
    return f"npz_{where}"


def mutate(rng: random.Random, kind: str, src: Path, dst: Path) -> tuple[str, Path]:
    """Copy the original to ``dst`` with one corruption; returns (mutation name, path to load)."""
    if kind == "trace":
        shutil.copytree(src, dst)
        files = sorted(p for p in dst.rglob("*") if p.is_file())
        target = rng.choice(files)
        roll = rng.random()
        if roll < 0.08:
            if rng.random() < 0.5:
                target.unlink()
            else:
                shutil.rmtree(dst / rng.choice(("init", "perturbed")))
            return "missing_file", dst
        if target.suffix == ".npz" and roll < 0.5:
            return _npz_mutation(rng, target), dst
        if target.suffix == ".json" and roll < 0.6:
            op, data = _json_mutation(rng, target.read_bytes(), False)
        else:
            op, data = _bytes_mutation(rng, target.read_bytes())
        target.write_bytes(data)
        return f"{op}:{target.name}", dst
    dst.mkdir()
    out = dst / src.name
    if rng.random() < 0.03:
        return "missing_file", out
    data = src.read_bytes()
    if rng.random() < 0.5:
        op, data = _json_mutation(rng, data, lines=kind == "fixlog")
    else:
        op, data = _bytes_mutation(rng, data)
    out.write_bytes(data)
    return op, out


# ---- the run -----------------------------------------------------------------------------------------

def run(cases: int, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``cases`` cases spread over the four kinds; returns counts and the first examples of bad outcomes."""
    rng = random.Random(seed)
    counts = {k: Counter() for k in KINDS}
    examples: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aligner-fuzz-") as tmp:
        work = Path(tmp)
        orig = originals(work / "orig")
        loaded = {k: load(k, p) for k, p in orig.items()}
        t0 = time.perf_counter()
        for n in range(cases):
            kind = KINDS[n % len(KINDS)]
            case = work / f"c{n}"
            op, path = mutate(rng, kind, orig[kind], case)
            try:
                got = load(kind, path)
            except AlignerError:
                outcome = "refused"
            except Exception as exc:  # noqa: BLE001 - exactly what the fuzz looks for
                outcome = "raw"
                examples.append(f"{kind} {op}: {type(exc).__name__}: {str(exc)[:120]}")
            else:
                if same(kind, got, loaded[kind]):
                    outcome = "intact"
                elif valid_variant(kind, orig[kind], path):
                    outcome = "valid_variant"
                else:
                    outcome = "silent"
                    examples.append(f"{kind} {op}: loaded although invalid")
            counts[kind][outcome] += 1
            shutil.rmtree(case, ignore_errors=True)
            if progress and (n + 1) % 1000 == 0:
                progress(f"{n + 1}/{cases} cases, {time.perf_counter() - t0:.0f} s")
    return {"cases": cases, "seed": seed, "counts": {k: dict(v) for k, v in counts.items()}, "examples": examples[:20],
            "seconds": round(time.perf_counter() - t0, 1)}


def markdown(report: dict[str, Any]) -> str:
    """The table of fuzz.md."""
    lines = ["# Fuzz of the readers (trace sets, results.json, gate baselines, fix logs)", "",
             f"`python -m benchmarks.fuzz --cases {report['cases']} --seed {report['seed']}` "
             f"({report['seconds']} s), synthetic originals written by the aligner's own writers. "
             "Loaded intact: the damage did not change what the reader returns (e.g. the directory's marker "
             "file, trailing whitespace). Other valid document: still valid by the schema's rules (a letter of a "
             "message, a digit of a measured value, a removed fix-log entry), which no reader can tell from a "
             "real file; a trace has none, its checksums catch every changed byte. Silently accepted invalid: "
             "read although the schema forbids it.", "",
             "| kind | cases | loaded intact | refused with the project's error | raw exceptions | "
             "other valid document | silently accepted invalid |", "|---|---:|---:|---:|---:|---:|---:|"]
    total = Counter()
    for kind in KINDS:
        c = Counter(report["counts"].get(kind, {}))
        total.update(c)
        lines.append(f"| {kind} | {sum(c.values()):,} | " + " | ".join(f"{c[o]:,}" for o in OUTCOMES) + " |")
    lines.append(f"| **all** | **{sum(total.values()):,}** | " + " | ".join(f"**{total[o]:,}**" for o in OUTCOMES)
                 + " |")
    if report["examples"]:
        lines += ["", "First bad outcomes:", ""] + [f"- {e}" for e in report["examples"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.md"))
    args = ap.parse_args(argv)
    report = run(args.cases, args.seed, progress=lambda m: print(m, file=sys.stderr))
    text = markdown(report)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    bad = sum(c.get("raw", 0) + c.get("silent", 0) for c in report["counts"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
