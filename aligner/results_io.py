"""results.json on disk: the one writer and the one reader (format and changelog: docs/results-schema.md).

Every consumer (the report, the gate, the fix log) reads results through :func:`load_results` /
:func:`check_results`, which validate the document against the schema (types, enums, the verdict agreeing
with the findings) and refuse any other schema version with :class:`ResultsFormatError`. The key functions
(:func:`layer_key`, :func:`finding_key`, ...) name things the same way for every consumer.
"""
from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aligner.errors import AlignerError
from aligner.fsio import atomic_write, prepare_output_dir, read_json_bytes
from aligner.records import FindingType, Severity

__all__ = ["RESULTS_SCHEMA", "RESULTS_FILE", "SEVERITY_ORDER", "ResultsFormatError", "to_jsonable", "dumps_json",
           "results_text", "write_results", "write_json", "parse_json", "check_results", "load_results",
           "load_baseline", "layer_key", "judged_error", "judged_value", "finding_key", "severity_rank", "fmt_num", "finding_metric"]

# The one schema this code writes and reads; bump it (and the changelog) on any incompatible change.
RESULTS_SCHEMA = 1
RESULTS_FILE = "results.json"
SEVERITY_ORDER = tuple(s.value for s in Severity)
LAYER_KINDS = ("forward", "backward", "param_grad", "param")
_MATCH = ("name", "order", "map")
_METRICS = ("rel", "rel_l2", "rel_fp64", "rel_l2_fp64", "rel_port64", "rel_l2_port64", "noise", "max_abs", "shape",
            "nan_inf")


class ResultsFormatError(AlignerError):
    """results.json (or a baseline) is missing, not UTF-8 JSON, of another schema, or invalid."""
    slug = "results-format"


# ---- writing ---------------------------------------------------------------------------------------

def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays unwrapped, non-finite floats as null, enums as str."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps_json(data: Mapping[str, Any], *, rows: str = "layers") -> str:
    """JSON text with indent 1, except that each element of ``data[rows]`` takes one line.

    ``json.dumps`` with an indent runs the pure-Python encoder; the thousands of layer rows are encoded
    by the C encoder instead, one row per line (still diffable line by line). Key order is kept.
    """
    big = data.get(rows) if isinstance(data, Mapping) else None
    if not isinstance(big, list) or not big:
        return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False)
    marker = f"\u0000{rows}-{uuid.uuid4().hex}\u0000"  # no user string can be this
    head = json.dumps({k: (marker if k == rows else v) for k, v in data.items()}, indent=1, ensure_ascii=False,
                      allow_nan=False)
    enc = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    body = "[\n  " + ",\n  ".join(enc.encode(r) for r in big) + "\n ]"
    return head.replace(json.dumps(marker), body, 1)


def results_text(results: Any) -> str:
    """results.json text of an AlignmentResult or a results dict (non-finite floats as null)."""
    data = results.to_dict() if hasattr(results, "to_dict") else to_jsonable(dict(results))
    return dumps_json(data) + "\n"


def write_results(result: Any, out_dir: str | Path) -> Path:
    """Write ``out_dir/results.json`` atomically into a new or aligner-created directory."""
    out = prepare_output_dir(out_dir, (RESULTS_FILE,))
    return atomic_write(out / RESULTS_FILE, results_text(result))


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write a JSON document (a baseline) atomically, indent 1, non-finite floats as null."""
    return atomic_write(Path(path), json.dumps(to_jsonable(dict(data)), ensure_ascii=False, indent=1,
                                               allow_nan=False) + "\n")


# ---- reading ---------------------------------------------------------------------------------------

def parse_json(raw: bytes, source: str) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, bounded nesting) or ResultsFormatError."""
    return read_json_bytes(raw, source, ResultsFormatError)


def _type_name(v: Any) -> str:
    return "null" if v is None else {dict: "object", list: "array", str: "string", bool: "boolean",
                                     int: "integer", float: "number"}.get(type(v), type(v).__name__)


_ABSENT = object()  # no value to check


class _Checker:
    """Collects the first schema violation with its JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, what: str) -> None:
        raise ResultsFormatError(f"{self.source}: {path}: {what}")

    def obj(self, v: Any, path: str, required: bool = True) -> dict[str, Any]:
        if v is None and not required:
            return {}
        if not isinstance(v, dict):
            self.fail(path, f"expected an object, got {_type_name(v)}")
        return v

    def arr(self, v: Any, path: str, required: bool = True) -> list[Any]:
        if v is None and not required:
            return []
        if not isinstance(v, list):
            self.fail(path, f"expected an array, got {_type_name(v)}")
        return v

    def keys(self, d: Mapping[str, Any], path: str, *, required: tuple[str, ...] = (),
             allowed: frozenset[str] | tuple[str, ...] = ()) -> None:
        missing = [k for k in required if k not in d]
        if missing:
            self.fail(f"{path}.{missing[0]}" if path else missing[0], "missing")
        unknown = [k for k in d if k not in allowed]
        if unknown:
            self.fail(f"{path}.{unknown[0][:40]}" if path else unknown[0][:40], "unknown key")

    def _present(self, d: Mapping[str, Any], key: str, path: str, *, null: bool, required: bool) -> Any:
        """The value to check, or ``_ABSENT`` when there is none to check (a missing optional key, an allowed null)."""
        if key not in d:
            if required:
                self.fail(f"{path}.{key}", "missing")
            return _ABSENT
        v = d[key]
        return _ABSENT if v is None and null else v

    def s(self, d: Mapping[str, Any], key: str, path: str, *, null: bool = False, required: bool = True,
          choices: tuple[str, ...] | None = None) -> None:
        v = self._present(d, key, path, null=null, required=required)
        if v is _ABSENT:
            return
        if not isinstance(v, str):
            self.fail(f"{path}.{key}", f"expected a string, got {_type_name(v)}")
        if choices is not None and v not in choices:
            self.fail(f"{path}.{key}", f"{v[:40]!r} is not one of {', '.join(choices)}")

    def num(self, d: Mapping[str, Any], key: str, path: str, *, integer: bool = False, minimum: float | None = None,
            null: bool = True, required: bool = False) -> None:
        v = self._present(d, key, path, null=null, required=required)
        if v is _ABSENT:
            return
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            self.fail(f"{path}.{key}", f"expected {'an integer' if integer else 'a number'}, got {_type_name(v)}")
        if minimum is not None and v < minimum:
            self.fail(f"{path}.{key}", f"{v} is below {minimum}")

    def boolean(self, d: Mapping[str, Any], key: str, path: str, *, null: bool = False,
                required: bool = False) -> None:
        if key not in d:
            if required:
                self.fail(f"{path}.{key}", "missing")
            return
        if not (isinstance(d[key], bool) or (null and d[key] is None)):
            self.fail(f"{path}.{key}", f"expected true/false, got {_type_name(d[key])}")


_FINDING_TYPES = tuple(t.value for t in FindingType)
_RESULTS_TOP_KEYS = ("schema", "run", "verdict", "first_divergence", "counts", "findings", "layers", "unmatched",
                     "params", "anchors", "loss", "assigner", "steps", "modules")
_BASELINE_TOP_KEYS = ("schema", "run", "verdict", "first_divergence", "counts", "findings", "layers", "unmatched",
                      "params", "anchors")
_RUN_KEYS = ("id", "pair", "config", "dtype", "seed", "states")
_TOP_KEYS = frozenset(("schema", "baseline", "run", "verdict", "first_divergence", "counts", "findings", "layers",
                       "unmatched", "params", "anchors", "loss", "assigner", "steps", "modules", "isolation"))
_FINDING_KEYS = ("id", "type", "severity", "state", "location", "message", "message_zh", "evidence", "likely_cause",
                 "likely_cause_zh")
_BASELINE_FINDING_KEYS = ("id", "type", "severity", "state", "location", "message")
_LAYER_KEYS = ("state", "kind", "order", "torch_name", "jittor_name", "sub", "call", "module_type", "match",
               "shape_torch", "shape_jittor", "max_abs", "rel", "mean_abs", "cosine", "frac_close", "required_atol",
               "nan_torch", "nan_jittor", "inf_torch", "inf_jittor", "zero_frac_torch", "zero_frac_jittor", "tol",
               "noise_floor", "introduced_ratio", "ok")
# added to the rows compatibly (older results.json files do not have them)
_LAYER_OPTIONAL = ("rel_fp64", "rel_l2", "metric", "missing", "stats_only", "value")
_BASELINE_LAYER_KEYS = ("state", "kind", "order", "torch_name", "jittor_name", "sub", "call", "rel", "tol", "ok")
_COUNT_KEYS = ("trainable", "trainable_tensors", "buffers", "frozen", "constants")
_LAYER_NUMS = ("max_abs", "rel", "mean_abs", "cosine", "frac_close", "required_atol", "zero_frac_torch",
               "zero_frac_jittor", "tol", "noise_floor", "introduced_ratio", "rel_fp64", "rel_l2", "value")


def check_results(results: Any, source: str = "results", *, baseline: bool = False) -> dict[str, Any]:
    """Return ``results`` if it is a valid schema-1 results dict, else raise ResultsFormatError.

    ``baseline``: a gate baseline is expected: a trimmed one (``"baseline": true``, fewer keys) or a full
    results.json used as one.
    """
    c = _Checker(source)
    if not isinstance(results, dict):
        raise ResultsFormatError(f"{source}: expected a JSON object, got {_type_name(results)}")
    schema = results.get("schema")
    if type(schema) is not int or schema != RESULTS_SCHEMA:
        raise ResultsFormatError(
            f"{source}: results schema {schema!r} is not supported (this aligner reads schema {RESULTS_SCHEMA}); "
            "re-run `aligner run`/`aligner diff` with this version")
    baseline = baseline and results.get("baseline") is True  # trimmed: only the keys make_baseline keeps
    for key in ("run", "verdict", "findings"):
        if key not in results:
            c.fail(key, "missing required key")
    c.keys(results, "", allowed=_TOP_KEYS, required=_BASELINE_TOP_KEYS if baseline else _RESULTS_TOP_KEYS)
    run = c.obj(results["run"], "run")
    c.keys(run, "run", required=_RUN_KEYS, allowed=tuple(run))  # more informational keys may follow
    c.s(run, "id", "run")
    if not run["id"].strip():
        c.fail("run.id", "empty")
    if "baseline" in results and results["baseline"] is not True:
        c.fail("baseline", "must be true when present")
    c.s(run, "created", "run", null=True, required=False)
    c.s(run, "pair", "run")
    c.s(run, "dtype", "run", choices=("float32", "float64"))
    c.num(run, "seed", "run", integer=True, minimum=0)
    c.obj(run.get("config"), "run.config")
    c.obj(run.get("versions"), "run.versions", required=False)
    if "states" in run and not run["states"]:
        c.fail("run.states", "empty")
    for i, st in enumerate(c.arr(run.get("states"), "run.states")):
        if not isinstance(st, str):
            c.fail(f"run.states[{i}]", f"expected a string, got {_type_name(st)}")
    c.s(results, "verdict", "", choices=("pass", "fail"))
    findings = c.arr(results["findings"], "findings")
    for i, f in enumerate(findings):
        p = f"findings[{i}]"
        c.obj(f, p)
        c.keys(f, p, required=_BASELINE_FINDING_KEYS if baseline else _FINDING_KEYS, allowed=_FINDING_KEYS)
        c.s(f, "id", p)
        if not f["id"].strip():
            c.fail(f"{p}.id", "empty")
        c.s(f, "type", p, choices=_FINDING_TYPES)
        c.s(f, "severity", p, choices=SEVERITY_ORDER)
        c.s(f, "state", p, null=True, required=False)
        c.s(f, "location", p, null=True, required=False)
        for key in ("message", "message_zh", "likely_cause", "likely_cause_zh"):
            c.s(f, key, p, null=True, required=key == "message" or (key == "message_zh" and not baseline))
        c.obj(f.get("evidence"), f"{p}.evidence", required=False)
    has_error = any(f["severity"] == "error" for f in findings)
    if (results["verdict"] == "fail") != has_error:
        c.fail("verdict", f"{results['verdict']!r} disagrees with the findings "
                          f"({'an' if has_error else 'no'} error finding)")
    counts = c.obj(results.get("counts"), "counts", required="counts" in results)
    if counts:
        c.keys(counts, "counts", required=(*SEVERITY_ORDER, "by_type"), allowed=(*SEVERITY_ORDER, "by_type"))
    for sev in SEVERITY_ORDER:
        c.num(counts, sev, "counts", integer=True, minimum=0, null=False)
        if sev in counts and counts[sev] != sum(f["severity"] == sev for f in findings):
            c.fail(f"counts.{sev}", "disagrees with the findings")
    by_type = c.obj(counts.get("by_type"), "counts.by_type", required=bool(counts))
    for k, v in by_type.items():
        c.num({k: v}, k, "counts.by_type", integer=True, minimum=0, null=False)
    if counts and by_type != {t: n for t, n in Counter(f["type"] for f in findings).items()}:
        c.fail("counts.by_type", "disagrees with the findings")
    fd = results.get("first_divergence")
    if fd is not None:
        c.obj(fd, "first_divergence")
        c.s(fd, "state", "first_divergence", null=True, required=False)
        c.s(fd, "direction", "first_divergence", null=True, required=False)
        c.s(fd, "location", "first_divergence", null=True, required=False)
        c.s(fd, "metric", "first_divergence", null=True, required=False)
        c.num(fd, "value", "first_divergence")
        c.num(fd, "tol", "first_divergence")
    for i, r in enumerate(c.arr(results.get("layers"), "layers", required="layers" in results)):
        p = f"layers[{i}]"
        c.obj(r, p)
        c.keys(r, p, required=_BASELINE_LAYER_KEYS if baseline else _LAYER_KEYS,
               allowed=_LAYER_KEYS + _LAYER_OPTIONAL)
        c.s(r, "state", p)
        if not r["state"]:
            c.fail(f"{p}.state", "empty")
        c.s(r, "kind", p, choices=LAYER_KINDS)
        c.s(r, "torch_name", p)
        c.s(r, "jittor_name", p, null=True, required=False)
        c.s(r, "sub", p, null=True, required=False)
        c.s(r, "match", p, required=False, choices=_MATCH)
        c.s(r, "metric", p, null=True, required=False, choices=_METRICS)
        c.s(r, "missing", p, null=True, required=False, choices=("torch", "jittor"))
        c.num(r, "order", p, integer=True, minimum=0, null=False)
        c.num(r, "call", p, integer=True, minimum=0, null=False)
        for key in _LAYER_NUMS:
            c.num(r, key, p, minimum=0 if key not in ("cosine",) else None)
        for key in ("nan_torch", "nan_jittor", "inf_torch", "inf_jittor"):
            c.num(r, key, p, integer=True, minimum=0, null=False)
        c.s(r, "module_type", p, null=True, required=False)
        c.boolean(r, "ok", p, required=True)
        c.boolean(r, "stats_only", p)
        for key in ("shape_torch", "shape_jittor"):
            for j, n in enumerate(c.arr(r.get(key), f"{p}.{key}", required=key in r)):
                c.num({"n": n}, "n", f"{p}.{key}[{j}]", integer=True, minimum=0, null=False)
    unmatched = c.obj(results.get("unmatched"), "unmatched", required="unmatched" in results)
    if unmatched:
        c.keys(unmatched, "unmatched", required=("torch", "jittor"), allowed=("torch", "jittor"))
    for side in ("torch", "jittor"):
        for j, name in enumerate(c.arr(unmatched.get(side), f"unmatched.{side}", required=bool(unmatched))):
            if not isinstance(name, str):
                c.fail(f"unmatched.{side}[{j}]", f"expected a string, got {_type_name(name)}")
    params = c.obj(results.get("params"), "params", required="params" in results)
    for side in ("torch", "jittor"):
        ps = c.obj(params.get(side), f"params.{side}", required=False)
        for key in _COUNT_KEYS:
            c.num(ps, key, f"params.{side}", integer=True, minimum=0)
        for m, d in c.obj(ps.get("modules"), f"params.{side}.modules", required=False).items():
            c.obj(d, f"params.{side}.modules.{m}")
            for key in ("trainable", "buffers"):
                c.num(d, key, f"params.{side}.modules.{m}", integer=True, minimum=0)
    story = c.obj(params.get("story"), "params.story", required=False)  # optional: absent in older files
    if story:
        for key in ("en", "zh"):
            c.s(story, key, "params.story")
        for key in ("extra_tensors", "missing_tensors", "reshaped_tensors"):
            c.num(story, key, "params.story", integer=True, minimum=0)
        for side in ("torch", "jittor"):
            counts = c.obj(story.get(side), f"params.story.{side}", required=False)
            for key in counts:
                c.num(counts, key, f"params.story.{side}", integer=True, minimum=0)
        for key in ("extra", "missing"):
            c.arr(story.get(key), f"params.story.{key}", required=False)
    anchors = c.obj(results.get("anchors"), "anchors", required=False)
    for key in ("img_size", "expected", "torch", "jittor"):
        c.num(anchors, key, "anchors", integer=True, minimum=0)
    c.obj(results.get("loss"), "loss", required="loss" in results)
    c.obj(results.get("assigner"), "assigner", required="assigner" in results)
    c.arr(results.get("steps"), "steps", required="steps" in results)
    c.arr(results.get("modules"), "modules", required="modules" in results)
    c.obj(results.get("isolation"), "isolation", required=False)
    return results


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ResultsFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json file (a directory means ``DIR/results.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    return check_results(parse_json(_read(p), str(p)), str(p))


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and validate a gate baseline (a trimmed results.json, or a full one)."""
    p = Path(path)
    return check_results(parse_json(_read(p), str(p)), str(p), baseline=True)


# ---- names shared by the consumers -----------------------------------------------------------------

def layer_key(row: Mapping[str, Any]) -> str:
    """Stable identity of a layer row across runs: state/kind/torch name/sub/call."""
    return "|".join(str(row.get(k, "")) for k in ("state", "kind", "torch_name", "sub", "call"))


def finding_key(finding: Mapping[str, Any]) -> str:
    """Stable identity of a finding across runs (finding ids like F001 are per run)."""
    return "|".join(str(finding.get(k) or "") for k in ("type", "state", "location"))


def severity_rank(severity: str) -> int:
    """0 for error, 1 warning, 2 info, 3 anything unknown."""
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def fmt_num(value: Any, digits: int = 2) -> str:
    """Short human form: ints with thousands separators, floats in %g/%e, others as str."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            mant, _, exp = f"{value:.{digits}e}".partition("e")
            return f"{mant.rstrip('0').rstrip('.')}e{exp}"
        return f"{value:.{digits + 2}g}"
    return str(value)


# Evidence keys that hold "the" number of a finding, most specific first.
_METRIC_KEYS = ("rel", "max_rel", "value", "max_abs", "ratio", "diff", "count_diff", "mismatched")



# The row field that holds the number a layer's verdict judged, by the row's ``metric``.
_JUDGED_FIELD = {"rel": "rel", "rel_l2": "rel_l2", "rel_fp64": "rel_fp64", "rel_l2_fp64": "rel_fp64",
                 "max_abs": "max_abs"}


def judged_error(row: Mapping[str, Any]) -> tuple[str, float] | None:
    """(metric, value) the verdict of a layer row judged, or None for a row without that record (older
    files) or a shape / NaN verdict. ``rel`` (max-norm against the float32 reference) is not it when a
    float64 reference exists: it also carries the reference's own float32 noise."""
    field = "value" if "value" in row else _JUDGED_FIELD.get(str(row.get("metric")))
    value = row.get(field) if field else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(row["metric"]), float(value)
    return None

def judged_value(row: Mapping[str, Any]) -> Any:
    """The number a layer row's verdict judged; ``rel`` for rows of files written before rows recorded their
    metric (None for a shape / NaN verdict)."""
    judged = judged_error(row)
    if judged is not None:
        return judged[1]
    return row.get("rel") if "metric" not in row else None


def finding_metric(finding: Mapping[str, Any]) -> tuple[str, float, float | None] | None:
    """(metric name, value, tolerance or None) read from a finding's evidence, or None."""
    ev = finding.get("evidence") or {}
    if not isinstance(ev, Mapping):
        return None
    name = ev.get("metric") if isinstance(ev.get("metric"), str) else None
    tol = ev.get("tol")
    tol = float(tol) if isinstance(tol, (int, float)) and not isinstance(tol, bool) else None
    if name and isinstance(ev.get("value"), (int, float)) and not isinstance(ev.get("value"), bool):
        return name, float(ev["value"]), tol
    for key in _METRIC_KEYS:
        val = ev.get(key)
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            return key, float(val), tol
    return None
