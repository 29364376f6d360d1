"""Functions the finding rules share: where a group of modules points, name lists, number formatting."""
from __future__ import annotations

import math
from collections.abc import Iterable

from aligner.records import ParamInfo, ParamKind, Trace
from aligner.rules.messages import phrase

__all__ = ["common_module", "place", "listed", "fmt", "where", "trainable", "MAX_LISTED"]

MAX_LISTED = 20   # names listed in evidence before truncating


def common_module(names: Iterable[str]) -> str:
    """Longest common dotted prefix of module names ("" = the whole model)."""
    parts = [n.split(".") if n else [] for n in names]
    if not parts:
        return ""
    out = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return ".".join(out)


def place(affected: Iterable[str], trace: Trace, *, last: bool = False) -> str:
    """Where a finding about a group of modules points.

    Their common ancestor when the group is every parameter-owning module under it (e.g. all of the
    model after Jittor's eval()); otherwise the first affected module in the reference's execution
    order (``last``: the latest, e.g. the one closest to a graph break), so structure findings point at
    the same module a first divergence would.
    """
    names = sorted(set(affected))
    if not names:
        return ""
    lca = common_module(names)
    owners = {p.module for p in trace.params if p.kind == ParamKind.TRAINABLE}
    under = {m for m in owners if lca == "" or m == lca or m.startswith(lca + ".")}
    if len(names) == 1 or under <= set(names):
        return lca if len(names) > 1 else names[0]
    first = trace.first_calls()
    inv = {p.module: i for i, p in enumerate(trace.params)}
    never = len(trace.calls) + len(trace.params)  # after every called or listed module

    def pos(m: str) -> tuple[int, int]:
        return (first.get(m, never), inv.get(m, never))

    return max(names, key=pos) if last else min(names, key=pos)


def where(location: str, empty: str = "whole_model") -> tuple[str, str]:
    """(en, zh) of a location for a message; ``""`` reads as the ``empty`` phrase."""
    return phrase(empty) if location == "" else (location, location)


def listed(names: list[str], k: int = MAX_LISTED) -> list[str]:
    return names if len(names) <= k else names[:k] + [f"... {len(names) - k} more"]


def fmt(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.3g}" if math.isfinite(x) else str(x))


def trainable(trace: Trace) -> list[ParamInfo]:
    """Trainable tensors of a trace, each tensor object once."""
    return [p for p in trace.params if p.kind == ParamKind.TRAINABLE and not p.shared_with]
