"""Loss rule of one state: the loss total and items, judged with the noise floor when the other precision exists."""
from __future__ import annotations

import math
from typing import Any

from aligner.analysis_records import Finding, StateTraces
from aligner.records import FindingType, Severity
from aligner.rules.messages import render
from aligner.tolerances import Tolerances

__all__ = ["loss_findings", "scalar_rel"]


def scalar_rel(a: float, b: float) -> float:
    """|a - b| / |a| (0 when equal)."""
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), 1e-30)


def loss_findings(st: StateTraces, tol: Tolerances) -> tuple[list[Finding], dict[str, Any] | None]:
    """Loss total and items of one state; the noise floor widens the bound when the other precision exists.
    Returns the findings and the state's results.json ``loss`` block."""
    lt, lj = st.torch.stages.get("loss"), st.jittor.stages.get("loss")
    if not lt or not lj:
        return [], None
    other = st.other
    l64 = other.stages.get("loss") if (other is not None and tol.noise_floor) else None
    names = list(lt.get("item_names") or [f"item{i}" for i in range(len(lt.get("items") or []))])
    block = {"torch": {"total": lt.get("total"), "items": lt.get("items")},
             "jittor": {"total": lj.get("total"), "items": lj.get("items")},
             "rel": None, "item_names": names}
    checks = [("total", lt.get("total"), lj.get("total"), l64.get("total") if l64 else None)]
    for i, n in enumerate(names):
        ti, ji = (lt.get("items") or [None] * len(names))[i], (lj.get("items") or [None] * len(names))[i]
        t64 = (l64.get("items") or [None] * len(names))[i] if l64 else None
        checks.append((n, ti, ji, t64))
    out = []
    for label, a, b, a64 in checks:
        if a is None or b is None:
            continue
        rel = scalar_rel(float(a), float(b))
        if label == "total":
            block["rel"] = rel
        bound = tol.loss
        if a64 is not None:
            bound = max(bound, tol.multiplier * scalar_rel(float(a64), float(a)))
        if not math.isfinite(float(b)) or rel > bound:
            out.append(Finding(
                type=FindingType.LOSS_DIVERGENCE, severity=Severity.ERROR, state=st.state,
                location="loss" if label == "total" else f"loss.{label}",
                evidence={"item": label, "torch": float(a), "jittor": float(b), "rel": rel, "tol": bound},
                position=len(out),  # the total first, then the items in the loss's order
                **render(FindingType.LOSS_DIVERGENCE, item=label, torch=float(a), jittor=float(b), rel=rel,
                         tol=bound)))
    return out, block
