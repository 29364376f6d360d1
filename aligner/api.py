"""Public entry points of the aligner core: capture (or load) traces, analyse, return the result.

``run_pair`` (a registered pair), ``align`` (any two models) and ``diff`` (trace sets captured
elsewhere) all end in :class:`aligner.analysis.Analysis`; framework imports happen lazily, inside the
capture side. ``write_results`` writes results.json (schema 1) atomically.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aligner.analysis import Analysis, analyze
from aligner.compare import StateTraces
from aligner.errors import NoMatchError
from aligner.records import Trace
from aligner.result import RESULTS_SCHEMA, AlignmentResult, to_jsonable, write_results
from aligner.tolerances import Tolerances

__all__ = ["RESULTS_SCHEMA", "AlignmentResult", "Analysis", "analyze", "align", "run_pair", "diff",
           "write_results", "to_jsonable"]


# ---------------------------------------------------------------------------------------------
# entry points that capture or load traces (framework imports happen inside the capture side)


def _timed(timings: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - t0, 4)


def run_pair(pair: Any, *, out_dir: str | Path | None = None, states: Sequence[str] | None = None,
             noise_floor: bool = True, stats_only: bool = False, steps: int = 0,
             progress: Callable[[str], None] | None = None, seed: int = 0, dtype: str = "float32",
             tolerances: Tolerances | Mapping[str, Any] | None = None,
             mapping: Mapping[str, str] | str | Path | None = None,
             jittor_options: Mapping[str, Any] | None = None, jittor_model: Any = None,
             **pair_options: Any) -> AlignmentResult:
    """Capture a registered pair (name or Pair object) in both frameworks, diff, return the result.

    With ``noise_floor`` (and dtype float32) the torch reference is captured in float64 as well and
    every tensor is judged against the reference's own float32 error. ``steps > 0`` also runs that
    many optimizer steps on both sides (when the pair supports it) and records the drift.
    ``jittor_options`` go to the pair's Jittor builder (e.g. a planted fault); ``jittor_model``
    replaces the Jittor model outright (a deliberately broken copy). ``out_dir`` writes results.json.
    """
    from aligner.capture import capture_in_process, reference_model, reference_states  # noqa: PLC0415 - lazy
    from aligner.pairs import get_pair  # noqa: PLC0415

    say = progress or (lambda _msg: None)
    opts = {"seed": seed, "dtype": dtype, **pair_options}
    p = get_pair(pair, **opts) if isinstance(pair, str) else pair
    st = list(states or p.states)
    full = not stats_only
    timings: dict[str, float] = {}
    extra = {"steps": steps} if steps else {}
    po = None
    if noise_floor:
        # float32 runs: the float64 reference is the oracle. float64 runs: the float32 reference
        # measures how strongly each tensor amplifies float32-level perturbations.
        odt = "float64" if p.dtype == "float32" else "float32"
        po = get_pair(p.label, **{**opts, "dtype": odt}) if isinstance(pair, str) else _with_dtype(p, odt)
    # the torch model is built once: its states are what both sides load, its init summary is recorded
    tmodel, tinit = _timed(timings, "build_torch", lambda: reference_model(p))
    weights = _timed(timings, "transfer", lambda: reference_states(p, tmodel, st))
    # the port's own initialisation, summarised before the first transfer overwrites it (aligner.initcheck);
    # a model handed in may already hold trained or loaded weights: not checked
    jinit: dict[str, Any] | bool = False
    if jittor_model is None:
        say("building the jittor model (the first run compiles kernels)")
        jittor_model = _timed(timings, "build_jittor", lambda: p.build_jittor(**dict(jittor_options or {})))
        jinit = _timed(timings, "build_jittor", lambda: _init_summary(jittor_model))
    # One state at a time: its three traces are compared and their tensors freed before the next
    # state is captured (a GOLD-YOLO state at 640 holds several GB of activations).
    acc = Analysis(tolerances=tolerances, mapping=mapping, progress=progress)
    hi = p.dtype == "float32"
    for s in st:
        say(f"[{s}] capturing {p.label} in torch")
        first = s == st[0]  # the init check is state-independent: recorded with the first state only
        tt = _timed(timings, "capture_torch", lambda: capture_in_process(
            p, "torch", states=[s], full=full, model=tmodel, weights={s: weights[s]},
            init=tinit if first else False, **extra)[s])
        say(f"[{s}] capturing jittor")
        jt_ = _timed(timings, "capture_jittor", lambda: capture_in_process(
            p, "jittor", states=[s], full=full, weights={s: weights[s]}, model=jittor_model,
            init=jinit if first else False, **extra)[s])
        other = None
        if po is not None:
            say(f"[{s}] capturing the {po.dtype} reference (noise floor)")
            other = _timed(timings, f"capture_torch{po.dtype[-2:]}", lambda: capture_in_process(
                po, "torch", states=[s], full=full, init=False, **extra)[s])
            if hi:
                other = _compact(other)
        _timed(timings, "compare", lambda: acc.add(StateTraces(s, tt, jt_, other if hi else None,
                                                               None if hi else other)))
        del tt, jt_, other
    result = _timed(timings, "compare", lambda: acc.result())
    result.run["timings"] = {**timings, **result.run.get("timings", {})}
    if out_dir is not None:
        write_results(result, out_dir)
    return result


def _init_summary(model: Any) -> dict[str, Any]:
    from aligner.adapters import get_adapter  # noqa: PLC0415 - lazy: imports jittor
    from aligner.initcheck import init_summary  # noqa: PLC0415
    return init_summary(get_adapter("jittor").state_arrays(model))


def _compact(trace: Trace) -> Trace:
    """The float64 reference with its tensors rounded to float32 (half the memory). It only measures
    errors of float32 runs, whose bounds are >= 1e-5 relative, far above float32 rounding (6e-8)."""
    from dataclasses import replace  # noqa: PLC0415
    arrays = {k: (v.astype(np.float32) if v.dtype == np.float64 and not k.startswith("stage/") else v)
              for k, v in trace.arrays.items()}
    return replace(trace, arrays=arrays)


def _with_dtype(p: Any, dtype: str) -> Any:
    """A copy of a Pair object in another dtype (same options), or None when it cannot be made."""
    import copy  # noqa: PLC0415
    try:
        q = copy.copy(p)
        q.dtype = dtype
        return q
    except Exception:  # noqa: BLE001 - no noise floor then, never a crash
        return None


def align(torch_model: Any, jittor_model: Any, inputs: Sequence[np.ndarray] | np.ndarray,
          loss: Any = None, *, targets: Any = None, dtype: str = "float32", seed: int = 0,
          tolerances: Tolerances | Mapping[str, Any] | None = None,
          mapping: Mapping[str, str] | str | Path | None = None, stats_only: bool = False,
          noise_floor: bool = True, transfer: bool = True, state: str = "custom",
          out_dir: str | Path | None = None) -> AlignmentResult:
    """Align any PyTorch model with its Jittor port on the same numpy inputs.

    ``loss`` is ``fn(outputs, targets, ctx) -> scalar`` used on both sides, or a pair
    ``(torch_loss, jittor_loss)``; None uses a seeded probe loss (sum of outputs times fixed random
    weights) so every output gets a gradient. The torch weights are copied into the port first
    (``transfer``). With ``noise_floor`` and float32, a float64 deep copy of the torch model is run as
    the noise-floor reference.
    """
    import copy  # noqa: PLC0415

    from aligner.adapters import get_adapter, probe_loss  # noqa: PLC0415 - lazy
    from aligner.capture import capture_models, environment  # noqa: PLC0415

    xs = [np.asarray(inputs)] if isinstance(inputs, np.ndarray) else [np.asarray(a) for a in inputs]
    xs = [a.astype(dtype) if a.dtype.kind == "f" else a for a in xs]
    t_loss, j_loss = (loss if isinstance(loss, tuple) else (loss, loss))
    if t_loss is None:
        t_loss = j_loss = probe_loss(seed)
    timings: dict[str, float] = {}
    tt, jt_ = _timed(timings, "capture", lambda: capture_models(
        torch_model, jittor_model, xs, targets=targets, torch_loss=t_loss, jittor_loss=j_loss,
        transfer=transfer, full=not stats_only, dtype=dtype, seed=seed, state=state))
    t64 = None
    if noise_floor and dtype == "float32":
        try:
            model64 = copy.deepcopy(torch_model).double()
        except Exception:  # noqa: BLE001 - a model that cannot be copied gets no noise floor
            model64 = None
        if model64 is not None:
            x64 = [a.astype("float64") if a.dtype.kind == "f" else a for a in xs]
            meta = {**environment(), "pair": "custom", "config": {}, "seed": seed, "state": state,
                    "states": [state], "weight_transfer": []}
            t64 = _timed(timings, "capture_torch64", lambda: get_adapter("torch").capture(
                model64, x64, t_loss, _cast_targets(targets), full=not stats_only, dtype="float64", meta=meta))
    result = _timed(timings, "compare", lambda: analyze([StateTraces(state, tt, jt_, t64)],
                                                        tolerances=tolerances, mapping=mapping))
    result.run["timings"] = timings
    if out_dir is not None:
        write_results(result, out_dir)
    return result


def _cast_targets(targets: Any) -> Any:
    if isinstance(targets, np.ndarray):
        return targets.astype("float64") if targets.dtype.kind == "f" else targets
    if isinstance(targets, dict):
        return {k: _cast_targets(v) for k, v in targets.items()}
    if isinstance(targets, (list, tuple)):
        return type(targets)(_cast_targets(v) for v in targets)
    return targets


def _trace_states(root: str | Path) -> tuple[str, dict[str, Callable[[], Trace]]]:
    """(framework, state -> loader of that state's trace) for a trace set or a single trace dir."""
    from aligner import trace_io  # noqa: PLC0415 - numpy only

    r = Path(root)
    if trace_io.is_trace_dir(r):
        t = trace_io.read_trace(r)
        return str(t.meta.get("framework")), {t.state or "default": lambda: t}
    index = r / trace_io.INDEX
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        traces = trace_io.read_trace_set(r)  # raises the proper TraceFormatError
        fw = str(next(iter(traces.values())).meta.get("framework")) if traces else ""
        return fw, {s: (lambda t=t: t) for s, t in traces.items()}
    trace_io._check_format(doc, r)  # noqa: SLF001 - the same version check read_trace_set does
    fws = doc.get("framework") or [""]
    return str(fws[0]), {s: (lambda s=s: trace_io.read_trace(r / s)) for s in doc.get("states", [])}


def diff(trace_dir_a: str | Path, trace_dir_b: str | Path, *, reference64: str | Path | None = None,
         tolerances: Tolerances | Mapping[str, Any] | None = None,
         mapping: Mapping[str, str] | str | Path | None = None, out_dir: str | Path | None = None,
         progress: Callable[[str], None] | None = None) -> AlignmentResult:
    """Diff two trace sets written by ``aligner capture`` (reference first), optionally with the torch
    reference captured at the other precision (``reference64``: float64 for a float32 run, float32 for
    a float64 run) for the noise floor. Gives the same result as the in-process run."""
    timings: dict[str, float] = {}
    fa, a_states = _trace_states(trace_dir_a)
    fb, b_states = _trace_states(trace_dir_b)
    c_states = _trace_states(reference64)[1] if reference64 is not None else {}
    if fa != "torch" and fb == "torch":
        a_states, b_states = b_states, a_states  # the reference is the torch side whatever the order
    states = [s for s in a_states if s in b_states]
    if not states:
        raise NoMatchError(f"the trace sets share no model state ({list(a_states)} vs {list(b_states)})")
    acc = Analysis(tolerances=tolerances, mapping=mapping, progress=progress)
    for s in states:  # one state in memory at a time
        a = _timed(timings, "load", lambda: a_states[s]())
        b = _timed(timings, "load", lambda: b_states[s]())
        c = _timed(timings, "load", lambda: c_states[s]()) if s in c_states else None
        hi = str(a.meta.get("dtype", "float32")) == "float32"
        _timed(timings, "compare", lambda: acc.add(StateTraces(s, a, b, c if hi else None, None if hi else c)))
        del a, b, c
    result = _timed(timings, "compare", lambda: acc.result())
    result.run["timings"] = timings
    if out_dir is not None:
        write_results(result, out_dir)
    return result
