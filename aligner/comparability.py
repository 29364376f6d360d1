"""Whether two inputs can be compared at all: traces for ``diff`` / ``--reference64``, runs for the gate.

A comparison of a float64 trace with a float32 one, of two different configurations, of another pair's
baseline or of two traces fed different inputs reports differences that are not in the port. Every
check here raises :class:`IncomparableError` with one line naming what differs.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from aligner.errors import IncomparableError
from aligner.records import Trace

__all__ = ["array_digest", "check_traces", "check_pair", "check_reference", "check_runs"]

_SAME_RUN = ("pair", "config", "seed")


def array_digest(arrays: Mapping[str, Any] | Iterable[Any]) -> str:
    """sha256 over arrays (names, shapes, values) cast to float32, so the float32 and float64 runs of one
    configuration agree: they start from the same float32-representable inputs and weights."""
    h = hashlib.sha256()
    items = sorted(arrays.items()) if isinstance(arrays, Mapping) else enumerate(arrays)
    for name, value in items:
        a = np.asarray(value)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _differ(a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if va is None or vb is None or va == vb:
            continue
        if isinstance(va, Mapping) and isinstance(vb, Mapping):  # name the keys that differ, not two long dicts
            keys_ = [x for x in dict.fromkeys([*va, *vb]) if va.get(x) != vb.get(x)]
            out.append(f"{k}: " + ", ".join(f"{x} {_short(va.get(x))} vs {_short(vb.get(x))}" for x in keys_))
        else:
            out.append(f"{k} {_short(va)} vs {_short(vb)}")
    return out


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _hashes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    out = []
    for key, what in (("inputs_sha256", "inputs"), ("weights_sha256", "weights")):
        if a.get(key) and b.get(key) and a[key] != b[key]:
            out.append(f"{what} differ ({a[key][:12]} vs {b[key][:12]})")
    return out


def _not_empty(t: Trace, role: str) -> None:
    if not t.calls:
        raise IncomparableError(f"the {role} trace (state {t.state!r}) records no module call: nothing to compare")


def check_traces(a: Trace, b: Trace, reference: Trace | None = None) -> None:
    """Everything ``diff`` needs: the two traces comparable, and the reference (if any) one for them."""
    check_pair(a, b)
    if reference is not None:
        check_reference(reference, a if a.meta.get("framework") == "torch" else b)


def check_pair(a: Trace, b: Trace) -> None:
    """The two traces of a diff: same pair, configuration, seed, dtype, inputs and weights."""
    _not_empty(a, "first")
    _not_empty(b, "second")
    diffs = _differ(a.meta, b.meta, (*_SAME_RUN, "dtype")) + _hashes(a.meta, b.meta)
    if diffs:
        raise IncomparableError(f"the traces are not comparable (state {a.state!r}): " + "; ".join(diffs))


def check_reference(ref: Trace, run: Trace) -> None:
    """``--reference64``: a torch trace of the same configuration at the other precision."""
    _not_empty(ref, "reference")
    fw, dt, want = ref.meta.get("framework"), ref.meta.get("dtype"), _other(run.meta.get("dtype"))
    problems = []
    if fw != "torch":
        problems.append(f"it is a {fw} trace, not torch")
    if dt != want:
        problems.append(f"its dtype is {dt}, the run is {run.meta.get('dtype')} (the reference must be {want})")
    problems += _differ(ref.meta, run.meta, _SAME_RUN) + _hashes(ref.meta, run.meta)
    if problems:
        raise IncomparableError(f"--reference64 is not a reference for this run (state {run.state!r}): "
                                + "; ".join(problems))


def check_port64(port64: Trace, port: Trace) -> None:
    """``--port64``: the port's own trace of the same configuration, in float64."""
    _not_empty(port64, "port64")
    problems = []
    if port64.meta.get("framework") != port.meta.get("framework"):
        problems.append(f"it is a {port64.meta.get('framework')} trace, the port's is {port.meta.get('framework')}")
    if port64.meta.get("dtype") != "float64":
        problems.append(f"its dtype is {port64.meta.get('dtype')}, not float64")
    problems += _differ(port64.meta, port.meta, _SAME_RUN)
    if problems:
        raise IncomparableError(f"--port64 is not the port's float64 run of this configuration (state {port.state!r}): "
                                + "; ".join(problems))


def _other(dtype: Any) -> str:
    return "float32" if dtype == "float64" else "float64"


def check_runs(results: Mapping[str, Any], baseline: Mapping[str, Any]) -> None:
    """Gate: the baseline was accepted for the same pair, configuration, dtype and seed."""
    run, base = results.get("run") or {}, baseline.get("run") or {}
    diffs = _differ(base, run, (*_SAME_RUN, "dtype"))
    if diffs:
        raise IncomparableError("the baseline belongs to another run setup: " + "; ".join(diffs)
                                + " (baseline vs results)")
