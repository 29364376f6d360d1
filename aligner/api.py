"""Public entry points of the aligner core: capture (or load) traces, analyse, return the result.

``run_pair`` (a registered pair, keyword options), ``run`` (the same with an explicit :class:`RunConfig`,
torch :class:`Reference` and Jittor :class:`Port`), ``align`` (any two models) and ``diff`` (trace sets captured
elsewhere) all end in :class:`aligner.analysis.Analysis`; framework imports happen lazily, inside the
capture side. ``write_results`` writes results.json (schema 1) atomically.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aligner.analysis import Analysis, analyze
from aligner.capture import capture_in_process
from aligner.analysis_records import StateTraces
from aligner.comparability import check_port64, check_traces
from aligner.errors import IncomparableError, NoMatchError
from aligner.match import load_mapping
from aligner.pairs import Pair, rules_for
from aligner.records import Trace
from aligner.result import RESULTS_SCHEMA, AlignmentResult, to_jsonable, write_results
from aligner.reference import Reference, compact
from aligner.reference_cache import ReferenceCache
from aligner.runconfig import Port, RunConfig
from aligner.tolerances import Tolerances

__all__ = ["RESULTS_SCHEMA", "AlignmentResult", "Analysis", "analyze", "align", "run_pair", "run", "diff",
           "RunConfig", "Reference", "Port", "write_results", "to_jsonable"]


# ---------------------------------------------------------------------------------------------
# entry points that capture or load traces (framework imports happen inside the capture side)


def _timed(timings: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - t0, 4)


# what a comparison may capture or replay on demand, timed under its own key (not as comparing)
_ON_DEMAND = ("capture_torch64", "capture_jittor64", "isolate")


def _timed_apart(timings: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    """:func:`_timed`, less the on-demand captures ``fn`` made (each already timed under its own key)."""
    before = sum(timings.get(k, 0.0) for k in _ON_DEMAND)
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        spent = time.perf_counter() - t0 - (sum(timings.get(k, 0.0) for k in _ON_DEMAND) - before)
        timings[key] = round(timings.get(key, 0.0) + max(spent, 0.0), 4)


def run_pair(pair: str | Pair, config: RunConfig | None = None, *, out_dir: str | Path | None = None,
             progress: Callable[[str], None] | None = None, port: Port | None = None,
             **options: Any) -> AlignmentResult:
    """Capture a registered pair (name or Pair object) in both frameworks, diff, return the result.

    Keyword options are fields of :class:`RunConfig` (states, noise_floor, stats_only, steps,
    tolerances, mapping; they override ``config``) or options of the pair (seed, dtype, num_classes,
    img_size, batch, ...). ``port``: the Jittor side (default: the pair's own port). ``out_dir`` writes
    results.json. See :func:`run` for the explicit form.
    """
    from aligner.pairs import get_pair  # noqa: PLC0415 - lazy

    cfg, pair_options = RunConfig.split(config, options)
    if isinstance(pair, str):
        p = get_pair(pair, **pair_options)
    else:
        p = replace(pair, **{k: v for k, v in pair_options.items() if v is not None}) if pair_options else pair
    return run(p, cfg, out_dir=out_dir, progress=progress, port=port)


def run(pair: Pair, config: RunConfig = RunConfig(), *, reference: Reference | None = None,
        port: Port | None = None, out_dir: str | Path | None = None,
        progress: Callable[[str], None] | None = None) -> AlignmentResult:
    """Run ``pair`` under ``config``: the torch ``reference`` (by default captured here; pass one to reuse
    its captures across runs of the same configuration) against the Jittor ``port`` (by default the
    pair's own build).

    With ``config.noise_floor`` the torch reference is also captured at the other precision and every
    tensor is judged against the reference's own rounding error; ``config.steps > 0`` also runs that
    many optimizer steps on both sides and records the drift.
    """
    say = progress or (lambda _msg: None)
    ref = reference if reference is not None else Reference(pair, config, cache=ReferenceCache.of(config.cache))
    ref.check(pair, config)
    port = port or Port()
    timings: dict[str, float] = {}
    # the torch model is built once: its states are what both sides load, its init summary is recorded
    _timed(timings, "build_torch", ref.model)
    weights = _timed(timings, "transfer", ref.weights)
    # the port's own initialisation, summarised before the first transfer overwrites it (aligner.initcheck)
    jinit: dict[str, Any] | bool = False
    jittor_model = port.model
    if jittor_model is None:
        say("building the jittor model (the first run compiles kernels)")
        build = (lambda: pair.build_port(port.factory)) if port.factory is not None else \
            (lambda: pair.build_jittor(**dict(port.options)))
        jittor_model = _timed(timings, "build_jittor", build)
        jinit = _timed(timings, "build_jittor", lambda: _init_summary(jittor_model))
    extra = {"steps": config.steps} if config.steps else {}
    # One state at a time: its three traces are compared and their tensors freed before the next
    # state is captured (a GOLD-YOLO state at 640 holds several GB of activations).
    acc = Analysis(tolerances=config.tolerances, mapping=config.mapping, progress=progress, rules=pair.rules())
    hi = pair.dtype == "float32"
    # the Jittor side's loss: the port's own (--port-loss) when given, else the pair's
    jpair = replace(pair, port_loss=port.loss) if port.loss is not None else pair
    loss_blocks: dict[str, Any] = {}
    sample = _PortSample(jpair, port, weights, config, jittor_model, timings, acc.maps) \
        if (hi and config.noise_floor) else None
    for s in ref.states:
        say(f"[{s}] capturing {pair.label} in torch")
        tt = _timed(timings, "capture_torch", lambda: ref.trace(s))
        say(f"[{s}] capturing jittor")
        first = s == ref.states[0]  # the init check is state-independent: recorded with the first state only
        jt_ = _timed(timings, "capture_jittor", lambda: capture_in_process(
            jpair, "jittor", states=[s], full=not config.stats_only, weights={s: weights[s]}, model=jittor_model,
            init=jinit if first else False, name_map=acc.maps, **extra)[s])
        other: Trace | None = None
        ref64: Callable[[], Trace | None] | None = None
        if config.noise_floor and hi:  # captured (or loaded from the cache) only when a tensor needs it
            ref64 = lambda s=s: _timed(timings, "capture_torch64", lambda: ref.other_trace(s))  # noqa: E731
        elif config.noise_floor:
            say(f"[{s}] capturing the float32 reference (noise floor)")
            other = _timed(timings, "capture_torch32", lambda: ref.other_trace(s))
        iso = _isolation(pair, ref, jittor_model, weights[s], acc.maps, sample, timings, say) \
            if config.isolate != "never" and not config.stats_only else None
        _timed_apart(timings, "compare", lambda: acc.add(
            StateTraces(s, tt, jt_, other if hi else None, None if hi else other),
            port64=sample.capturer(s) if sample else None, isolate=iso, isolate_all=config.isolate == "always",
            reference64=ref64))
        del tt, jt_, other
        if port.loss is not None:
            say(f"[{s}] checking the port's loss alone on the reference's head outputs")
            _timed(timings, "loss_check", lambda: _check_port_loss(pair, ref, weights[s], s, port.loss, config,
                                                                   acc, loss_blocks))
    result = _timed(timings, "compare", lambda: acc.result())
    result.run["timings"] = {**timings, **result.run.get("timings", {})}
    if loss_blocks:
        result.run["loss_check"] = loss_blocks
    if out_dir is not None:
        write_results(result, out_dir)
    return result


def _check_port_loss(pair: Pair, ref: Reference, weights: dict[str, np.ndarray], state: str,
                     make_loss: Callable[[], Any], config: RunConfig, acc: Analysis,
                     blocks: dict[str, Any]) -> None:
    """The port's own loss alone (:mod:`aligner.adapters.loss_check`): its findings join the analysis's
    (``acc.findings``, ordered with the rest by ``acc.result``) and its block goes to ``blocks[state]``."""
    from aligner.adapters.loss_check import isolate_loss, reference_head  # noqa: PLC0415 - lazy: frameworks
    from aligner.rules.loss_check import loss_check_findings  # noqa: PLC0415

    head = reference_head(pair, ref.model(), weights)
    inputs = isolate_loss(pair, head, make_loss, other=config.noise_floor)
    findings, blocks[state] = loss_check_findings(state, inputs, acc.tol or Tolerances.coerce(
        config.tolerances, pair.dtype), pair.item_names)
    acc.findings += findings


class _PortSample:
    """The port's own float64 run of a state, captured only when the analysis asks for it (some float32
    tensor left the reference's noise bound): the same port (the pair's build with the same options, or
    a float64 copy of the caller's model) with the same weights, cast exactly to float64."""

    def __init__(self, pair: Pair, port: Port, weights: dict[str, dict[str, np.ndarray]], config: RunConfig,
                 model32: Any, timings: dict[str, float], name_map: dict[str, str]) -> None:
        self.pair64, self.name_map = replace(pair, dtype="float64"), name_map
        self.port, self.weights, self.config, self.model32, self.timings = port, weights, config, model32, timings
        self.model: Any = None

    def _model(self) -> Any:
        if self.model is None:
            if self.port.factory is not None:
                self.model = self.pair64.build_port(self.port.factory)
            elif self.port.model is None:
                self.model = self.pair64.build_jittor(**dict(self.port.options))
            else:
                from aligner.adapters import get_adapter  # noqa: PLC0415 - lazy: imports jittor
                self.model = get_adapter("jittor").float64_copy(self.model32)
        return self.model

    def capturer(self, state: str) -> Callable[[], Trace | None]:
        def capture() -> Trace | None:
            w64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in self.weights[state].items()}
            extra = {"steps": self.config.steps} if self.config.steps else {}
            return _timed(self.timings, "capture_jittor64", lambda: capture_in_process(
                self.pair64, "jittor", states=[state], full=not self.config.stats_only, weights={state: w64},
                model=self._model(), init=False, name_map=self.name_map, **extra)[state])
        return capture


def _isolation(pair: Pair, ref: Reference, jittor_model: Any, weights: dict[str, np.ndarray],
               name_map: dict[str, str], sample: _PortSample | None, timings: dict[str, float],
               say: Callable[[str], None]) -> Callable[..., None]:
    """The module-isolation runner of one state: both models put back into the state's weights and mode,
    the reference's own inputs, the port's float64 twin (the noise sample's, else a copy) when asked for."""
    def run(calls: list[Any], sink: Callable[[Any], None]) -> None:
        from aligner.adapters import get_adapter  # noqa: PLC0415 - lazy: imports the frameworks
        from aligner.adapters.isolation import isolate_models  # noqa: PLC0415
        from aligner.weights import transfer_arrays  # noqa: PLC0415

        ta, ja = get_adapter("torch"), get_adapter("jittor")
        t0 = time.perf_counter()
        tm = ref.model()
        ta.load_arrays(tm, weights)
        pair.prepare(tm, "torch")
        transfer_arrays(weights, ja, jittor_model, name_map=name_map)
        pair.prepare(jittor_model, "jittor")

        def jittor64() -> Any:
            m = sample._model() if sample is not None else ja.float64_copy(jittor_model)
            w64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in weights.items()}
            transfer_arrays(w64, ja, m, name_map=name_map)
            pair.prepare(m, "jittor")
            return m
        try:
            isolate_models(tm, jittor_model, pair.make_inputs().inputs, calls, sink, name_map=name_map,
                           seed=pair.seed, jittor64=jittor64, progress=say)
        finally:
            timings["isolate"] = round(timings.get("isolate", 0.0) + time.perf_counter() - t0, 4)
    return run


def _init_summary(model: Any) -> dict[str, Any]:
    from aligner.adapters import get_adapter  # noqa: PLC0415 - lazy: imports jittor
    from aligner.initcheck import init_summary  # noqa: PLC0415
    return init_summary(get_adapter("jittor").state_arrays(model))


def align(torch_model: Any, jittor_model: Any, inputs: Sequence[np.ndarray] | np.ndarray,
          loss: Any = None, *, targets: Any = None, dtype: str = "float32", seed: int = 0,
          tolerances: Tolerances | Mapping[str, Any] | None = None,
          mapping: Mapping[str, str] | str | Path | None = None, stats_only: bool = False,
          noise_floor: bool = True, transfer: bool = True, state: str = "custom",
          out_dir: str | Path | None = None, cache: bool | str | Path = True) -> AlignmentResult:
    """Align any PyTorch model with its Jittor port on the same numpy inputs.

    ``loss`` is ``fn(outputs, targets, ctx) -> scalar`` used on both sides, or a pair
    ``(torch_loss, jittor_loss)``; None uses a seeded probe loss (sum of outputs times fixed random
    weights) so every output gets a gradient. The torch weights are copied into the port first
    (``transfer``). With ``noise_floor`` and float32, a float64 deep copy of the torch model is run as
    the noise-floor reference, captured only when some tensor needs it (:mod:`aligner.noise_gate`).
    ``cache``: the reference cache (as in :class:`RunConfig`): the torch model's traces are reused while the
    model, its weights, modes and code, the loss, the inputs and the options stay the same
    (:mod:`aligner.model_reference`), so a rerun after editing the port captures only the port.
    """
    import copy  # noqa: PLC0415

    from aligner.adapters import get_adapter, probe_loss  # noqa: PLC0415 - lazy
    from aligner.capture import capture_models, environment  # noqa: PLC0415
    from aligner.model_reference import model_reference_key  # noqa: PLC0415

    xs = [np.asarray(inputs)] if isinstance(inputs, np.ndarray) else [np.asarray(a) for a in inputs]
    xs = [a.astype(dtype) if a.dtype.kind == "f" else a for a in xs]
    t_loss, j_loss = (loss if isinstance(loss, tuple) else (loss, loss))
    store = ReferenceCache.of(cache)
    ta = get_adapter("torch")
    key = model_reference_key(ta, torch_model, xs, targets, t_loss, dtype=dtype, seed=seed, full=not stats_only,
                              versions=ta.versions(), environment=environment()) if store is not None else None
    if t_loss is None:
        t_loss = j_loss = probe_loss(seed)
    timings: dict[str, float] = {}

    def entry(which: str) -> dict[str, Any] | None:
        return {**key, "which": which, "state": state} if key is not None else None

    def cached(which: str, make: Callable[[], Trace]) -> Trace:
        where = entry(which)
        hit = store.load(where) if (store is not None and where is not None) else None
        if hit is not None:
            return hit
        trace = make()
        if store is not None and where is not None:
            store.store(where, trace)
        return trace

    ref_entry = entry("reference")
    loaded = _timed(timings, "capture", lambda: store.load(ref_entry)) \
        if (store is not None and ref_entry is not None) else None
    tt, jt_ = _timed(timings, "capture", lambda: capture_models(
        torch_model, jittor_model, xs, targets=targets, torch_loss=t_loss, jittor_loss=j_loss,
        transfer=transfer, full=not stats_only, dtype=dtype, seed=seed, state=state,
        name_map=load_mapping(mapping), torch_trace=loaded))
    if store is not None and ref_entry is not None and loaded is None:
        store.store(ref_entry, tt)
    # the float64 reference is captured only when some tensor needs it (aligner.noise_gate); the copy is made
    # now, before anything can change the model
    model64 = None
    if noise_floor and dtype == "float32":
        try:
            model64 = copy.deepcopy(torch_model).double()
        except Exception:  # noqa: BLE001 - a model that cannot be copied gets no noise floor
            model64 = None

    def reference64() -> Trace:
        x64 = [a.astype("float64") if a.dtype.kind == "f" else a for a in xs]
        meta = {**environment(), "pair": "custom", "config": {}, "seed": seed, "state": state,
                "states": [state], "weight_transfer": []}
        return _timed(timings, "capture_torch64", lambda: cached("other", lambda: compact(ta.capture(
            model64, x64, t_loss, _cast_targets(targets), full=not stats_only, dtype="float64", meta=meta))))

    def port64() -> Trace:
        """The port's own float64 run (asked for only when a tensor leaves the noise floor): a float64
        copy of the port, which already holds the transferred weights."""
        ja = get_adapter("jittor")
        j64 = ja.float64_copy(jittor_model)
        x64 = [a.astype("float64") if a.dtype.kind == "f" else a for a in xs]
        meta = {**environment(), "pair": "custom", "config": {}, "seed": seed, "state": state, "states": [state],
                "weight_transfer": []}
        return _timed(timings, "capture_jittor64", lambda: ja.capture(
            j64, x64, j_loss, _cast_targets(targets), full=not stats_only, dtype="float64", meta=meta))

    lazy = {state: reference64} if model64 is not None else None
    if lazy and stats_only:  # statistics cannot show a tensor close enough: the reference is captured now
        t64, lazy = reference64(), None
    else:
        t64 = None
    result = _timed_apart(timings, "compare", lambda: analyze([StateTraces(state, tt, jt_, t64)],
                                                        tolerances=tolerances, mapping=mapping,
                                                        port64={state: port64} if model64 is not None else None,
                                                        reference64=lazy))
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


def _checked_port64(port64: Trace, port: Trace) -> Trace:
    check_port64(port64, port)
    return port64


def _trace_states(root: str | Path) -> tuple[str, dict[str, Callable[[], Trace]]]:
    """(framework, state -> loader of that state's trace) for a trace set or a single trace dir."""
    from aligner import trace_io  # noqa: PLC0415 - numpy only

    return trace_io.open_trace_set(root)  # the index is checked here, each state when loaded


def diff(trace_dir_a: str | Path, trace_dir_b: str | Path, *, reference64: str | Path | None = None,
         port64: str | Path | None = None, tolerances: Tolerances | Mapping[str, Any] | None = None,
         mapping: Mapping[str, str] | str | Path | None = None, out_dir: str | Path | None = None,
         progress: Callable[[str], None] | None = None) -> AlignmentResult:
    """Diff two trace sets written by ``aligner capture`` (reference first), optionally with the torch
    reference captured at the other precision (``reference64``: float64 for a float32 run, float32 for
    a float64 run) for the noise floor, and the port captured in float64 (``port64``), which tells the port's
    own float32 rounding from a real difference. Gives the same result as the in-process run."""
    timings: dict[str, float] = {}
    fa, a_states = _trace_states(trace_dir_a)
    fb, b_states = _trace_states(trace_dir_b)
    c_states = _trace_states(reference64)[1] if reference64 is not None else {}
    pf, p_states = _trace_states(port64) if port64 is not None else (None, {})
    if fa != "torch" and fb == "torch":
        a_states, b_states = b_states, a_states  # the reference is the torch side whatever the order
    if pf is not None and pf != (fa if fb == "torch" else fb):
        raise IncomparableError(f"--port64 is a {pf} trace set, not the port's")
    states = [s for s in a_states if s in b_states]
    if not states:
        raise NoMatchError(f"the trace sets share no model state ({list(a_states)} vs {list(b_states)})")
    acc: Analysis | None = None
    for s in states:  # one state in memory at a time
        a = _timed(timings, "load", lambda: a_states[s]())
        if acc is None:  # the pair's own rules, by the name the capture recorded
            acc = Analysis(tolerances=tolerances, mapping=mapping, progress=progress,
                           rules=rules_for(a.meta.get("pair")))
        b = _timed(timings, "load", lambda: b_states[s]())
        c = _timed(timings, "load", lambda: c_states[s]()) if s in c_states else None
        check_traces(a, b, c)  # one line naming what differs, before anything is compared
        hi = str(a.meta.get("dtype", "float32")) == "float32"
        p64 = (lambda s=s, b=b: _checked_port64(p_states[s](), b)) if s in p_states else None
        _timed(timings, "compare", lambda: acc.add(StateTraces(s, a, b, c if hi else None, None if hi else c),
                                                   port64=p64))
        del a, b, c
    result = _timed(timings, "compare", lambda: acc.result())
    result.run["timings"] = timings
    if out_dir is not None:
        write_results(result, out_dir)
    return result
