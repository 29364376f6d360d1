"""Mode rules (state-independent): training flags, BN eps/momentum, dropout/drop-path rates that differ."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from aligner.analysis_records import Finding
from aligner.match import rename
from aligner.records import FindingType, ModuleInfo, Severity, Trace
from aligner.rules.common import common_module, listed, where
from aligner.rules.messages import phrase, render

__all__ = ["mode_findings", "dedupe_modes", "mode_locations"]

T, S = FindingType, Severity
_CAUSES = {"training": "cause_training", "bn_eps": "cause_bn_eps", "bn_momentum": "cause_bn_momentum"}


def mode_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[Finding]:
    """Training flags, BN eps/momentum, dropout/drop-path rates that differ, one finding per flag."""
    jm = {m.name: m for m in jittor.modules}
    diffs: dict[str, list[tuple[ModuleInfo, Any, Any]]] = {}
    for m in torch.modules:
        q = jm.get(rename(m.name, mapping) or m.name)
        if q is None:
            continue
        if m.training != q.training:
            diffs.setdefault("training", []).append((m, m.training, q.training))
        for key in sorted(set(m.flags) | set(q.flags)):
            a, b = m.flags.get(key), q.flags.get(key)
            if not _same_flag(a, b):
                diffs.setdefault(key, []).append((m, a, b))
    first = torch.first_calls()
    out = []
    for key, items in diffs.items():
        names = [m.name for m, _, _ in items]
        lca = common_module(names)
        with_key = [m.name for m in torch.modules
                    if (m.name == lca or lca == "" or m.name.startswith(lca + "."))
                    and (key == "training" or key in m.flags)]
        items.sort(key=lambda it: first.get(it[0].name, math.inf))  # never called: last
        loc = lca if set(names) >= set(with_key) else items[0][0].name
        m0, a0, b0 = items[0]
        w_en, w_zh = where(loc)
        out.append(Finding(
            type=T.MODE_MISMATCH, severity=S.ERROR, state=None, location=loc,
            evidence={"flag": key, "count": len(items), "first": m0.name, "torch": _plain(a0), "jittor": _plain(b0),
                      "modules": listed(names)},
            position=first.get(m0.name, -1),
            **render(T.MODE_MISMATCH, flag=key, count=len(items), where=w_en, where_zh=w_zh, torch=_shown(a0, 0),
                     jittor=_shown(b0, 0), torch_zh=_shown(a0, 1), jittor_zh=_shown(b0, 1),
                     first=m0.name or phrase("root")[0]),
            **render(T.MODE_MISMATCH, _CAUSES.get(key, "cause_other"))))
    return out


def dedupe_modes(findings: list[Finding]) -> list[Finding]:
    """One finding per (type, location, flag) over the states."""
    seen, out = set(), []
    for f in findings:
        key = (f.type, f.location, f.evidence.get("flag"))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def mode_locations(modes: list[Finding]) -> set[str]:
    """Modules a mode mismatch points at (a forward divergence there names it as the likely cause)."""
    return {f.location for f in modes} | {f.evidence.get("first", "") for f in modes}


def _same_flag(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def _shown(v: Any, lang: int) -> str:
    """A flag value in a message: repr, and for a module that lacks the setting (a drop-path rate where the
    reference has no DropPath) words instead of ``None``."""
    return phrase("no_such_setting")[lang] if v is None else repr(v)


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
