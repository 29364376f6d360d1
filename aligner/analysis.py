"""The framework-free analysis: one state's traces at a time -> comparisons -> findings -> result.

:class:`Analysis` compares a state as soon as its traces exist, keeps only light copies (so a large
state's activations can be freed), and at the end adds the state-independent checks (inventory,
counts, modes, anchors), orders the findings and builds the :class:`AlignmentResult`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aligner.analysis_records import Comparison, Finding, Kind, StateComparison, StateTraces
from aligner.compare import (compare_rows, compare_steps, confirm_with_port64, needs_port_sample, noise_reference,
                             scales_of, unreturned_outputs)
from aligner.divergence import first_divergence, locate
from aligner.errors import NoMatchError
from aligner.inventory import modules_block, params_block
from aligner.isolation import CallPair, IsolatedModule, Isolate, judge_isolated
from aligner.match import load_mapping, match_traces
from aligner.noise_gate import floor_not_needed
from aligner.records import FindingType, Severity, Trace
from aligner.result import AlignmentResult
from aligner.rules.divergence import (divergence_findings, divergence_from_findings, nan_inf_findings,
                                      port_rounding_finding, shape_findings, step_findings)
from aligner.rules.gradients import grad_pattern, gradient_findings, sparsity_finding
from aligner.rules.isolation import isolation_findings
from aligner.rules.loss import loss_findings
from aligner.rules.modes import dedupe_modes, mode_findings, mode_locations
from aligner.rules.order import sort_findings
from aligner.rules.pair import NO_RULES, PairRules
from aligner.rules.structure import (count_drift_findings, inventory_findings, noise_reference_findings,
                                     transfer_findings, unmatched_findings, unreturned_output_findings)
from aligner.sides import Side
from aligner.tolerances import Tolerances

__all__ = ["Analysis", "analyze"]


def _state_ctx(st: StateTraces, modes: set[str]) -> dict[str, Any]:
    """What the divergence rules read about the reference besides the rows (see ``divergence_findings``)."""
    cfg = st.torch.meta.get("config") or {}
    return {"img_size": cfg.get("img_size"), "dtype": st.torch.meta.get("dtype"),
            "first_call": st.torch.first_calls(), "param_module": {p.name: p.module for p in st.torch.params},
            "mode_locations": modes}


def _light(trace: Trace) -> Trace:
    """The trace without its activation tensors (what the state-independent checks still read)."""
    keep = {k: v for k, v in trace.arrays.items() if k.startswith(("param/", "stage/"))}
    return replace(trace, arrays=keep, stats={})


class Analysis:
    """Incremental analysis: :meth:`add` one state's traces at a time (their big tensors can be freed
    right after), then :meth:`result`. ``analyze`` is this in one call."""

    def __init__(self, *, tolerances: Tolerances | Mapping[str, Any] | None = None,
                 mapping: Mapping[str, str] | str | Path | None = None,
                 progress: Callable[[str], None] | None = None, rules: PairRules | None = None) -> None:
        self._tol_in, self.maps, self.progress = tolerances, load_mapping(mapping), progress
        self.rules = rules or NO_RULES
        self.tol: Tolerances | None = None
        self.states: list[StateTraces] = []          # light copies
        self.comps: list[StateComparison] = []
        self.findings: list[Finding] = []
        self.patterns: dict[str, Any] = {}
        self.loss: dict[str, Any] = {}
        self.assign: dict[str, Any] = {}
        self.step_rows: list[Comparison] = []
        self.steps: list[dict[str, Any]] = []
        self.isolation: dict[str, list[IsolatedModule]] = {}
        self.isolation_skipped: list[str] = []  # states not replayed: their end-to-end comparison matched
        self.floor_not_needed: list[str] = []   # float32 states judged without their float64 reference

    def add(self, st: StateTraces, port64: Trace | Callable[[], Trace | None] | None = None,
            isolate: Isolate | None = None, isolate_all: bool = True,
            reference64: Callable[[], Trace | None] | None = None) -> StateComparison:
        """Compare one state and derive its findings; keeps only light copies of the traces.

        ``port64``: the port's own float64 run of this state (or a function capturing it, called only when
        some float32 tensor fails its noise-floor bound); rows it shows to differ by the port's float32
        rounding only pass (:func:`aligner.compare.confirm_with_port64`). ``isolate``: replays this state's
        matched module calls on the reference's own inputs (:mod:`aligner.adapters.isolation`); each
        module whose own computation differs becomes a ``module_deviation`` finding; without ``isolate_all``
        only when the end-to-end comparison of the state finds a difference (an error finding or a failing row).
        ``reference64``: a float32 state's float64 reference, captured only when some tensor needs it
        (:func:`aligner.noise_gate.floor_not_needed`: every tensor within half its bound of the float32
        reference passes with any noise floor, so the verdicts are those of a run with the floor)."""
        if self.tol is None:
            self.tol = Tolerances.coerce(self._tol_in, str(st.torch.meta.get("dtype") or "float32"))
        tol, maps = self.tol, self.maps
        if self.progress:
            self.progress(f"compare {st.state}")
        matches = match_traces(st.torch, st.jittor, maps)
        sides = (Side(st.torch), Side(st.jittor))
        rows = None
        memo: dict[tuple[Any, ...], Any] = {}  # metrics of tensor pairs, shared by the passes over this state
        scales = scales_of(st.torch)
        noise = noise_reference(st, tol)
        if reference64 is not None and st.other is None and tol.noise_floor:  # floor off: never captured
            rows = floor_not_needed(st, tol, matches, sides, maps, self.rules, memo=memo, scales=scales)
            if rows is not None:
                self.floor_not_needed.append(st.state)
            else:
                if self.progress:
                    self.progress(f"[{st.state}] some tensors are not within half their bound: "
                                  "capturing the float64 reference (noise floor)")
                st = replace(st, torch64=reference64())
                noise = noise_reference(st, tol)
        if rows is None:
            rows = compare_rows(st, tol, noise, matches, sides, maps, memo=memo, scales=scales)
        step_rows, block = compare_steps(st, tol, noise, maps)
        rescued: list[Comparison] = []
        if port64 is not None and noise.trace is not None and not noise.lower \
                and needs_port_sample(rows + step_rows):
            if callable(port64):
                if self.progress:
                    self.progress(f"[{st.state}] some tensors leave the noise floor: checking the port in float64")
                port64 = port64()
            if port64 is not None:
                before = {id(r) for r in rows + step_rows}
                rows = confirm_with_port64(rows, noise, port64)
                step_rows = confirm_with_port64(step_rows, noise, port64)
                rescued = [r for r in rows + step_rows if id(r) not in before]
                for b in block:
                    name = f"{b['state']}/step{b['step']}"
                    b["failed"] = sum(1 for r in step_rows if r.state == name and not r.ok)
        where = locate(st.state, rows, matches, sides, str(st.torch.meta.get("dtype") or "float32"))
        sc = StateComparison(state=st.state, matches=matches, rows=where.rows, forward=where.forward,
                             backward=where.backward, noise_floor_used=noise.trace is not None,
                             reference_mismatch=noise.mismatch, uncaptured=where.uncaptured)
        self.comps.append(sc)
        rules = self.rules
        f = divergence_findings(sc, _state_ctx(st, set()), rules.forward_cause)
        f += nan_inf_findings(sc) + shape_findings(sc)
        if len(self.comps) == 1:  # what the models return does not depend on the state
            f += unreturned_output_findings(*unreturned_outputs(matches))
        f += gradient_findings(st.state, st.torch, st.jittor, sc.rows, maps)
        pat = grad_pattern(st.torch, st.jittor, sc.rows, maps)
        self.patterns[st.state] = pat
        info = sparsity_finding(st.state, st.torch, pat)
        if info is not None:
            f.append(info)
        lf, lb = loss_findings(st, tol)
        af, ab = rules.assigner(st, tol) if rules.assigner else ([], None)
        f += lf + af + (rules.reference(st) if rules.reference else []) + noise_reference_findings(sc)
        if rules.explain:
            f = rules.explain(f, st.state, ab)
        if lb is not None:
            self.loss[st.state] = lb
        if ab is not None:
            self.assign[st.state] = ab
        self.step_rows += step_rows
        self.steps += block
        f += step_findings(step_rows, block)
        info = port_rounding_finding(st.state, rescued)
        if info is not None:
            f.append(info)
        self.findings += f
        if isolate is not None:
            if isolate_all or _differs(sc, step_rows, f):
                self._isolate(st, matches, isolate, scales)
            else:
                self.isolation_skipped.append(st.state)
        self.states.append(StateTraces(st.state, _light(st.torch), _light(st.jittor)))
        return sc

    def _isolate(self, st: StateTraces, matches: Any, isolate: Isolate, scales: dict[str, float]) -> None:
        """Replay and judge this state's matched calls (the root, the whole model, is the end-to-end run)."""
        assert self.tol is not None
        if self.progress:
            self.progress(f"[{st.state}] module isolation: each module on the reference's own inputs")
        calls = [CallPair(m.torch.order, m.torch.module, m.torch.call_index, m.jittor.module, m.jittor.call_index,
                          m.torch.module_type) for m in matches.matches if m.torch.module and m.jittor.module]
        tol = self.tol
        judged: list[IsolatedModule] = []
        isolate(calls, lambda ic: judged.append(judge_isolated(ic, tol, scales)))
        self.isolation[st.state] = judged

    def result(self, run: Mapping[str, Any] | None = None) -> AlignmentResult:
        if not self.states or self.tol is None:
            raise NoMatchError("no model state was captured: nothing to compare")
        states, comps, maps = self.states, self.comps, self.maps
        if not any(sc.matches.matches for sc in comps) and not any(sc.rows for sc in comps):
            raise NoMatchError("no module call and no parameter could be paired between the two traces; "
                               "pass a mapping {torch_name: jittor_name} or check that both captured the same model")
        first = states[0]
        static = (inventory_findings(first.torch, first.jittor, maps)
                  + count_drift_findings(first.torch, first.jittor, maps)
                  + [f for st, sc in zip(states, comps)
                     for f in transfer_findings([r for r in sc.rows if r.kind == Kind.PARAM], st.torch,
                                                st.jittor)][:1]
                  + unmatched_findings(comps[0].matches))
        modes = dedupe_modes([f for st in states for f in mode_findings(st.torch, st.jittor, maps)])
        rules = self.rules
        anchors = rules.anchors(first.torch, first.jittor) if rules.anchors else None
        static += modes + (rules.anchor_findings(anchors) if rules.anchor_findings else [])
        static += isolation_findings(self.isolation)
        findings = list(self.findings)
        # forward divergences at a module with a mode mismatch name it as the likely cause
        mode_locs = mode_locations(modes)
        if mode_locs:
            findings = [f for f in findings if f.type != FindingType.FORWARD_DIVERGENCE]
            for st, sc in zip(states, comps):
                findings += [f for f in divergence_findings(sc, _state_ctx(st, mode_locs), rules.forward_cause)
                             if f.type == FindingType.FORWARD_DIVERGENCE]
        state_names = [st.state for st in states] + [f"{b['state']}/step{b['step']}" for b in self.steps]
        all_findings = sort_findings(findings + static, state_names)
        run_info = _run_block(states, self.tol, run)
        run_info["uncaptured_gradients"] = {sc.state: sc.uncaptured for sc in comps if sc.uncaptured}
        run_info["noise_floor_available"] = all(sc.noise_floor_used or sc.state in self.floor_not_needed
                                                for sc in comps)
        run_info["noise_floor_not_needed"] = list(self.floor_not_needed)
        first_div = first_divergence(comps) or divergence_from_findings(all_findings)
        return AlignmentResult(run_info, comps, all_findings, first_div,
                               params_block(first.torch, first.jittor, self.patterns, maps),
                               modules_block(first.torch, first.jittor, maps), anchors, self.loss,
                               self.assign, self.steps, self.step_rows,
                               _isolation_block(self.isolation, self.isolation_skipped))


def analyze(states: Sequence[StateTraces], *, tolerances: Tolerances | Mapping[str, Any] | None = None,
            mapping: Mapping[str, str] | str | Path | None = None, run: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None, rules: PairRules | None = None,
            port64: Mapping[str, Trace | Callable[[], Trace | None]] | None = None,
            isolate: Mapping[str, Isolate] | None = None,
            reference64: Mapping[str, Callable[[], Trace | None]] | None = None) -> AlignmentResult:
    """Compare captured traces (one :class:`StateTraces` per model state) and derive findings
    (``rules``: the pair's own, :meth:`aligner.pairs.base.Pair.rules`; ``port64``: the port's own float64
    run per state, or a function capturing it; ``isolate``: the module-isolation runner per state;
    ``reference64``: per float32 state, a function capturing its float64 reference when needed; see
    :meth:`Analysis.add`)."""
    if not states:
        raise NoMatchError("no model state was captured: nothing to compare")
    acc = Analysis(tolerances=tolerances, mapping=mapping, progress=progress, rules=rules)
    for st in states:
        acc.add(st, port64=(port64 or {}).get(st.state), isolate=(isolate or {}).get(st.state),
                reference64=(reference64 or {}).get(st.state))
    return acc.result(run)


def _differs(sc: StateComparison, step_rows: Sequence[Comparison], findings: Sequence[Finding]) -> bool:
    """Whether a state's end-to-end comparison found a difference worth locating module by module."""
    return any(not r.ok for r in [*sc.rows, *step_rows]) or any(f.severity == Severity.ERROR for f in findings)


def _isolation_block(by_state: Mapping[str, Sequence[IsolatedModule]],
                     matched: Sequence[str] = ()) -> dict[str, Any]:
    """results.json ``isolation``: per state, how many calls were replayed, and every call that deviates or
    could not be replayed, with its judged tensors; a state not replayed because it matched end to end
    (``isolate="auto"``) has ``"replayed": 0`` and ``"not_needed": true``."""
    block: dict[str, Any] = {s: {"replayed": sum(1 for m in mods if m.skipped is None),
                                 "deviating": sum(1 for m in mods if not m.ok),
                                 "skipped": sum(1 for m in mods if m.skipped is not None),
                                 "calls": [m.to_dict() for m in mods if not m.ok or m.skipped is not None]}
                             for s, mods in by_state.items()}
    for s in matched:
        block[s] = {"replayed": 0, "deviating": 0, "skipped": 0, "calls": [], "not_needed": True}
    return block


def _run_block(states: Sequence[StateTraces], tol: Tolerances, run: Mapping[str, Any] | None) -> dict[str, Any]:
    t, j = states[0].torch.meta, states[0].jittor.meta
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    digest = hashlib.sha1(f"{now.isoformat()}{os.getpid()}{id(states)}".encode()).hexdigest()[:6]
    versions = {**(t.get("versions") or {}), **(j.get("versions") or {})}
    base = {
        "id": f"{now:%Y%m%d-%H%M%S}-{digest}",
        "created": now.isoformat().replace("+00:00", "Z"),
        "pair": t.get("pair") or "custom",
        "config": t.get("config") or {},
        "dtype": t.get("dtype") or "float32",
        "seed": t.get("seed"),
        "states": [st.state for st in states],
        "versions": versions,
        "onednn": j.get("onednn"),
        "timings": {},
        "tolerances": tol.summary(),
    }
    if run:
        base.update(dict(run))
    return base
