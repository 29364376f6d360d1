"""Findings of module isolation: every port module that computes differently on the reference's own inputs.

A deviating module whose matched sub-modules all agree in isolation is a cause of its own; a module that
deviates only because a sub-module does is not reported again (the sub-module is). Deviations are properties
of the code, so the states are merged: one finding per module, listing the states it deviates in, in model
order. Calls the runner could not replay (another signature, an exception in the port's code) are counted in
one info finding with the first reason.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from aligner.analysis_records import Finding, Kind
from aligner.isolation import IsolatedModule, IsolationRow
from aligner.records import FindingType, Severity
from aligner.rules.common import fmt, listed
from aligner.rules.messages import render

__all__ = ["isolation_findings"]

T, S = FindingType, Severity
_KIND = {Kind.FORWARD: ("output", "输出"), Kind.BACKWARD: ("input gradient", "输入梯度"),
         Kind.PARAM_GRAD: ("parameter gradient", "参数梯度")}


def _under(name: str, parent: str) -> bool:
    return parent == "" or name.startswith(parent + ".")


def _what(row: IsolationRow) -> tuple[str, str]:
    en, zh = _KIND.get(row.kind, (row.kind.value, row.kind.value))
    label = "" if row.name in ("", "out") else f" {row.name}"
    jd = row.judgement
    num = f"{jd.metric} {fmt(jd.value)} > {fmt(jd.bound)}"
    return f"{en}{label} ({num})", f"{zh}{label}（{num}）"


def _variant(rows: list[IsolationRow]) -> str:
    kinds = {r.kind for r in rows}
    if Kind.FORWARD in kinds:
        return "cause_forward"
    return "cause_backward"


def isolation_findings(by_state: Mapping[str, Sequence[IsolatedModule]]) -> list[Finding]:
    """One error per innermost deviating module (states merged), plus an info on calls not replayed."""
    deviating: dict[str, list[tuple[str, IsolatedModule]]] = {}
    skipped: list[IsolatedModule] = []
    replayed = 0
    for state, mods in by_state.items():
        for m in mods:
            if m.skipped is not None:
                skipped.append(m)
                continue
            replayed += 1
            if not m.ok:
                deviating.setdefault(m.call.torch_name, []).append((state, m))
    names = list(deviating)
    inner = [n for n in names if not any(o != n and _under(o, n) for o in names)]
    out = []
    for name in sorted(inner, key=lambda n: min(m.call.order for _, m in deviating[n])):
        hits = deviating[name]
        first_state, first = hits[0]
        failed = first.failed
        worst = failed[0]
        what_en, what_zh = zip(*(_what(r) for r in failed[:3]))
        more = len(failed) - 3
        states = list(dict.fromkeys(s for s, _ in hits))
        hidden = sorted(n for n in names if n != name and _under(name, n))  # parents deviating because of it
        out.append(Finding(
            type=T.MODULE_DEVIATION, severity=S.ERROR, state=None, location=name, position=first.call.order,
            evidence={"torch_name": name, "jittor_name": first.call.jittor_name,
                      "module_type": first.call.module_type, "states": states, "call": first.call.torch_call,
                      "metric": worst.judgement.metric, "value": worst.judgement.value, "tol": worst.judgement.bound,
                      "failed": [{"kind": r.kind.value, "name": r.name, "metric": r.judgement.metric,
                                  "value": r.judgement.value, "tol": r.judgement.bound} for r in failed[:20]],
                      "enclosing": listed(hidden)},
            **render(T.MODULE_DEVIATION, name=name, module_type=first.call.module_type,
                     port=first.call.jittor_name, what="; ".join(what_en), what_zh="；".join(what_zh),
                     more=f" (+{more} more)" if more > 0 else "", more_zh=f"（另 {more} 项）" if more > 0 else "",
                     states=", ".join(states), state=first_state),
            **render(T.MODULE_DEVIATION, _variant(failed))))
    if skipped:
        first = skipped[0]
        out.append(Finding(
            type=T.MODULE_DEVIATION, severity=S.INFO, state=None, location=first.call.torch_name,
            position=first.call.order,
            evidence={"replayed": replayed, "skipped": len(skipped),
                      "modules": listed([f"{m.call.torch_name}: {m.skipped}" for m in skipped])},
            **render(T.MODULE_DEVIATION, "skipped", count=len(skipped), replayed=replayed,
                     name=first.call.torch_name, reason=first.skipped)))
    return out
