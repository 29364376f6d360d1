"""What a model pair adds to the generic rules (:meth:`aligner.pairs.base.Pair.rules`).

The generic rules know no model. A pair that records its own stages (anchors, a label assigner) or whose
module names say something about likely causes hands these hooks to :class:`aligner.analysis.Analysis`;
every hook is optional.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aligner.analysis_records import Finding, StateTraces
from aligner.records import Trace
from aligner.tolerances import Tolerances

__all__ = ["PairRules", "NO_RULES"]


@dataclass(frozen=True)
class PairRules:
    """Pair-specific rules; the fields are called by the analysis in this order."""
    # (module name and type, lower case; state context) -> (cause, cause_zh) of a forward divergence there,
    # or None to fall back to the generic causes; asked after the input and mode checks
    forward_cause: Callable[[str, Mapping[str, Any]], tuple[str, str] | None] | None = None
    # per state: stage findings and the results.json ``assigner`` block of that state
    assigner: Callable[[StateTraces, Tolerances], tuple[list[Finding], dict[str, Any] | None]] | None = None
    # per state: findings about the references themselves (e.g. the other precision deciding otherwise)
    reference: Callable[[StateTraces], list[Finding]] | None = None
    # per state, last: re-judge that state's findings given its assigner block (e.g. a tie explains them)
    explain: Callable[[list[Finding], str, dict[str, Any] | None], list[Finding]] | None = None
    # once: the results.json ``anchors`` block from the first state's traces, and its findings
    anchors: Callable[[Trace, Trace], dict[str, Any] | None] | None = None
    anchor_findings: Callable[[dict[str, Any] | None], list[Finding]] | None = None


NO_RULES = PairRules()
