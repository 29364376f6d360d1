"""Initialisation rule: the port's own fresh values against the reference's deterministic init.

The summaries come from :func:`aligner.initcheck.init_summary` (``Trace.meta["init"]``), recorded before the
weight transfer overwrites the port's values; see :mod:`aligner.initcheck` for which tensors count as
deterministic.
"""
from __future__ import annotations

from collections.abc import Mapping

from aligner.analysis_records import Finding
from aligner.match import rename
from aligner.records import FindingType, ParamInfo, Severity, Trace, torch_only
from aligner.rules.common import listed, place
from aligner.rules.messages import render

__all__ = ["INIT_RTOL", "init_findings"]

# Deterministic inits are computed the same way in both frameworks (fills, linspace, a log of a prior):
# they agree to a few float32 ulps; a wrong init is off by O(1).
INIT_RTOL = 1e-5


def _fmt_range(s: list[float]) -> str:
    return f"all {s[0]:.6g}" if s[0] == s[1] else f"in [{s[0]:.4g}, {s[1]:.4g}] (mean {s[2]:.4g}, std {s[3]:.4g})"


def init_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str] | None = None) -> list[Finding]:
    """One ``init_mismatch`` error listing the port tensors whose fresh values differ from the reference's
    deterministic init, placed at the first affected module; [] when either trace has no init summary
    (older traces, models handed in already built). Missing or reshaped tensors are left to the
    inventory findings."""
    ti, ji = torch.meta.get("init"), jittor.meta.get("init")
    if not isinstance(ti, Mapping) or not isinstance(ji, Mapping):
        return []
    tstats, jstats = ti.get("stats") or {}, ji.get("stats") or {}
    det = set(ti.get("deterministic") or ())
    jparams = {p.name: p for p in jittor.params}
    mapping = mapping or {}
    bad: list[tuple[ParamInfo, list[float], list[float]]] = []
    for p in torch.params:
        s = tstats.get(p.name)
        if p.shared_with or s is None or torch_only(p.name):
            continue
        constant = s[0] == s[1]
        if not constant and p.name not in det:
            continue  # random init: nothing to compare
        jname = rename(p.name, mapping) or p.name
        q, jp = jstats.get(jname), jparams.get(jname)
        if q is None or jp is None or tuple(jp.shape) != tuple(p.shape):
            continue
        bound = INIT_RTOL * max(abs(s[0]), abs(s[1])) + 1e-12
        if any(abs(q[i] - s[i]) > bound for i in ((0, 1) if constant else (0, 1, 2, 3))):
            bad.append((p, s, q))
    if not bad:
        return []
    p0, s0, q0 = bad[0]
    example = f"{p0.name}: reference {_fmt_range(s0)}, port {_fmt_range(q0)}"
    return [Finding(
        type=FindingType.INIT_MISMATCH, severity=Severity.ERROR, state=None,
        location=place((p.module for p, _, _ in bad), torch),
        evidence={"count": len(bad), "params": listed([p.name for p, _, _ in bad]),
                  "examples": [{"name": p.name, "torch": s, "jittor": q} for p, s, q in bad[:5]],
                  "stats": "[min, max, mean, std]", "rtol": INIT_RTOL},
        position=torch.params.index(p0),
        **render(FindingType.INIT_MISMATCH, count=len(bad), example=example, name=p0.name,
                 ref_range=_fmt_range(s0), port_range=_fmt_range(q0)))]
