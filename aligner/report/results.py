"""Loading and checking results.json (schema 1, docs/results-schema.md) for the report, gate and fix log.

Consumers only read the dict; the helpers here name things the same way everywhere (layer keys,
finding keys, severity order) so the report, the gate and the fix log agree.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from aligner.errors import AlignerError

# The one schema this code reads; producers bump it on any incompatible change.
RESULTS_SCHEMA = 1
SEVERITY_ORDER = ("error", "warning", "info")

__all__ = [
    "RESULTS_SCHEMA", "SEVERITY_ORDER", "ResultsFormatError", "check_results", "load_results",
    "layer_key", "finding_key", "severity_rank", "fmt_num", "finding_metric", "atomic_write_text",
]


class ResultsFormatError(AlignerError):
    """results.json is missing, not JSON, or has another schema."""
    slug = "results-format"


def check_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Return ``results`` if it is a schema-1 results dict, else raise ResultsFormatError."""
    if not isinstance(results, dict):
        raise ResultsFormatError(f"{source}: expected a JSON object, got {type(results).__name__}")
    schema = results.get("schema")
    if schema != RESULTS_SCHEMA:
        raise ResultsFormatError(
            f"{source}: results schema {schema!r} is not supported (this aligner reads schema {RESULTS_SCHEMA}); "
            "re-run `aligner run`/`aligner diff` with this version")
    for key in ("run", "verdict", "findings"):
        if key not in results:
            raise ResultsFormatError(f"{source}: missing required key {key!r}")
    return results


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check a results.json file (a directory means ``DIR/results.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsFormatError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsFormatError(f"{p} is not valid JSON: {exc}") from exc
    return check_results(data, str(p))


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


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text via a temp file in the same directory and a rename; no half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
