"""The framework-free analysis: one state's traces at a time -> comparisons -> findings -> result.

:class:`Analysis` compares a state as soon as its traces exist, keeps only light copies (so a large
state's activations can be freed), and at the end adds the state-independent checks (inventory,
counts, modes, anchors), orders the findings and builds the :class:`AlignmentResult`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aligner.compare import (Comparison, Divergence, StateComparison, StateTraces, compare_state,
                             compare_steps)
from aligner.divergence import first_divergence, locate
from aligner.errors import NoMatchError
from aligner.findings import (Finding, divergence_findings, grad_pattern, gradient_findings,
                              nan_inf_findings, shape_findings, sort_findings, sparsity_finding)
from aligner.inventory import (anchor_findings, anchors_block, count_drift_findings, inventory_findings,
                               mode_findings, modules_block, params_block, transfer_findings,
                               unmatched_findings)
from aligner.match import load_mapping
from aligner.records import FindingType, Severity, Trace
from aligner.result import AlignmentResult
from aligner.stages import assigner_findings, explain_by_tie, loss_findings, stage_array
from aligner.tolerances import Kind, Tolerances

__all__ = ["Analysis", "analyze"]


def _state_ctx(st: StateTraces) -> dict[str, Any]:
    cfg = st.torch.meta.get("config") or {}
    first_call: dict[str, int] = {}
    for c in st.torch.calls:
        first_call.setdefault(c.module, c.order)
    return {"img_size": cfg.get("img_size"), "dtype": st.torch.meta.get("dtype"), "first_call": first_call,
            "param_module": {p.name: p.module for p in st.torch.params}}


def _light(trace: Trace) -> Trace:
    """The trace without its activation tensors (what the state-independent checks still read)."""
    keep = {k: v for k, v in trace.arrays.items() if k.startswith(("param/", "stage/"))}
    return replace(trace, arrays=keep, stats={})


class Analysis:
    """Incremental analysis: :meth:`add` one state's traces at a time (their big tensors can be freed
    right after), then :meth:`result`. ``analyze`` is this in one call."""

    def __init__(self, *, tolerances: Tolerances | Mapping[str, Any] | None = None,
                 mapping: Mapping[str, str] | str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self._tol_in, self.maps, self.progress = tolerances, load_mapping(mapping), progress
        self.tol: Tolerances | None = None
        self.states: list[StateTraces] = []          # light copies
        self.comps: list[StateComparison] = []
        self.findings: list[Finding] = []
        self.patterns: dict[str, Any] = {}
        self.loss: dict[str, Any] = {}
        self.assign: dict[str, Any] = {}
        self.step_rows: list[Comparison] = []
        self.steps: list[dict[str, Any]] = []

    def add(self, st: StateTraces) -> StateComparison:
        """Compare one state and derive its findings; keeps only light copies of the traces."""
        if self.tol is None:
            self.tol = Tolerances.coerce(self._tol_in, str(st.torch.meta.get("dtype") or "float32"))
        tol, maps = self.tol, self.maps
        if self.progress:
            self.progress(f"compare {st.state}")
        sc = locate(compare_state(st, tol, maps), st)
        self.comps.append(sc)
        f = divergence_findings(sc, {**_state_ctx(st), "mode_locations": set()})
        f += nan_inf_findings(sc) + shape_findings(sc)
        f += gradient_findings(st.state, st.torch, st.jittor, sc.rows, maps)
        pat = grad_pattern(st.torch, st.jittor, sc.rows, maps)
        self.patterns[st.state] = pat
        info = sparsity_finding(st.state, st.torch, pat)
        if info is not None:
            f.append(info)
        lf, lb = loss_findings(st, tol)
        af, ab = assigner_findings(st, tol)
        f += lf + af + _reference_consistency(st) + _noise_reference_finding(st, sc)
        if ab is not None and ab.get("tie_swap"):
            f = explain_by_tie(f, st.state)
        if lb is not None:
            self.loss[st.state] = lb
        if ab is not None:
            self.assign[st.state] = ab
        rows, block = compare_steps(st, tol, maps)
        self.step_rows += rows
        self.steps += block
        f += _step_findings(rows, block)
        self.findings += f
        self.states.append(StateTraces(st.state, _light(st.torch), _light(st.jittor)))
        return sc

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
        modes = _dedupe([f for st in states for f in mode_findings(st.torch, st.jittor, maps)])
        anchors = anchors_block(first.torch, first.jittor)
        static += modes + anchor_findings(anchors)
        findings = list(self.findings)
        # forward divergences at a module with a mode mismatch name it as the likely cause
        mode_locs = {f.location for f in modes} | {f.evidence.get("first", "") for f in modes}
        if mode_locs:
            findings = [f for f in findings if f.type != FindingType.FORWARD_DIVERGENCE]
            for st, sc in zip(states, comps):
                findings += [f for f in divergence_findings(sc, {**_state_ctx(st), "mode_locations": mode_locs})
                             if f.type == FindingType.FORWARD_DIVERGENCE]
        state_names = [st.state for st in states] + [f"{b['state']}/step{b['step']}" for b in self.steps]
        all_findings = sort_findings(findings + static, state_names)
        run_info = _run_block(states, self.tol, run)
        run_info["uncaptured_gradients"] = {sc.state: sc.uncaptured for sc in comps if sc.uncaptured}
        run_info["noise_floor_available"] = all(sc.noise_floor_used for sc in comps)
        first_div = first_divergence(comps) or _divergence_from_findings(all_findings)
        return AlignmentResult(run_info, comps, all_findings, first_div,
                               params_block(first.torch, first.jittor, self.patterns),
                               modules_block(first.torch, first.jittor, maps), anchors, self.loss,
                               self.assign, self.steps, self.step_rows)


def analyze(states: Sequence[StateTraces], *, tolerances: Tolerances | Mapping[str, Any] | None = None,
            mapping: Mapping[str, str] | str | Path | None = None, run: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> AlignmentResult:
    """Compare captured traces (one :class:`StateTraces` per model state) and derive findings."""
    if not states:
        raise NoMatchError("no model state was captured: nothing to compare")
    acc = Analysis(tolerances=tolerances, mapping=mapping, progress=progress)
    for st in states:
        acc.add(st)
    return acc.result(run)


_BACKWARD_TYPES = {FindingType.BACKWARD_DIVERGENCE, FindingType.FROZEN_PARAMETER, FindingType.UNREACHABLE_GRADIENT,
                   FindingType.GRADIENT_PATTERN, FindingType.EXTRA_GRADIENT, FindingType.VANISHING_GRADIENT}


def _divergence_from_findings(findings: list[Finding]) -> Divergence | None:
    """No module output left tolerance, yet something is wrong (frozen parameters, a count drift,
    a loss item): the first error finding stands in as the first divergence."""
    f = next((x for x in findings if x.severity == Severity.ERROR), None)
    if f is None:
        return None
    ev = f.evidence
    value = ev.get("value", ev.get("rel", ev.get("count")))
    return Divergence(f.state, "backward" if f.type in _BACKWARD_TYPES else "forward", f.location,
                      f.location, f.location, str(ev.get("metric", f.type.value)),
                      float(value) if isinstance(value, (int, float)) else math.nan,
                      float(ev.get("tol", math.nan)) if isinstance(ev.get("tol"), (int, float)) else math.nan,
                      f.message, f.order)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.type, f.location, f.evidence.get("flag"))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _reference_consistency(st: StateTraces) -> list[Finding]:
    """The float64 reference must take the same discrete decisions (assigned positives) as the float32
    one, else its noise floor compares different computations."""
    other = st.torch64 if st.torch64 is not None else st.torch32
    if other is None:
        return []
    a, b = st.torch.stages.get("assigner") or {}, other.stages.get("assigner") or {}
    fa, fb = stage_array(st.torch, "fg_mask"), stage_array(other, "fg_mask")
    differs = (a.get("fg_count") is not None and a.get("fg_count") != b.get("fg_count")) or \
        (fa is not None and fb is not None and fa.shape == fb.shape and bool((fa != fb).any()))
    if not differs:
        return []
    return [Finding(FindingType.ASSIGNER_MISMATCH, Severity.WARNING, st.state, "assigner",
                    "the float64 and float32 references assign different positives (ties at the top-k "
                    "boundary), so the noise floor of loss-side gradients is unreliable in this state",
                    {"fg_count_reference": a.get("fg_count"), "fg_count_other_precision": b.get("fg_count")},
                    "exact ties in the TAL top-k at a degenerate (initial) state; rely on the perturbed state",
                    "float64 参考实现与 float32 参考实现分配的正样本不同（top-k 边界存在并列），此状态下损失侧梯度的噪声基准不可靠",
                    "初始（退化）状态下 TAL top-k 存在完全并列；请以扰动后的状态为准", 10 ** 8)]


def _noise_reference_finding(st: StateTraces, sc: StateComparison) -> list[Finding]:
    if not sc.reference_mismatch:
        return []
    names = sc.reference_mismatch
    return [Finding(FindingType.WEIGHT_TRANSFER, Severity.WARNING, st.state, "noise reference",
                    f"the other-precision torch reference does not hold the same weights in this state "
                    f"({len(names)} tensors differ beyond float32 rounding, e.g. {', '.join(names[:3])}); "
                    "the noise floor is disabled here and fixed tolerances apply",
                    {"count": len(names), "params": names[:20]},
                    "the float64 reference was built or perturbed separately (e.g. normal_() draws other "
                    "numbers in float64); it must load the float32 reference's weights cast up",
                    f"另一精度的 torch 参考实现在此状态下权重不同（{len(names)} 个张量超出 float32 舍入），此状态不使用噪声基准",
                    "float64 参考实现是单独构建或扰动的（例如 normal_() 在 float64 下生成的随机数不同）；应加载 float32 参考实现的权重并转换精度",
                    10 ** 8)]


def _step_findings(rows: list[Comparison], block: list[dict[str, Any]]) -> list[Finding]:
    """After each optimiser step: parameters whose values or gradients left tolerance."""
    out = []
    for b in block:
        state = f"{b['state']}/step{b['step']}"
        bad = [r for r in rows if r.state == state and not r.ok]
        if not bad:
            continue
        by_kind = {k: [r for r in bad if r.kind == k] for k in (Kind.PARAM, Kind.PARAM_GRAD)}
        for kind, rs in by_kind.items():
            if not rs:
                continue
            worst = max(rs, key=lambda r: r.metrics.rel if math.isfinite(r.metrics.rel) else 1e300)
            what = "values" if kind == Kind.PARAM else "gradients"
            out.append(Finding(
                FindingType.BACKWARD_DIVERGENCE, Severity.ERROR, state, worst.torch_name,
                f"after {b['step']} optimizer step(s), {len(rs)} parameter {what} differ beyond tolerance; "
                f"worst {worst.torch_name} (rel {worst.metrics.rel:.3g} > {worst.judgement.bound:.3g})",
                {"kind": kind.value, "count": len(rs), "params": [r.torch_name for r in rs[:20]],
                 "loss_torch": b.get("loss_torch"), "loss_jittor": b.get("loss_jittor")},
                "the optimizer update differs (a parameter hidden from the optimizer, a buffer updated "
                "differently such as Jittor's biased running_var, weight decay on other groups, or a "
                "trainable constant)",
                f"{b['step']} 步优化后，{len(rs)} 个参数的{'数值' if kind == Kind.PARAM else '梯度'}超出容差",
                "优化器更新不同（参数未交给优化器、buffer 更新方式不同如 Jittor 的有偏 running_var、权重衰减分组不同，或常量可训练）",
                worst.order))
    return out


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
