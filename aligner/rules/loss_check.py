"""Judging the port's own loss checked alone (:mod:`aligner.adapters.loss_check`): numpy records in, findings out.

Per model state and loss input (``reference``: the reference model's head outputs; ``stress``: the pair's
stress input built from them), the port's loss is compared with the reference loss on the same numbers:

* loss total and items: ``rel = |port - ref| / |ref|`` within ``max(tol.loss, multiplier * rel(ref_other,
  ref))`` (the loss rule's bound, :mod:`aligner.rules.loss`: the reference's own error at the other precision);
  a non-finite port value where the reference is finite (or the reverse) always differs;
* gradients of the total w.r.t. the head leaves the pair names: L2-relative error over the elements finite on
  both sides, within ``max(tol.loss, multiplier * rel_l2(ref_other, ref))``. Only the loss lies between the
  head and these gradients (no network amplifies rounding), so the loss bound applies; elements finite on
  one side only always differ (NaN scrubbing or clamping that the reference does not do, or misses);
* foreground (positive) anchors per image from the assignments (``fg_mask`` [B, A]): any count that differs
  is an error naming the images; equal counts at other anchors with the same assigned boxes and target
  scores are a tie broken otherwise (a warning, and the loss differences of that input become warnings,
  as in the pair's own tie rule); equal counts with other boxes or scores are an error.

Loss differences are ``loss_divergence`` findings at location ``loss``, assignment differences
``assigner_mismatch`` at ``assigner``; the message names the state, the input, the items, gradients and images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aligner.analysis_records import Finding
from aligner.records import FindingType, Severity
from aligner.rules.loss import scalar_rel
from aligner.rules.messages import render
from aligner.tolerances import Tolerances

__all__ = ["LossRun", "IsolatedInput", "loss_check_findings"]

T, S = FindingType, Severity
# the pair's tie rule: target scores equal to float32 rounding of the alignment metric, boxes exactly
_TIE_SCORE_TOL = 1e-4
_TIE_BOX_TOL = 1e-6
_LISTED = 8


@dataclass
class LossRun:
    """One loss call on one input: total, items (the pair's item order), gradients by leaf name, assignment."""
    total: float
    items: np.ndarray | None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    assign: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class IsolatedInput:
    """The reference loss, the reference at the other precision (None: no noise floor) and the port's loss
    (None when it raised: ``error``) on the same input."""
    name: str
    reference: LossRun
    other: LossRun | None
    port: LossRun | None
    error: str | None = None


def _finite(x: float) -> bool:
    return math.isfinite(float(x))


def _scalar_check(label: str, a: float, b: float, a_other: float | None, tol: Tolerances) -> dict[str, Any]:
    rel = scalar_rel(float(a), float(b)) if _finite(a) and _finite(b) else (0.0 if (
        not _finite(a) and not _finite(b)) else math.inf)
    bound = tol.loss
    if a_other is not None and _finite(a_other) and _finite(a):
        bound = max(bound, tol.multiplier * scalar_rel(float(a_other), float(a)))
    return {"item": label, "torch": float(a), "port": float(b), "rel": rel, "tol": bound,
            "ok": rel <= bound}


def _rel_l2(r: np.ndarray, p: np.ndarray) -> float:
    d = p.astype(np.float64) - r.astype(np.float64)
    nr = float(np.sqrt(np.vdot(r.astype(np.float64), r.astype(np.float64))))
    nd = float(np.sqrt(np.vdot(d, d)))
    return 0.0 if nd == 0 else nd / (nr if nr > 0 else 1e-30)


def _grad_check(name: str, r: np.ndarray, o: np.ndarray | None, p: np.ndarray | None,
                tol: Tolerances) -> dict[str, Any]:
    if p is None or tuple(p.shape) != tuple(r.shape):
        return {"grad": name, "ok": False, "shape_torch": list(r.shape),
                "shape_port": None if p is None else list(p.shape), "rel_l2": math.inf, "tol": 0.0}
    fr, fp = np.isfinite(r), np.isfinite(p)
    one_sided = int(np.count_nonzero(fr != fp))
    both = fr & fp
    rel = _rel_l2(r[both], p[both])
    bound = tol.loss
    noise = None
    if o is not None and tuple(o.shape) == tuple(r.shape):
        ok_o = both & np.isfinite(o)
        noise = _rel_l2(r[ok_o], o[ok_o])
        bound = max(bound, tol.multiplier * noise)
    return {"grad": name, "ok": one_sided == 0 and rel <= bound, "rel_l2": rel, "tol": bound, "noise": noise,
            "nonfinite_port_only": int(np.count_nonzero(fr & ~fp)),
            "nonfinite_torch_only": int(np.count_nonzero(fp & ~fr))}


def _per_image(mask: np.ndarray) -> list[int]:
    m = np.asarray(mask) != 0
    return [int(v) for v in m.reshape(m.shape[0], -1).sum(axis=1)]


def _tie(ref: dict[str, np.ndarray], port: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Same positives per image, and per image the same multiset of assigned boxes and target scores, at
    other anchors: a tie at the top-k boundary broken otherwise. None when that does not hold (or the
    port's assignment lacks the arrays to tell)."""
    names = ("fg_mask", "target_scores", "target_bboxes")
    if any(n not in ref or n not in port for n in names):
        return None
    fm_t, fm_j = np.asarray(ref["fg_mask"]) != 0, np.asarray(port["fg_mask"]) != 0
    sc_t, sc_j = np.asarray(ref["target_scores"], np.float64), np.asarray(port["target_scores"], np.float64)
    bx_t, bx_j = np.asarray(ref["target_bboxes"], np.float64), np.asarray(port["target_bboxes"], np.float64)
    if fm_t.shape != fm_j.shape or fm_t.ndim != 2 or sc_t.shape != sc_j.shape or bx_t.shape != bx_j.shape:
        return None
    if not np.array_equal(fm_t.sum(1), fm_j.sum(1)):
        return None
    worst_score = worst_box = 0.0
    for b in range(fm_t.shape[0]):
        st_, sj = np.sort(sc_t[b][fm_t[b]].max(-1)), np.sort(sc_j[b][fm_j[b]].max(-1))
        bt, bj = bx_t[b][fm_t[b]], bx_j[b][fm_j[b]]
        bt, bj = bt[np.lexsort(bt.T[::-1])], bj[np.lexsort(bj.T[::-1])]
        scale_s, scale_b = max(float(np.abs(st_).max(initial=0)), 1e-30), max(float(np.abs(bt).max(initial=0)), 1e-30)
        worst_score = max(worst_score, float(np.abs(st_ - sj).max(initial=0)) / scale_s)
        worst_box = max(worst_box, float(np.abs(bt - bj).max(initial=0)) / scale_b)
    if worst_score > _TIE_SCORE_TOL or worst_box > _TIE_BOX_TOL:
        return None
    return {"swapped": int((fm_t & ~fm_j).sum()), "max_score_diff": worst_score, "max_box_diff": worst_box}


def _assign_check(state: str, inp: IsolatedInput) -> tuple[list[Finding], dict[str, Any], bool]:
    """(findings, block, tie) of the assignments of one input."""
    ref, port = inp.reference.assign, inp.port.assign if inp.port is not None else {}
    if "fg_mask" not in ref:
        return [], {}, False
    if "fg_mask" not in port:
        return [], {"torch": {"fg_per_image": _per_image(ref["fg_mask"])}, "port": None,
                    "note": "the port's loss sets no assignment (L.assignment['fg_mask'])"}, False
    fm_t, fm_j = np.asarray(ref["fg_mask"]), np.asarray(port["fg_mask"])
    if fm_t.ndim != 2 or fm_j.shape != fm_t.shape:
        problems = [f"fg_mask shape {list(fm_t.shape)} vs {list(fm_j.shape)}"]
        block: dict[str, Any] = {"torch": {"shape": list(fm_t.shape)}, "port": {"shape": list(fm_j.shape)}}
    else:
        per_t, per_j = _per_image(fm_t), _per_image(fm_j)
        block = {"torch": {"fg_per_image": per_t}, "port": {"fg_per_image": per_j},
                 "fg_mask_differs": int(np.count_nonzero((fm_t != 0) != (fm_j != 0)))}
        bad = [i for i, (a, b) in enumerate(zip(per_t, per_j)) if a != b]
        problems = []
        if bad:
            problems.append("positives per image differ: " + ", ".join(
                f"image {i} {per_t[i]} vs {per_j[i]}" for i in bad[:_LISTED]) + (" ..." if len(bad) > _LISTED else ""))
        elif block["fg_mask_differs"]:
            tie = _tie(ref, port)
            if tie is not None:
                block["tie_swap"] = tie
                return [Finding(
                    type=T.ASSIGNER_MISMATCH, severity=S.WARNING, state=state, location="assigner",
                    evidence={"loss_input": inp.name, **block},
                    **render(T.ASSIGNER_MISMATCH, "isolated_tie", state=state, input=inp.name,
                             swapped=tie["swapped"], diff=tie["max_score_diff"]))], block, True
            problems.append(f"same positives per image ({', '.join(map(str, per_t))}) at "
                            f"{block['fg_mask_differs']} other anchor(s), with other assigned boxes or scores")
    if not problems:
        return [], block, False
    text = "; ".join(problems)
    return [Finding(type=T.ASSIGNER_MISMATCH, severity=S.ERROR, state=state, location="assigner",
                    evidence={"loss_input": inp.name, **block, "problems": problems},
                    **render(T.ASSIGNER_MISMATCH, "isolated", state=state, input=inp.name, problems=text))], \
        block, False


def _fmt_check(c: dict[str, Any]) -> str:
    if "item" in c:
        return f"{c['item']} torch {c['torch']:.7g}, port {c['port']:.7g} (rel {c['rel']:.3g} > {c['tol']:.3g})"
    if c.get("shape_port") is not None or "shape_torch" in c:
        return f"gradient w.r.t. {c['grad']}: shape {c.get('shape_torch')} vs {c.get('shape_port')}"
    nf = c.get("nonfinite_port_only", 0) + c.get("nonfinite_torch_only", 0)
    extra = (f", {c.get('nonfinite_port_only', 0)} non-finite in the port only, "
             f"{c.get('nonfinite_torch_only', 0)} in the reference only") if nf else ""
    return f"gradient w.r.t. {c['grad']} rel L2 {c['rel_l2']:.3g} (tol {c['tol']:.3g}{extra})"


def loss_check_findings(state: str, inputs: Sequence[IsolatedInput], tol: Tolerances,
                        item_names: Sequence[str] = ()) -> tuple[list[Finding], dict[str, Any]]:
    """Findings of the port's loss checked alone in ``state``, and the state's results.json block
    (per input: totals, items, gradient errors, positives per image)."""
    out: list[Finding] = []
    block: dict[str, Any] = {}
    for inp in inputs:
        ref, oth, port = inp.reference, inp.other, inp.port
        if port is None:
            block[inp.name] = {"error": inp.error}
            out.append(Finding(type=T.LOSS_DIVERGENCE, severity=S.ERROR, state=state, location="loss",
                               evidence={"loss_input": inp.name, "error": inp.error},
                               **render(T.LOSS_DIVERGENCE, "isolated_error", state=state, input=inp.name,
                                        error=inp.error)))
            continue
        checks = [_scalar_check("total", ref.total, port.total, oth.total if oth else None, tol)]
        n_items = len(ref.items) if ref.items is not None else 0
        names = list(item_names) if len(item_names) == n_items else [f"item{i}" for i in range(n_items)]
        item_note = None
        if ref.items is not None and port.items is not None and len(port.items) == n_items:
            for i, n in enumerate(names):
                checks.append(_scalar_check(n, ref.items[i], port.items[i],
                                            oth.items[i] if oth is not None and oth.items is not None else None, tol))
        elif ref.items is not None:
            item_note = f"the port's loss gave {0 if port.items is None else len(port.items)} items, not {n_items}"
        grads = [_grad_check(n, g, oth.grads.get(n) if oth else None, port.grads.get(n), tol)
                 for n, g in ref.grads.items()]
        af, ab, tie = _assign_check(state, inp)
        block[inp.name] = {"items": [c for c in checks], "grads": grads, "assigner": ab,
                           **({"items_note": item_note} if item_note else {})}
        bad = [c for c in checks + grads if not c["ok"]]
        if item_note:
            bad_text = [item_note] + [_fmt_check(c) for c in bad]
        else:
            bad_text = [_fmt_check(c) for c in bad]
        if bad_text:
            differing = [c.get("item") or c.get("grad") for c in bad]
            variant = "isolated_tie" if tie else "isolated"
            out.append(Finding(
                type=T.LOSS_DIVERGENCE, severity=S.WARNING if tie else S.ERROR, state=state, location="loss",
                evidence={"loss_input": inp.name, "differs": differing, "checks": bad,
                          **({"explained_by": "assigner_tie"} if tie else {})},
                **render(T.LOSS_DIVERGENCE, variant, state=state, input=inp.name, problems="; ".join(bad_text))))
        out += af
    return out, block
