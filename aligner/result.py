"""The result of one alignment; ``to_dict()`` is results.json (written and read by aligner.results_io)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aligner.analysis_records import Comparison, Divergence, Finding, StateComparison
from aligner.records import FindingType, Severity
from aligner.results_io import RESULTS_FILE, RESULTS_SCHEMA, to_jsonable, write_results
from aligner.summary import FindingCounts, verdict

# the writer lives in results_io; re-exported because the API hands these out with the result type
__all__ = ["RESULTS_SCHEMA", "RESULTS_FILE", "AlignmentResult", "to_jsonable", "write_results"]


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
    isolation: dict[str, Any] = field(default_factory=dict)   # module isolation per state (aligner.isolation)

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
            "isolation": self.isolation,
        })
