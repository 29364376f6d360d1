"""Parameter inventory: element counts per module subtree and the results.json ``params``/``modules`` blocks.

Counts come from the parameter inventory, summed from the root down with each tensor object counted
once (tied weights), never from per-module totals; torch-only bookkeeping (``num_batches_tracked``) is
left out on both sides. Jittor's ``parameters()`` also returns buffers; the capture adapters classify them,
so counts here compare like with like: trainable, frozen, buffers. The rules on these counts are in
:mod:`aligner.rules.structure`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from types import MappingProxyType
from typing import Any

from aligner.match import rename
from aligner.records import ParamInfo, ParamKind, Trace, torch_only

__all__ = ["EMPTY_COUNTS", "counted", "params_of", "param_counts", "params_block", "modules_block"]

EMPTY_COUNTS: Mapping[str, int] = MappingProxyType({"trainable": 0, "frozen": 0, "buffers": 0, "constants": 0})
_KEY = {ParamKind.TRAINABLE: "trainable", ParamKind.FROZEN: "frozen", ParamKind.BUFFER: "buffers",
        ParamKind.CONSTANT: "constants"}


def counted(p: ParamInfo) -> bool:
    """Counted in the inventory: each tensor object once, torch-only bookkeeping left out."""
    return not p.shared_with and not torch_only(p.name)


def params_of(c: Mapping[str, int]) -> int:
    """Parameter elements, trainable or frozen: freezing is a mode problem (frozen_parameter), not a
    count drift."""
    return c.get("trainable", 0) + c.get("frozen", 0)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".") if module else []
    return [""] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def param_counts(trace: Trace) -> dict[str, dict[str, int]]:
    """module name -> {"trainable", "frozen", "buffers", "constants"} numel over its subtree."""
    out: dict[str, dict[str, int]] = {m.name: dict(EMPTY_COUNTS) for m in trace.modules}
    for p in trace.params:
        if not counted(p):
            continue
        for a in _ancestors(p.module):
            out.setdefault(a, dict(EMPTY_COUNTS))[_KEY[p.kind]] += p.numel
    return out


def _side_block(trace: Trace) -> dict[str, Any]:
    counts = param_counts(trace)
    root = counts.get("", EMPTY_COUNTS)
    tops = sorted({p.module.split(".")[0] for p in trace.params if p.module} |
                  {m.name for m in trace.modules if m.depth == 1})
    return {"trainable": root["trainable"],
            "trainable_tensors": sum(1 for p in trace.params if counted(p) and p.kind == ParamKind.TRAINABLE),
            "buffers": root["buffers"], "frozen": root["frozen"], "constants": root["constants"],
            "modules": {t: {"trainable": counts.get(t, {}).get("trainable", 0),
                            "buffers": counts.get(t, {}).get("buffers", 0)} for t in tops}}


def params_block(torch: Trace, jittor: Trace, grad_patterns: Mapping[str, Any],
                 mapping: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``params`` section of results.json; ``mapping`` ({torch_name: jittor_name}) pairs the tensors of
    the parameter story."""
    return {"torch": _side_block(torch), "jittor": _side_block(jittor), "grad_pattern": dict(grad_patterns),
            "story": _story_block(torch, jittor, mapping or {})}


# tensor names listed per group of extra/missing tensors before truncating
_STORY_NAMES = 20


def _story_block(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> dict[str, Any]:
    """``params.story``: the port's parameter story (:mod:`aligner.param_story`) as JSON."""
    from aligner.param_story import param_story  # noqa: PLC0415 - param_story imports this module

    st = param_story(torch.params, jittor.params, mapping, torch_modules=torch.modules,
                     jittor_modules=jittor.modules)

    def groups(gs: Any) -> list[dict[str, Any]]:
        return [{"module": g.module, "tensors": len(g.names), "trainable_tensors": g.trainable, "numel": g.numel,
                 "detail": g.detail, "names": list(g.names[:_STORY_NAMES])} for g in gs]
    return {"en": st.sentence_en, "zh": st.sentence_zh, "torch": asdict(st.torch), "jittor": asdict(st.jittor),
            "extra_tensors": sum(len(g.names) for g in st.extra),
            "missing_tensors": sum(len(g.names) for g in st.missing), "reshaped_tensors": len(st.reshaped),
            "extra": groups(st.extra), "missing": groups(st.missing)}


def modules_block(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``modules`` section: every module with both sides' subtree counts."""
    ct, cj = param_counts(torch), param_counts(jittor)
    jnames = {m.name for m in jittor.modules}
    out = []
    for m in torch.modules:
        jn = rename(m.name, mapping) or m.name
        a = ct.get(m.name)
        b = cj.get(jn) if jn in jnames else None
        row_t = {"trainable": a["trainable"], "buffers": a["buffers"]} if a else None
        row_j = {"trainable": b["trainable"], "buffers": b["buffers"]} if b else None
        out.append({"name": m.name, "type": m.type, "depth": m.depth, "torch": row_t, "jittor": row_j,
                    "ok": row_t == row_j})
    tmapped = {rename(m.name, mapping) or m.name for m in torch.modules}
    for m in jittor.modules:
        if m.name not in tmapped:
            b = cj.get(m.name, {})
            out.append({"name": m.name, "type": m.type, "depth": m.depth, "torch": None,
                        "jittor": {"trainable": b.get("trainable", 0), "buffers": b.get("buffers", 0)},
                        "ok": False})
    return out
