"""Loss-side stage checks of one model state: loss total and items, label assignment, anchor points.

Stages are what a pair records beyond modules (``Trace.stages`` summaries and ``stage/*`` arrays);
each check compares the port's stage with the reference's and returns findings plus the
results.json block. Pure functions, no printing.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from aligner.compare import StateTraces
from aligner.findings import Finding
from aligner.records import FindingType, Severity, Trace
from aligner.tolerances import Tolerances

__all__ = ["loss_findings", "assigner_findings", "stage_array", "explain_by_tie"]

T, S = FindingType, Severity


def _scalar_rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), 1e-30)


def loss_findings(st: StateTraces, tol: Tolerances) -> tuple[list[Finding], dict[str, Any] | None]:
    """Loss total and items of one state; the noise floor widens the bound when float64 exists."""
    lt, lj = st.torch.stages.get("loss"), st.jittor.stages.get("loss")
    if not lt or not lj:
        return [], None
    other = st.torch64 if st.torch64 is not None else st.torch32
    l64 = other.stages.get("loss") if (other is not None and tol.noise_floor) else None
    names = list(lt.get("item_names") or [f"item{i}" for i in range(len(lt.get("items") or []))])
    block = {"torch": {"total": lt.get("total"), "items": lt.get("items")},
             "jittor": {"total": lj.get("total"), "items": lj.get("items")},
             "rel": None, "item_names": names}
    checks = [("total", lt.get("total"), lj.get("total"), l64.get("total") if l64 else None)]
    for i, n in enumerate(names):
        ti, ji = (lt.get("items") or [None] * len(names))[i], (lj.get("items") or [None] * len(names))[i]
        t64 = (l64.get("items") or [None] * len(names))[i] if l64 else None
        checks.append((n, ti, ji, t64))
    out = []
    for label, a, b, a64 in checks:
        if a is None or b is None:
            continue
        rel = _scalar_rel(float(a), float(b))
        if label == "total":
            block["rel"] = rel
        bound = tol.loss
        if a64 is not None:
            bound = max(bound, tol.multiplier * _scalar_rel(float(a64), float(a)))
        if not math.isfinite(float(b)) or rel > bound:
            loc = "loss" if label == "total" else f"loss.{label}"
            out.append(Finding(
                T.LOSS_DIVERGENCE, S.ERROR, st.state, loc,
                f"loss {label} differs: torch {float(a):.7g}, jittor {float(b):.7g} (rel {rel:.3g} > {bound:.3g})",
                {"item": label, "torch": float(a), "jittor": float(b), "rel": rel, "tol": bound},
                "a different loss formula or weight, target scaling (ori_img_size), IoU type, sigmoid applied "
                "twice, or a different assignment of positives (see assigner findings)",
                f"损失 {label} 不同：torch {float(a):.7g}，jittor {float(b):.7g}（相对误差 {rel:.3g} > {bound:.3g}）",
                "损失公式或权重不同、目标缩放（ori_img_size）、IoU 类型、sigmoid 重复，或正样本分配不同（见 assigner）",
                10 ** 8 + len(out)))
    return out, block


def assigner_findings(st: StateTraces, tol: Tolerances) -> tuple[list[Finding], dict[str, Any] | None]:
    """Foreground count must be equal; target score sum within the loss tolerance."""
    at, aj = st.torch.stages.get("assigner"), st.jittor.stages.get("assigner")
    if not at or not aj:
        return [], None
    keys = ("fg_count", "target_scores_sum")
    block = {"torch": {k: at.get(k) for k in keys}, "jittor": {k: aj.get(k) for k in keys}}
    problems = []
    if at.get("fg_count") is not None and at.get("fg_count") != aj.get("fg_count"):
        problems.append(f"fg_count {at.get('fg_count')} vs {aj.get('fg_count')}")
    ts, js = at.get("target_scores_sum"), aj.get("target_scores_sum")
    if ts is not None and js is not None and _scalar_rel(float(ts), float(js)) > max(tol.loss, 1e-6):
        problems.append(f"target_scores_sum {float(ts):.7g} vs {float(js):.7g}")
    fm_t, fm_j = stage_array(st.torch, "fg_mask"), stage_array(st.jittor, "fg_mask")
    if fm_t is not None and fm_j is not None and fm_t.shape == fm_j.shape and (fm_t != fm_j).any():
        block["fg_mask_differs"] = int((fm_t != fm_j).sum())
    for key in ("fg_per_level",):
        if at.get(key) is not None:
            block["torch"][key], block["jittor"][key] = at.get(key), aj.get(key)
    out = _anchor_point_findings(st)
    if not problems:
        tie = _tie_swap(st) if block.get("fg_mask_differs") else None
        if tie is not None:
            block["tie_swap"] = tie
            out.append(Finding(
                T.ASSIGNER_MISMATCH, S.WARNING, st.state, "assigner",
                f"the assigner swaps {tie['swapped']} tied positive(s): same count per image, same assigned boxes "
                f"and the same target scores (max diff {tie['max_score_diff']:.2g}), at other anchors; the "
                "top-k candidates are tied and float32 rounding decides, so loss differences that follow are "
                "explained",
                {**block, "tie_swap": tie},
                "exact ties in the TAL top-k at a degenerate state (equal predictions everywhere at the official "
                "init), broken by rounding; judge the loss side on the perturbed state",
                f"分配器交换了 {tie['swapped']} 个并列的正样本：每张图数量相同、分配的框相同、目标分数相同"
                f"（最大差 {tie['max_score_diff']:.2g}），但位于不同 anchor；top-k 候选并列，由 float32 舍入决定，"
                "随之而来的损失差异由此解释",
                "退化状态（官方初始化下各处预测相同）时 TAL top-k 完全并列，由舍入打破；请以扰动状态判断损失侧",
                10 ** 8 - 1))
        return out, block
    return [Finding(
        T.ASSIGNER_MISMATCH, S.ERROR, st.state, "assigner",
        "the label assigner selects different positives: " + "; ".join(problems),
        {**block, "problems": problems},
        "TAL top-k / alpha / beta changed, anchors or strides differ, targets scaled with the wrong image "
        "size, or predicted scores/boxes passed to the assigner differ",
        "标签分配器选出的正样本不同：" + "；".join(problems),
        "TAL 的 top-k / alpha / beta 被修改、anchor 或步长不同、目标按错误的图像尺寸缩放，或传给分配器的预测分数/框不同",
        10 ** 8 - 1)] + out, block


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
    # float32 rounding of the metric: ~1e-6 relative; a changed rule moves scores by percent
    if worst_score > _TIE_SCORE_TOL or worst_box > 1e-6:
        return None
    return {"swapped": int((fm_t & ~fm_j).sum()), "max_score_diff": worst_score, "max_box_diff": worst_box}


_TIE_SCORE_TOL = 1e-4


def explain_by_tie(findings: list[Finding], state: str) -> list[Finding]:
    """Downgrade the consequences of a tied assignment in ``state``: loss-item divergences and a backward
    divergence that enters at the loss become warnings that name the tie. Divergences located in modules
    (forward, or a backward entering inside the network) stay errors."""
    out = []
    for f in findings:
        if f.state == state and f.severity == S.ERROR and (
                f.type == T.LOSS_DIVERGENCE or (f.type == T.BACKWARD_DIVERGENCE and f.location == "loss")):
            f = replace(f, severity=S.WARNING,
                        message=f.message + " (explained by the tied assignment, see the assigner warning)",
                        message_zh=(f.message_zh or f.message) + "（由并列的正样本分配解释，见分配器警告）",
                        evidence={**f.evidence, "explained_by": "assigner_tie"})
        out.append(f)
    return out


def stage_array(trace: Trace, name: str) -> Any:
    """A stage array by short name (``fg_mask`` is ``stage/assign/fg_mask`` in the GOLD-YOLO pair)."""
    for key in (f"stage/{name}", f"stage/assign/{name}"):
        if key in trace.arrays:
            return trace.arrays[key]
    return None


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
                T.ASSIGNER_MISMATCH, S.ERROR, st.state, "anchors",
                f"{name} differ between the frameworks (same count, max rel {rel:.3g}): the assigner and the box "
                "decoding see other anchor positions",
                {"stage": name, "rel": rel, "shape": list(a.shape)},
                "grid cell offset (0.5) or stride per level differs in generate_anchors, or the stride is "
                "computed from the input size instead of the feature map",
                f"{name} 在两个框架间不同（数量相同，最大相对误差 {rel:.3g}）",
                "generate_anchors 中网格偏移（0.5）或每层步长不同，或步长由输入尺寸而非特征图计算", 10 ** 8 - 2))
    return out
