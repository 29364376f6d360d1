"""Capture orchestration: pair -> seeded models, inputs, weights -> one Trace per (framework, state).

Weights always flow torch -> Jittor: the torch model is built and seeded, put into each state, and
its parameters + buffers are loaded into the Jittor model and verified (problems land in the Jittor
trace's ``meta["weight_transfer"]``). Captures run in this process; :func:`capture_pair` (``aligner
capture``) writes one framework's trace set, which the other side can diff anywhere.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .adapters import Adapter, LossFn, get_adapter, probe_loss
from .comparability import array_digest
from .errors import UsageError
from .initcheck import init_summary
from .pairs import Pair, get_pair
from .records import Framework, ParamKind, Trace
from .trace_io import read_weights, write_trace_set
from .weights import transfer_arrays, untransferred_modules

__all__ = ["capture_in_process", "capture_pair", "capture_models", "torch_weights",
           "reference_model", "reference_states", "environment"]


def environment() -> dict[str, Any]:
    """Versions and settings that change numbers (frameworks add their own versions)."""
    try:
        from importlib.metadata import version  # noqa: PLC0415
        aligner_version = version("aligner")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        aligner_version = "0+unknown"
    return {"versions": {"numpy": np.__version__, "python": platform.python_version(), "aligner": aligner_version},
            "onednn": os.environ.get("use_mkl", "") == "1",
            "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
            "cpu_count": os.cpu_count(), "platform": platform.platform()}


def torch_weights(pair: Pair, states: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Parameters + buffers of the pair's torch model in each state (torch names -> arrays)."""
    ta = get_adapter(Framework.TORCH)
    model = pair.build_torch()
    return _torch_states(pair, ta, model, states or pair.states)


def _torch_states(pair: Pair, ta: Adapter, model: Any, states: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    params, _ = ta.inventory(model)
    keep = {p.name for p in params if p.kind != ParamKind.CONSTANT}
    base = {k: v for k, v in ta.state_arrays(model).items() if k in keep}
    out = {}
    for state in states:
        ta.load_arrays(model, base)
        pair.apply_state(model, state)
        out[state] = {k: v for k, v in ta.state_arrays(model).items() if k in keep}
    ta.load_arrays(model, base)
    return out


def capture_in_process(pair: Pair | str, framework: Framework | str, *, states: Sequence[str] | None = None,
                       full: bool = True, weights: dict[str, dict[str, np.ndarray]] | None = None,
                       jittor_options: dict[str, Any] | None = None, model: Any = None, steps: int = 0,
                       optimizer: dict[str, Any] | None = None, init: bool | dict[str, Any] = True,
                       name_map: Mapping[str, str] | None = None, **pair_options: Any) -> dict[str, Trace]:
    """Capture ``framework``'s side of ``pair`` in every state; returns ``{state: Trace}``.

    ``weights`` (state -> torch arrays) are what the Jittor side loads; by default they are produced
    here by building the torch model (so this process then imports torch too). The torch side uses
    them too when given with ``model`` (the states of that very model, see :func:`reference_states`).
    ``model`` reuses an already built model (e.g. a deliberately broken Jittor copy); ``jittor_options`` go to
    ``pair.build_jittor``. ``steps`` > 0 also runs that many SGD steps (``optimizer`` overrides the
    hyper-parameters: lr 0.01, momentum 0.937, nesterov, weight_decay 5e-4) and stores
    ``step/<k>/...`` arrays and ``meta["steps"]``; the model is restored afterwards.
    ``init``: True records ``meta["init"]`` (:mod:`aligner.initcheck`) when the model is built here
    (the torch side also builds a twin under another seed to tell deterministic tensors from random
    ones); a dict is that summary, made by the caller right after building ``model``; False records none.
    ``name_map`` (``{torch_name: jittor_name}``, module keys rename their subtree) names the Jittor
    tensors the torch weights go to; every tensor that maps with an equal shape is copied, the rest are
    reported in ``meta["weight_transfer"]`` and the modules left wholly untransferred in
    ``meta["weight_untransferred"]``.
    """
    return _capture(pair, framework, states=states, full=full, weights=weights, jittor_options=jittor_options,
                    model=model, steps=steps, optimizer=optimizer, init=init, name_map=name_map,
                    **pair_options)[0]


def reference_model(pair: Pair, init: bool = True) -> tuple[Any, dict[str, Any] | None]:
    """The pair's torch model, built once, and its initialisation summary (``meta["init"]``; None
    without ``init``). A caller capturing several states reuses it instead of building it per state."""
    adapter = get_adapter(Framework.TORCH)
    # the twin first: the main build then reseeds, so its numbers are those of a run without the twin
    twin = _twin_arrays(pair, adapter) if init else None
    model = pair.build_for("torch")
    return model, (init_summary(adapter.state_arrays(model), twin) if init else None)


def reference_states(pair: Pair, model: Any, states: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Parameters + buffers of an already built torch model of ``pair`` in each state."""
    return _torch_states(pair, get_adapter(Framework.TORCH), model, states)


def _twin_arrays(pair: Pair, adapter: Adapter) -> dict[str, np.ndarray] | None:
    """The torch model's tensors when built under another seed (None when the pair cannot be copied)."""
    try:
        return adapter.state_arrays(replace(pair, seed=pair.seed + 1).build_torch())
    except Exception:  # noqa: BLE001 - no determinism information then, only the all-equal rule
        return None


def _capture(pair: Pair | str, framework: Framework | str, *, states: Sequence[str] | None = None,
             full: bool = True, weights: dict[str, dict[str, np.ndarray]] | None = None,
             jittor_options: dict[str, Any] | None = None, model: Any = None, steps: int = 0,
             optimizer: dict[str, Any] | None = None, init: bool | dict[str, Any] = True,
             name_map: Mapping[str, str] | None = None,
             **pair_options: Any) -> tuple[dict[str, Trace], dict[str, dict[str, np.ndarray]]]:
    p = get_pair(pair, **pair_options) if isinstance(pair, str) else pair
    fw = Framework(framework)
    states = list(states or p.states)
    for s in states:
        if s not in p.states:
            raise UsageError(f"{p.label}: unknown state {s!r}; known: {list(p.states)}", slug="unknown-state")
    t0 = time.perf_counter()
    adapter = get_adapter(fw)
    init_meta = init if isinstance(init, dict) else None
    given = model is not None
    if model is None and fw == Framework.TORCH:
        model, built_init = reference_model(p, init is True)
        if init is True:
            init_meta = built_init
    elif model is None:
        model = p.build_for(str(fw), **(jittor_options or {}))
        if init is True:
            init_meta = init_summary(adapter.state_arrays(model), None)
    t_build = time.perf_counter() - t0
    if fw == Framework.TORCH and not (given and weights is not None and all(s in weights for s in states)):
        weights = _torch_states(p, adapter, model, states)
    elif weights is None:
        weights = torch_weights(p, states)
    data = p.make_inputs()
    loss = p.loss_for(str(fw))
    env = environment()
    out: dict[str, Trace] = {}
    is_port = fw == Framework.JITTOR
    for state in states:
        t1 = time.perf_counter()
        # the map names Jittor tensors: the torch side loads its own weights under their own names
        problems = transfer_arrays(weights[state], adapter, model, name_map=name_map if is_port else None)
        t_transfer = time.perf_counter() - t1
        p.prepare(model, str(fw))
        meta = {**env, "pair": p.label, "config": p.config(), "seed": p.seed, "state": state,
                "states": states, "inputs_recipe": data.meta,
                "weight_transfer": [asdict(w) for w in problems] if is_port else [],
                "weight_untransferred": _untransferred(problems, adapter, model) if is_port else [],
                "weight_transfer_checked": len(weights[state]),
                "inputs_sha256": array_digest(data.inputs), "weights_sha256": array_digest(weights[state])}
        if init_meta is not None:
            meta["init"] = init_meta
        trace = adapter.capture(model, data.inputs, loss, data.targets, full=full, dtype=p.dtype, meta=meta)
        timings = {"build": round(t_build, 4), "transfer": round(t_transfer, 4),
                   "capture": trace.meta["capture_seconds"]}
        arrays, stats, smeta = dict(trace.arrays), dict(trace.stats), {}
        if steps:
            t2 = time.perf_counter()
            sa, ss, smeta = adapter.train_steps(model, data.inputs, loss, data.targets, steps=steps, full=full,
                                                dtype=p.dtype, optimizer=optimizer)
            arrays.update(sa)
            stats.update(ss)
            timings["steps"] = round(time.perf_counter() - t2, 4)
        out[state] = replace(trace, arrays=arrays, stats=stats, stages=p.summarize_stages(trace.arrays),
                             meta={**trace.meta, **smeta, "timings": timings})
    return out, weights


def _untransferred(problems: list[Any], adapter: Adapter, model: Any) -> list[str]:
    """Jittor modules that received no torch values at all (see :func:`aligner.weights.untransferred_modules`)."""
    if not problems:
        return []
    params, _ = adapter.inventory(model)
    return untransferred_modules(problems, [p.name for p in params if p.kind != ParamKind.CONSTANT])


def capture_pair(pair_name: str, framework: Framework | str, out_dir: str | os.PathLike[str], *,
                 states: Sequence[str] | None = None, full: bool = True,
                 weights_from: str | os.PathLike[str] | None = None,
                 jittor_options: dict[str, Any] | None = None, steps: int = 0,
                 optimizer: dict[str, Any] | None = None, **pair_options: Any) -> Path:
    """Capture one framework's side of a registered pair and write the trace set to ``out_dir``.

    The torch side also stores each state's weights in the set; the Jittor side loads them from
    ``weights_from`` (a torch trace set) when given, else rebuilds the torch model in-process.
    ``full=False`` keeps statistics only. Other keywords are pair options (num_classes, img_size, seed,
    dtype, batch, ...).
    """
    pair = get_pair(pair_name, **pair_options)
    fw = Framework(framework)
    st = list(states or pair.states)
    weights = None
    if fw == Framework.JITTOR and weights_from is not None:
        weights = {s: read_weights(weights_from, s) for s in st}
    traces, used = _capture(pair, fw, states=st, full=full, weights=weights, jittor_options=jittor_options,
                            steps=steps, optimizer=optimizer)
    stored = used if fw == Framework.TORCH else None
    return write_trace_set(traces, out_dir, extra={"pair": pair.label, "config": pair.config()}, weights=stored)


def capture_models(torch_model: Any, jittor_model: Any, inputs: Sequence[np.ndarray], *, targets: Any = None,
                   torch_loss: LossFn | None = None, jittor_loss: LossFn | None = None, transfer: bool = True,
                   full: bool = True, dtype: str | None = None, seed: int = 0,
                   state: str = "custom", name_map: Mapping[str, str] | None = None,
                   torch_trace: Trace | None = None) -> tuple[Trace, Trace]:
    """Generic capture of any torch model and its Jittor port on the same numpy inputs.

    With ``transfer`` the torch weights are copied into the Jittor model first (problems in the
    Jittor trace's ``meta["weight_transfer"]``). Without losses a seeded probe loss (sum of outputs
    times fixed random weights) gives every output a gradient on both sides. ``name_map`` as in
    :func:`capture_in_process`. ``torch_trace``: the torch side already captured (from the reference
    cache): only the port is captured.
    """
    inputs = [np.asarray(a) for a in inputs]
    dtype = dtype or next((str(a.dtype) for a in inputs if a.dtype.kind == "f"), "float32")
    ta, ja = get_adapter(Framework.TORCH), get_adapter(Framework.JITTOR)
    problems = []
    if transfer:
        params, _ = ta.inventory(torch_model)
        keep = {p.name for p in params if p.kind != ParamKind.CONSTANT}
        src = {k: v for k, v in ta.state_arrays(torch_model).items() if k in keep}
        problems = transfer_arrays(src, ja, jittor_model, name_map=name_map)
    env = environment()
    meta = {**env, "pair": "custom", "config": {}, "seed": seed, "state": state, "states": [state]}
    if torch_loss is None and jittor_loss is None:
        torch_loss = jittor_loss = probe_loss(seed)
    tt = torch_trace if torch_trace is not None else \
        ta.capture(torch_model, inputs, torch_loss, targets, full=full, dtype=dtype, meta={**meta, "weight_transfer": []})
    jt_ = ja.capture(jittor_model, inputs, jittor_loss, targets, full=full, dtype=dtype,
                     meta={**meta, "weight_transfer": [asdict(w) for w in problems],
                           "weight_untransferred": _untransferred(problems, ja, jittor_model) if transfer else []})
    return tt, jt_

