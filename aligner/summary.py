"""Counts that add up (coverage.py ``Numbers`` style) and the verdict."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aligner.analysis_records import Finding
from aligner.records import Severity

__all__ = ["FindingCounts", "verdict", "VERDICT_PASS", "VERDICT_FAIL"]

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
