"""The port's own initialisation, checked before the weight transfer overwrites it.

Every run copies the torch weights into the port before comparing, so a port that initialises a tensor
differently (a prediction conv re-initialised after ``initialize_biases``, a wrong prior-probability bias,
BN buffers not at 0/1) computes exactly like the reference and the difference is invisible to every
other check; training the port from its own init would start elsewhere. The capture therefore summarises
each freshly built model (``Trace.meta["init"]``, written by :func:`init_summary`) and
:func:`aligner.rules.init.init_findings` compares the tensors whose reference init is *deterministic*:

* every element equal (zero prediction weights, constant prior biases, BN ones/zeros, running stats), or
* identical in a second build of the reference under another seed (the DFL projection ``linspace``,
  strides), when the capture could make one and that build changed some random tensor (a builder that
  ignores the seed makes "identical" meaningless, so then only the all-equal rule applies).

Randomly initialised tensors are skipped: their values depend on each framework's generator. Numpy only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["init_summary"]


def _summary(a: np.ndarray) -> list[float] | None:
    """[min, max, mean, std] in float64, or None for a tensor that cannot be summarised."""
    if a.dtype.kind not in "fiub" or a.size == 0:
        return None
    x = np.asarray(a).astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        return None
    return [float(x.min()), float(x.max()), float(x.mean()), float(x.std())]


def init_summary(arrays: Mapping[str, np.ndarray], twin: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, Any]:
    """``meta["init"]`` of a freshly built model: ``{"stats": {name: [min, max, mean, std]}}`` and, with
    ``twin`` (the same model built under another seed), ``"deterministic"``: the names both builds
    hold bit for bit (only when the other seed changed at least one tensor)."""
    stats = {}
    for name, a in arrays.items():
        s = _summary(np.asarray(a))
        if s is not None:
            stats[name] = s
    out: dict[str, Any] = {"stats": stats}
    if twin is not None:
        same = [n for n, a in arrays.items() if n in twin and np.shape(twin[n]) == np.shape(a)
                and np.array_equal(np.asarray(a), np.asarray(twin[n]))]
        if len(same) < sum(1 for n in arrays if n in twin):
            out["deterministic"] = same
    return out
