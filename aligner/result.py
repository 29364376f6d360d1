"""The result of one alignment and its on-disk form, results.json (schema 1, docs/results-schema.md)."""
from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aligner.compare import Comparison, Divergence, StateComparison
from aligner.findings import Finding
from aligner.records import FindingType, Severity
from aligner.summary import FindingCounts, verdict

__all__ = ["RESULTS_SCHEMA", "RESULTS_FILE", "AlignmentResult", "to_jsonable", "write_results", "dumps_json"]

RESULTS_SCHEMA = 1
RESULTS_FILE = "results.json"


@dataclass
class AlignmentResult:
    """Everything one alignment found; ``to_dict()`` is results.json (schema 1)."""
    run: dict[str, Any]
    states: list[StateComparison]
    findings: list[Finding]
    first_divergence: Divergence | None
    params: dict[str, Any]
    modules: list[dict[str, Any]]
    anchors: dict[str, Any] | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    assigner: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    step_rows: list[Comparison] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(self.findings)

    @property
    def counts(self) -> FindingCounts:
        return FindingCounts.of(self.findings)

    @property
    def rows(self) -> list[Comparison]:
        return [r for sc in self.states for r in sc.rows] + self.step_rows

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.ERROR]

    def by_type(self, ftype: FindingType | str) -> list[Finding]:
        return [f for f in self.findings if f.type == FindingType(ftype)]

    def to_dict(self) -> dict[str, Any]:
        first = self.states[0].matches if self.states else None
        return to_jsonable({
            "schema": RESULTS_SCHEMA,
            "run": self.run,
            "verdict": self.verdict,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "counts": self.counts.to_dict(),
            "findings": [f.to_dict(f"F{i + 1:03d}") for i, f in enumerate(self.findings)],
            "layers": [r.to_row() for r in self.rows],
            "unmatched": {"torch": first.unmatched_labels("torch") if first else [],
                          "jittor": first.unmatched_labels("jittor") if first else []},
            "params": self.params,
            "anchors": self.anchors,
            "loss": self.loss,
            "assigner": self.assigner,
            "steps": self.steps,
            "modules": self.modules,
        })


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


def dumps_json(data: Mapping[str, Any], *, allow_nan: bool = False, rows: str = "layers") -> str:
    """JSON text with indent 1, except that each element of ``data[rows]`` takes one line.

    ``json.dumps`` with an indent runs the pure-Python encoder; the thousands of layer rows are encoded
    by the C encoder instead, one row per line (still diffable line by line). Key order is kept.
    """
    big = data.get(rows) if isinstance(data, Mapping) else None
    if not isinstance(big, list) or not big:
        return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=allow_nan)
    marker = f"\u0000{rows}-{uuid.uuid4().hex}\u0000"  # no user string can be this
    head = json.dumps({k: (marker if k == rows else v) for k, v in data.items()}, indent=1, ensure_ascii=False,
                      allow_nan=allow_nan)
    enc = json.JSONEncoder(ensure_ascii=False, allow_nan=allow_nan, separators=(", ", ": "))
    body = "[\n  " + ",\n  ".join(enc.encode(r) for r in big) + "\n ]"
    return head.replace(json.dumps(marker), body, 1)


def write_results(result: AlignmentResult | Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/results.json`` atomically (temp file in the same folder, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict() if isinstance(result, AlignmentResult) else to_jsonable(dict(result))
    text = dumps_json(data, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared (CI artifacts)
        os.replace(tmp, out / RESULTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out / RESULTS_FILE
