"""GOLD-YOLO's own rules: anchors, the TAL label assigner and its ties, and module-name hints for causes.

Handed to the analysis by :meth:`aligner.pairs.gold_yolo.GoldYoloPair.rules` (and, for traces, through the
pair registry); the generic rules in :mod:`aligner.rules` know none of this. Numpy only.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from aligner.analysis_records import Finding, StateTraces
from aligner.records import FindingType, Severity, Trace
from aligner.rules.loss import scalar_rel
from aligner.rules.messages import load_templates, render
from aligner.rules.pair import PairRules
from aligner.tolerances import Tolerances

__all__ = ["RULES", "STRIDES", "ANCHOR_SIZES", "expected_anchors", "anchors_block", "anchor_findings",
           "assigner_findings", "reference_consistency", "explain_by_tie", "forward_cause"]

T, S = FindingType, Severity

STRIDES = (8, 16, 32)
# common input sizes: an anchor count equal to one of theirs names the size the other side used
ANCHOR_SIZES = (320, 416, 512, 640)
# float32 rounding of the TAL alignment metric: ~1e-6 relative; a changed rule moves scores by percent
_TIE_SCORE_TOL = 1e-4

_TEXT = load_templates(__package__ or "aligner.pairs", "gold_yolo_messages.toml")[0]


def _text(ftype: FindingType, variant: str = "", **values: Any) -> dict[str, str]:
    return render(ftype, variant, templates=_TEXT, **values)


def forward_cause(name: str, ctx: Mapping[str, Any]) -> tuple[str, str] | None:
    """The pooling/fusion modules of GOLD-YOLO's neck (``*_FAM``, ``*pool*``, ``*fusion*``) diverge through
    Jittor's fixed-kernel adaptive pooling at sizes that are not multiples of 32."""
    if not any(k in name for k in ("pool", "fam", "fusion")):
        return None
    img = ctx.get("img_size")
    t = _text(T.FORWARD_DIVERGENCE, "cause_pool", at_size=f" at input size {img}" if img else "")
    return t["likely_cause"], t["likely_cause_zh"]


def expected_anchors(img_size: int | Iterable[int], strides: Iterable[int] = STRIDES) -> list[dict[str, int]]:
    """Per level h = ceil(H/s), w = ceil(W/s) (3x3/s2/p1 convs: out = ceil(in/2) at every halving)."""
    hw = [int(img_size)] * 2 if isinstance(img_size, (int, float)) else [int(x) for x in img_size]
    return [{"stride": int(s), "h": math.ceil(hw[0] / s), "w": math.ceil(hw[1] / s),
             "expected": math.ceil(hw[0] / s) * math.ceil(hw[1] / s)} for s in strides]


def anchors_block(torch: Trace, jittor: Trace) -> dict[str, Any] | None:
    """The ``anchors`` section, from each side's ``anchors`` stage summary."""
    at, aj = torch.stages.get("anchors"), jittor.stages.get("anchors")
    if not at and not aj:
        return None
    at, aj = at or {}, aj or {}
    cfg = torch.meta.get("config") or {}
    img = at.get("img_size") or cfg.get("img_size")
    strides = at.get("strides") or aj.get("strides") or cfg.get("strides") or list(STRIDES)
    levels = expected_anchors(img, strides) if img else []
    got_t = [lv.get("count") for lv in at.get("levels") or []] or list(at.get("n_per_level") or [])
    got_j = [lv.get("count") for lv in aj.get("levels") or []] or list(aj.get("n_per_level") or [])
    for i, lv in enumerate(levels):
        lv["count"] = got_t[i] if i < len(got_t) else None
        lv["count_jittor"] = got_j[i] if i < len(got_j) else None
    return {"img_size": img, "strides": list(strides), "levels": levels,
            "expected": sum(lv["expected"] for lv in levels) if levels else None,
            "torch": at.get("count"), "jittor": aj.get("count")}


def anchor_findings(block: dict[str, Any] | None) -> list[Finding]:
    """Each side's anchor count against sum(ceil(S/stride)^2), with the explanation of the number."""
    if not block or block.get("expected") is None:
        return []
    exp, img = block["expected"], block["img_size"]
    terms = " + ".join(f"{lv['h']}x{lv['w']}" for lv in block["levels"])
    nums = " + ".join(str(lv["expected"]) for lv in block["levels"])
    explain = _text(T.ANCHOR_COUNT_DRIFT, "explain", img=img, strides=block["strides"], terms=terms, nums=nums,
                    expected=exp)["message"]
    out = []
    for side in ("jittor", "torch"):
        n = block.get(side)
        if n is None or n == exp:
            continue
        hint = ""
        for size in ANCHOR_SIZES:
            if sum(lv["expected"] for lv in expected_anchors(size, block["strides"])) == n:
                hint = _text(T.ANCHOR_COUNT_DRIFT, "hint", count=n, size=size)["message"]
        out.append(Finding(
            type=T.ANCHOR_COUNT_DRIFT, severity=S.ERROR if side == "jittor" or block.get("jittor") != n else S.WARNING,
            state=None, location="anchors",
            evidence={"side": side, "count": n, "expected": exp, "torch": block.get("torch"),
                      "jittor": block.get("jittor"), "levels": block["levels"]},
            **_text(T.ANCHOR_COUNT_DRIFT, side=side, count=n, expected=exp, explain=explain, hint=hint, terms=terms,
                    nums=nums)))
    return out


def stage_array(trace: Trace, name: str) -> Any:
    """A stage array by short name (``fg_mask`` is ``stage/assign/fg_mask`` in this pair)."""
    for key in (f"stage/{name}", f"stage/assign/{name}"):
        if key in trace.arrays:
            return trace.arrays[key]
    return None


def assigner_findings(st: StateTraces, tol: Tolerances) -> tuple[list[Finding], dict[str, Any] | None]:
    """Foreground count must be equal; target score sum within the loss tolerance; anchor points equal.
    A differing foreground mask that is a tie broken by rounding is a warning (see :func:`explain_by_tie`)."""
    at, aj = st.torch.stages.get("assigner"), st.jittor.stages.get("assigner")
    if not at or not aj:
        return [], None
    keys = ("fg_count", "target_scores_sum")
    block = {"torch": {k: at.get(k) for k in keys}, "jittor": {k: aj.get(k) for k in keys}}
    problems = []
    if at.get("fg_count") is not None and at.get("fg_count") != aj.get("fg_count"):
        problems.append(f"fg_count {at.get('fg_count')} vs {aj.get('fg_count')}")
    ts, js = at.get("target_scores_sum"), aj.get("target_scores_sum")
    if ts is not None and js is not None:
        # the alignment metric follows the predicted scores and boxes: bounded by the reference's own
        # float32 error when the other precision exists (as the loss items are)
        other = (st.other.stages.get("assigner") or {}) if (st.other is not None and tol.noise_floor) else {}
        bound = max(tol.loss, 1e-6)
        if other.get("target_scores_sum") is not None:
            bound = max(bound, tol.multiplier * scalar_rel(float(other["target_scores_sum"]), float(ts)))
        rel = scalar_rel(float(ts), float(js))
        if rel > bound:
            problems.append(f"target_scores_sum {float(ts):.7g} vs {float(js):.7g} (rel {rel:.3g} > {bound:.3g})")
    fm_t, fm_j = stage_array(st.torch, "fg_mask"), stage_array(st.jittor, "fg_mask")
    if fm_t is not None and fm_j is not None and fm_t.shape == fm_j.shape and (fm_t != fm_j).any():
        block["fg_mask_differs"] = int((fm_t != fm_j).sum())
    if fm_t is not None and fm_j is not None and fm_t.ndim == 2 and fm_j.ndim == 2 and len(fm_t) == len(fm_j):
        # per image: a batch-indexing bug moves positives between images while the total may hold
        per_t = [int(v) for v in (fm_t != 0).sum(axis=1)]
        per_j = [int(v) for v in (fm_j != 0).sum(axis=1)]
        block["torch"]["fg_per_image"], block["jittor"]["fg_per_image"] = per_t, per_j
        bad = [i for i, (a, b) in enumerate(zip(per_t, per_j)) if a != b]
        if bad:
            problems.append("positives per image differ: " + ", ".join(
                f"image {i} {per_t[i]} vs {per_j[i]}" for i in bad[:8]) + (" ..." if len(bad) > 8 else ""))
    for key in ("fg_per_level",):
        if at.get(key) is not None:
            block["torch"][key], block["jittor"][key] = at.get(key), aj.get(key)
    out = _anchor_point_findings(st)
    if not problems:
        tie = _tie_swap(st) if block.get("fg_mask_differs") else None
        if tie is not None:
            block["tie_swap"] = tie
            out.append(Finding(
                type=T.ASSIGNER_MISMATCH, severity=S.WARNING, state=st.state, location="assigner",
                evidence={**block, "tie_swap": tie},
                **_text(T.ASSIGNER_MISMATCH, "tie", swapped=tie["swapped"], diff=tie["max_score_diff"])))
        return out, block
    return [Finding(
        type=T.ASSIGNER_MISMATCH, severity=S.ERROR, state=st.state, location="assigner",
        evidence={**block, "problems": problems},
        **_text(T.ASSIGNER_MISMATCH, "positives", problems="; ".join(problems),
                problems_zh="；".join(problems)))] + out, block


def _tie_swap(st: StateTraces) -> dict[str, Any] | None:
    """Evidence that differing positives are a tie broken by rounding, not a different assignment rule.

    Same number of positives per image, and per image the same multiset of assigned target boxes and of
    target scores (the normalised alignment metric): only the anchors carrying them differ. A changed top-k,
    alpha/beta, box scaling or score path changes counts, boxes or scores and is not a tie.
    """
    arrays = {side: [stage_array(tr, n) for n in ("fg_mask", "target_scores", "target_bboxes")]
              for side, tr in (("torch", st.torch), ("jittor", st.jittor))}
    if any(a is None for v in arrays.values() for a in v):
        return None
    (fm_t, sc_t, bx_t), (fm_j, sc_j, bx_j) = arrays["torch"], arrays["jittor"]
    fm_t, fm_j = np.asarray(fm_t).astype(bool), np.asarray(fm_j).astype(bool)
    if fm_t.shape != fm_j.shape or fm_t.ndim != 2 or sc_t.shape != sc_j.shape or bx_t.shape != bx_j.shape:
        return None
    if not np.array_equal(fm_t.sum(1), fm_j.sum(1)):
        return None
    worst_score, worst_box = 0.0, 0.0
    for b in range(fm_t.shape[0]):
        st_ = np.sort(np.asarray(sc_t[b][fm_t[b]], np.float64).max(-1))
        sj = np.sort(np.asarray(sc_j[b][fm_j[b]], np.float64).max(-1))
        bt = np.asarray(bx_t[b][fm_t[b]], np.float64)
        bj = np.asarray(bx_j[b][fm_j[b]], np.float64)
        bt, bj = bt[np.lexsort(bt.T[::-1])], bj[np.lexsort(bj.T[::-1])]
        scale_s, scale_b = max(float(np.abs(st_).max(initial=0)), 1e-30), max(float(np.abs(bt).max(initial=0)), 1e-30)
        worst_score = max(worst_score, float(np.abs(st_ - sj).max(initial=0)) / scale_s)
        worst_box = max(worst_box, float(np.abs(bt - bj).max(initial=0)) / scale_b)
    if worst_score > _TIE_SCORE_TOL or worst_box > 1e-6:
        return None
    return {"swapped": int((fm_t & ~fm_j).sum()), "max_score_diff": worst_score, "max_box_diff": worst_box}


def explain_by_tie(findings: list[Finding], state: str, assigner: dict[str, Any] | None) -> list[Finding]:
    """After a tied assignment in ``state``: its loss-item divergences and a backward divergence that enters
    at the loss become warnings that name the tie. Divergences located in modules (forward, or a backward
    entering inside the network) stay errors."""
    if not (assigner or {}).get("tie_swap"):
        return findings
    out = []
    for f in findings:
        if f.state == state and f.severity == S.ERROR and (
                f.type == T.LOSS_DIVERGENCE or (f.type == T.BACKWARD_DIVERGENCE and f.location == "loss")):
            f = replace(f, severity=S.WARNING, evidence={**f.evidence, "explained_by": "assigner_tie"},
                        **_text(T.LOSS_DIVERGENCE, "tie", message=f.message, message_zh=f.message_zh or f.message))
        out.append(f)
    return out


def _anchor_point_findings(st: StateTraces) -> list[Finding]:
    """Same anchor count but other anchor points (grid offset, stride) on the port side."""
    out = []
    for name in ("anchor_points", "stride_tensor"):
        a, b = stage_array(st.torch, name), stage_array(st.jittor, name)
        if a is None or b is None or a.shape != b.shape:
            continue
        rel = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / max(float(np.abs(a).max()), 1e-30)
        if rel > 1e-6:
            out.append(Finding(
                type=T.ASSIGNER_MISMATCH, severity=S.ERROR, state=st.state, location="anchors",
                evidence={"stage": name, "rel": rel, "shape": list(a.shape)},
                **_text(T.ASSIGNER_MISMATCH, "anchor_points", stage=name, rel=rel)))
    return out


def reference_consistency(st: StateTraces) -> list[Finding]:
    """The float64 reference must take the same discrete decisions (assigned positives) as the float32
    one, else its noise floor compares different computations."""
    other = st.other
    if other is None:
        return []
    a, b = st.torch.stages.get("assigner") or {}, other.stages.get("assigner") or {}
    fa, fb = stage_array(st.torch, "fg_mask"), stage_array(other, "fg_mask")
    differs = (a.get("fg_count") is not None and a.get("fg_count") != b.get("fg_count")) or \
        (fa is not None and fb is not None and fa.shape == fb.shape and bool((fa != fb).any()))
    if not differs:
        return []
    return [Finding(type=T.ASSIGNER_MISMATCH, severity=S.WARNING, state=st.state, location="assigner",
                    evidence={"fg_count_reference": a.get("fg_count"), "fg_count_other_precision": b.get("fg_count")},
                    **_text(T.ASSIGNER_MISMATCH, "reference"))]


RULES = PairRules(forward_cause=forward_cause, assigner=assigner_findings, reference=reference_consistency,
                  explain=explain_by_tie, anchors=anchors_block, anchor_findings=anchor_findings)
