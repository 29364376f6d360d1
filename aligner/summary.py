"""Counts that add up (coverage.py ``Numbers`` style), the verdict, and roll-ups per module subtree."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aligner.compare import Comparison
from aligner.findings import Finding
from aligner.records import Severity
from aligner.tolerances import Kind

__all__ = ["FindingCounts", "LayerCounts", "verdict", "rollup", "VERDICT_PASS", "VERDICT_FAIL"]

VERDICT_PASS, VERDICT_FAIL = "pass", "fail"


@dataclass(frozen=True)
class FindingCounts:
    """Findings per severity and per type; ``sum()`` works (``__radd__`` accepts 0)."""
    error: int = 0
    warning: int = 0
    info: int = 0
    by_type: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> FindingCounts:
        return sum((cls(**{f.severity.value: 1}, by_type={f.type.value: 1}) for f in findings), cls())

    def __add__(self, other: FindingCounts) -> FindingCounts:
        by = dict(self.by_type)
        for k, v in other.by_type.items():
            by[k] = by.get(k, 0) + v
        return FindingCounts(self.error + other.error, self.warning + other.warning,
                             self.info + other.info, by)

    def __radd__(self, other: Any) -> FindingCounts:
        if other == 0:
            return self
        return NotImplemented

    @property
    def total(self) -> int:
        return self.error + self.warning + self.info

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "warning": self.warning, "info": self.info, "by_type": dict(self.by_type)}


def verdict(findings: Iterable[Finding]) -> str:
    """"fail" iff at least one finding has severity error."""
    return VERDICT_FAIL if any(f.severity == Severity.ERROR for f in findings) else VERDICT_PASS


@dataclass(frozen=True)
class LayerCounts:
    """Compared tensors of a module subtree: how many, how many failed, per kind."""
    rows: int = 0
    failed: int = 0
    forward_failed: int = 0
    backward_failed: int = 0
    param_grad_failed: int = 0
    worst_rel: float = 0.0

    @classmethod
    def of(cls, row: Comparison) -> LayerCounts:
        bad = 0 if row.ok else 1
        return cls(1, bad, bad if row.kind == Kind.FORWARD else 0, bad if row.kind == Kind.BACKWARD else 0,
                   bad if row.kind == Kind.PARAM_GRAD else 0, row.metrics.rel)

    def __add__(self, other: LayerCounts) -> LayerCounts:
        return LayerCounts(self.rows + other.rows, self.failed + other.failed,
                           self.forward_failed + other.forward_failed,
                           self.backward_failed + other.backward_failed,
                           self.param_grad_failed + other.param_grad_failed,
                           max(self.worst_rel, other.worst_rel))

    def __radd__(self, other: Any) -> LayerCounts:
        if other == 0:
            return self
        return NotImplemented

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _module_of(row: Comparison, param_modules: Mapping[str, str]) -> str:
    if row.kind in (Kind.PARAM, Kind.PARAM_GRAD):
        return param_modules.get(row.torch_name, row.torch_name.rsplit(".", 1)[0] if "." in row.torch_name else "")
    return row.torch_name


def rollup(rows: Iterable[Comparison], param_modules: Mapping[str, str] | None = None,
           max_depth: int | None = None) -> dict[str, LayerCounts]:
    """LayerCounts per module subtree ("" = whole model), each row added to all its ancestors."""
    param_modules = param_modules or {}
    out: dict[str, LayerCounts] = {}
    for r in rows:
        module = _module_of(r, param_modules)
        parts = module.split(".") if module else []
        lc = LayerCounts.of(r)
        limit = len(parts) if max_depth is None else min(len(parts), max_depth)
        for i in range(limit + 1):
            key = ".".join(parts[:i])
            out[key] = out[key] + lc if key in out else lc
    return out
