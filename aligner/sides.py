"""Key resolution on one trace: stored tensors by key, aliases, and output records by (module, call, sub).

Shared by the comparison (which tensors to pair) and the localisation (whose inputs a call took).
"""
from __future__ import annotations

import numpy as np

from aligner.metrics import Tensor
from aligner.records import CallRecord, TensorStats, Trace

__all__ = ["Side", "fetch"]


def fetch(trace: Trace, key: str, alias: str | None = None) -> Tensor | None:
    """The array (or stats) stored under ``key``, following an alias when ``key`` itself is absent."""
    for k in (key, alias):
        if k is None:
            continue
        if k in trace.arrays:
            return trace.arrays[k]
        if k in trace.stats:
            return trace.stats[k]
    return None


def _same_value(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None or a is b:
        return True  # nothing recorded separately (or one shared handle): trust the alias
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    sa = a if isinstance(a, TensorStats) else TensorStats.of(a)
    sb = b if isinstance(b, TensorStats) else TensorStats.of(b)
    return sa.fingerprint == sb.fingerprint


class Side:
    """Key resolution for one trace: aliases and output records by (module, call, sub)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.canon: dict[str, str] = {}
        self.by_id: dict[tuple[str, int, str], CallRecord] = {}
        for rec in trace.calls:
            self.by_id[(rec.module, rec.call_index, rec.sub)] = rec
        recs = {r.key: r for r in trace.calls}
        for rec in trace.calls:
            key, seen = rec.key, set()
            while key in recs and recs[key].alias_of and key not in seen:
                seen.add(key)
                key = recs[key].alias_of  # type: ignore[assignment]
            self.canon[rec.key] = key
        # An alias whose recorded value differs from its target was modified in place after the
        # target was recorded (torch's inplace ReLU/SiLU return the same tensor object). Its gradient,
        # captured on the target, is w.r.t. the value before the in-place op: not comparable.
        self.stale: set[str] = set()
        for rec in trace.calls:
            if rec.alias_of and not _same_value(fetch(trace, rec.key), fetch(trace, rec.alias_of)):
                self.stale.add(rec.key)

    def act(self, rec: CallRecord) -> Tensor | None:
        return fetch(self.trace, rec.key, rec.alias_of)

    def gact(self, rec: CallRecord) -> Tensor | None:
        alias = "g" + rec.alias_of if rec.alias_of else None
        return fetch(self.trace, rec.gkey, alias)

    def input_(self, key: str) -> Tensor | None:
        return fetch(self.trace, key, self.canon.get(key))

    def tensor(self, key: str) -> Tensor | None:
        """Any stored tensor by key (``act/``, ``gact/``, ``param/``, ...), following aliases."""
        if key.startswith("gact/"):
            target = self.canon.get("act/" + key[len("gact/"):])
            return fetch(self.trace, key, "g" + target if target else None)
        return self.input_(key)
