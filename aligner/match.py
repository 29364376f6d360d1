"""Pair the module calls of two traces: by explicit mapping, by name, then by order and shape.

Each :class:`Match` records how it was made (``map`` | ``name`` | ``order``) and a confidence.
Calls that find no partner are kept on both sides (:class:`MatchResult`), never dropped.

* ``map``: a user mapping ``{torch_name: jittor_name}`` (dict or JSON file). A key also renames the
  subtree below it (``{"neck.a": "neck.b"}`` maps ``neck.a.conv`` to ``neck.b.conv``); the longest
  key wins. Explicit mappings are applied first so that they override automatic pairings.
* ``name``: same module name and same call index (shared modules are matched call by call).
* ``order``: the rest, by a longest-common-subsequence alignment of the two execution-ordered call
  sequences where two calls may pair only if their output shape signatures are equal
  (TroubleShooter's idea, restricted to exact signatures). Confidence is lower for these.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum, unique
from pathlib import Path

from aligner.errors import UsageError
from aligner.records import CallRecord, Trace

__all__ = ["MatchMethod", "Call", "Match", "MatchResult", "calls_of", "load_mapping",
           "rename", "match_calls", "match_traces"]

# Above this many DP cells the order pass falls back to a greedy scan (memory and time bound).
_LCS_MAX_CELLS = 4_000_000


@dataclass(frozen=True)
class Call:
    """One module call with all its output leaves (a CallRecord group sharing ``order``)."""
    order: int
    module: str
    module_type: str
    call_index: int
    outputs: tuple[CallRecord, ...]

    @property
    def signature(self) -> tuple[tuple[int, ...], ...]:
        """Output shapes in sub-path order: what the order pass compares."""
        return tuple(r.shape for r in sorted(self.outputs, key=lambda r: r.sub))

    @property
    def label(self) -> str:
        """Module name, with ``#k`` for the k-th call of a shared module (k > 0)."""
        return self.module if self.call_index == 0 else f"{self.module}#{self.call_index}"

    @property
    def input_keys(self) -> tuple[str, ...]:
        return self.outputs[0].input_keys if self.outputs else ()

    @property
    def training(self) -> bool:
        return self.outputs[0].training if self.outputs else False


@dataclass(frozen=True)
class Match:
    torch: Call
    jittor: Call
    method: MatchMethod
    confidence: float   # 1.0 for map/name; order matches 0.9 if the module types agree, else 0.6


@dataclass(frozen=True)
class MatchResult:
    matches: list[Match]              # sorted by torch execution order
    unmatched_torch: list[Call]
    unmatched_jittor: list[Call]

    def unmatched_labels(self, side: str) -> list[str]:
        calls = self.unmatched_torch if side == "torch" else self.unmatched_jittor
        return [c.label for c in calls]

    def by_torch_order(self) -> dict[int, Match]:
        return {m.torch.order: m for m in self.matches}

    def count(self, method: MatchMethod) -> int:
        return sum(1 for m in self.matches if m.method == method)


@unique
class MatchMethod(StrEnum):
    """How a :class:`Match` was made."""
    NAME = "name"
    ORDER = "order"
    MAP = "map"


def calls_of(trace: Trace | Iterable[CallRecord]) -> list[Call]:
    """Group a trace's CallRecords by execution order."""
    records = trace.calls if isinstance(trace, Trace) else list(trace)
    groups: dict[int, list[CallRecord]] = {}
    for rec in records:
        groups.setdefault(rec.order, []).append(rec)
    out = []
    for order in sorted(groups):
        recs = tuple(sorted(groups[order], key=lambda r: r.sub))
        first = recs[0]
        out.append(Call(order=order, module=first.module, module_type=first.module_type,
                        call_index=first.call_index, outputs=recs))
    return out


def load_mapping(source: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """A ``{torch_name: jittor_name}`` mapping from a dict or a JSON file (None -> empty).

    Two file layouts: the flat object, or the one ``aligner map`` writes, whose ``"map"`` object is the
    mapping and whose other keys are notes (ignored). A ``null`` value is a name still to be filled in and
    is skipped.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read mapping file {path}: {exc}", slug="mapping") from exc
    if isinstance(data, dict) and isinstance(data.get("map"), dict):
        data = data["map"]
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        raise UsageError("a mapping must be a JSON object {torch_name: jittor_name} of strings",
                         slug="mapping")
    return data


def rename(name: str, mapping: Mapping[str, str]) -> str | None:
    """``name`` renamed by the longest mapping key equal to it or a dotted prefix of it; else None."""
    if name in mapping:
        return mapping[name]
    best = None
    for key in mapping:
        if key and name.startswith(key + ".") and (best is None or len(key) > len(best)):
            best = key
    return None if best is None else mapping[best] + name[len(best):]


def match_calls(torch_calls: list[Call], jittor_calls: list[Call],
                mapping: Mapping[str, str] | None = None) -> MatchResult:
    """Pair calls: mapping first, then name + call index, then order + shape signature."""
    mapping = mapping or {}
    j_by_key = {(c.module, c.call_index): c for c in jittor_calls}
    used_t: set[int] = set()
    used_j: set[int] = set()
    matches: list[Match] = []

    def take(t: Call, j: Call, method: MatchMethod, conf: float) -> None:
        matches.append(Match(torch=t, jittor=j, method=method, confidence=conf))
        used_t.add(t.order)
        used_j.add(j.order)

    if mapping:
        for t in torch_calls:
            target = rename(t.module, mapping)
            j = j_by_key.get((target, t.call_index)) if target is not None else None
            if j is not None and j.order not in used_j and target != t.module:
                take(t, j, MatchMethod.MAP, 1.0)
    for t in torch_calls:
        if t.order in used_t:
            continue
        j = j_by_key.get((t.module, t.call_index))
        if j is not None and j.order not in used_j:
            take(t, j, MatchMethod.NAME, 1.0)
    rest_t = [c for c in torch_calls if c.order not in used_t]
    rest_j = [c for c in jittor_calls if c.order not in used_j]
    for t, j in _align_by_signature(rest_t, rest_j):
        take(t, j, MatchMethod.ORDER, 0.9 if t.module_type == j.module_type else 0.6)
    matches.sort(key=lambda m: m.torch.order)
    return MatchResult(matches=matches, unmatched_torch=[c for c in torch_calls if c.order not in used_t],
                       unmatched_jittor=[c for c in jittor_calls if c.order not in used_j])


def match_traces(torch_trace: Trace, jittor_trace: Trace,
                 mapping: Mapping[str, str] | None = None) -> MatchResult:
    return match_calls(calls_of(torch_trace), calls_of(jittor_trace), mapping)


def _align_by_signature(a: list[Call], b: list[Call]) -> list[tuple[Call, Call]]:
    """Longest common subsequence of two call sequences under signature equality."""
    if not a or not b:
        return []
    sa, sb = [c.signature for c in a], [c.signature for c in b]
    n, m = len(a), len(b)
    if n * m > _LCS_MAX_CELLS:
        return _greedy(a, b, sa, sb)
    # dp[i][j] = LCS length of a[i:], b[j:]
    dp = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, nxt = dp[i], dp[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = nxt[j + 1] + 1 if sa[i] == sb[j] else max(nxt[j], row[j + 1])
    pairs = []
    i = j = 0
    while i < n and j < m:
        if sa[i] == sb[j] and dp[i][j] == dp[i + 1][j + 1] + 1:
            pairs.append((a[i], b[j]))
            i += 1
            j += 1
        elif dp[i + 1][j] >= dp[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _greedy(a: list[Call], b: list[Call], sa: list, sb: list) -> list[tuple[Call, Call]]:
    pairs, j = [], 0
    for i, sig in enumerate(sa):
        k = j
        while k < len(sb) and sb[k] != sig:
            k += 1
        if k < len(sb):
            pairs.append((a[i], b[k]))
            j = k + 1
    return pairs
