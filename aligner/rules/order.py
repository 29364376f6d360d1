"""The one order of findings (results.json ``findings``, the report, the gate): causes before consequences.

Findings are sorted by severity (errors first), then by the rank of their type in :data:`CAUSAL_ORDER`,
then by the tie-break: the model state in run order (state-independent findings first), the finding's
``position`` (execution order, inventory index or position in the loss; findings without one come after
those with one), and its location. The sort is stable, so findings equal in all of that keep the order the
rules produced them in. The first error is what a user should look at first.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from aligner.analysis_records import Finding
from aligner.records import FindingType, Severity

__all__ = ["CAUSAL_ORDER", "SEVERITY_ORDER", "sort_findings", "type_rank"]

T = FindingType

# Structure and modes, then the forward pass, then the loss side (anchors -> assigner -> loss value),
# then the backward pass and gradient patterns.
CAUSAL_ORDER: tuple[FindingType, ...] = (
    T.WEIGHT_TRANSFER, T.MISSING_PARAMETER, T.EXTRA_PARAMETER, T.SHAPE_MISMATCH, T.PARAM_COUNT_DRIFT,
    T.INIT_MISMATCH, T.MODE_MISMATCH, T.MODULE_DEVIATION, T.NAN_INF, T.FORWARD_DIVERGENCE, T.ANCHOR_COUNT_DRIFT,
    T.ASSIGNER_MISMATCH,
    T.LOSS_DIVERGENCE, T.BACKWARD_DIVERGENCE, T.FROZEN_PARAMETER, T.UNREACHABLE_GRADIENT,
    T.GRADIENT_PATTERN, T.EXTRA_GRADIENT, T.VANISHING_GRADIENT, T.UNMATCHED_MODULE,
    T.GRAD_SPARSITY_EXPLAINED, T.PORT_ROUNDING)
SEVERITY_ORDER: tuple[Severity, ...] = (Severity.ERROR, Severity.WARNING, Severity.INFO)

_TYPE_RANK = {t: i for i, t in enumerate(CAUSAL_ORDER)}
_SEV_RANK = {s: i for i, s in enumerate(SEVERITY_ORDER)}


def type_rank(ftype: FindingType | str) -> int:
    """Position of a finding type in :data:`CAUSAL_ORDER` (unknown types last)."""
    return _TYPE_RANK.get(ftype, len(CAUSAL_ORDER))  # type: ignore[call-overload]


def sort_findings(findings: Iterable[Finding], states: Sequence[str]) -> list[Finding]:
    """``findings`` in the causal order; ``states``: the model states in run order."""
    srank = {s: i for i, s in enumerate(states)}
    return sorted(findings, key=lambda f: (_SEV_RANK[f.severity], type_rank(f.type),
                                           srank.get(f.state or "", -1),
                                           f.position is None, f.position or 0, f.location))
