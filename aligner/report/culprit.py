"""Culprit first: the headline of a report and the grouping of follow-on findings under their cause.

Computed from results.json only (the first divergence, the findings in the analysis's causal order, the
layer rows' execution order and introduced ratios); nothing here re-judges a number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from aligner.report.i18n import localized, state_label, type_name
from aligner.results_io import fmt_num

__all__ = ["Headline", "first_row_index", "headline", "module_orders", "explained_by"]

# Findings that are consequences of a break upstream of them (never a root on their own when one exists).
_FOLLOW_ON = frozenset({"forward_divergence", "backward_divergence", "unreachable_gradient", "gradient_pattern",
                        "extra_gradient", "vanishing_gradient", "loss_divergence", "assigner_mismatch", "nan_inf"})
_FORWARD_CAUSES = frozenset({"forward_divergence", "mode_mismatch", "shape_mismatch", "init_mismatch",
                             "weight_transfer", "missing_parameter", "nan_inf"})
_GRADIENT_TYPES = frozenset({"backward_divergence", "unreachable_gradient", "gradient_pattern", "extra_gradient",
                             "vanishing_gradient"})


@dataclass(frozen=True)
class Headline:
    kind: str              # "pass" | "divergence" | "model" | "finding"
    title: str             # one line naming the culprit (or saying there is none)
    cause: str             # one sentence of cause ("" when unknown)
    next_step: str         # what to do next
    href: str              # "#row-N" of the first divergence row, or "#finding-ID", or ""
    link_label: str


def first_row_index(results: Mapping[str, Any]) -> int:
    """Index in ``layers`` of the first divergence row (-1 when there is none)."""
    fd = results.get("first_divergence") or {}
    name, state, kind = fd.get("torch_name"), fd.get("state"), fd.get("direction")
    if not name or not kind:
        return -1
    rows = results.get("layers") or []
    for strict in (True, False):
        for i, r in enumerate(rows):
            if (r.get("torch_name") == name and r.get("kind") == kind and (state is None or r.get("state") == state)
                    and (not strict or not r.get("ok", True))):
                return i
    return -1


def module_orders(results: Mapping[str, Any]) -> dict[str, int]:
    """First forward execution index of every module (torch names)."""
    out: dict[str, int] = {}
    for r in results.get("layers") or []:
        if r.get("kind") == "forward" and isinstance(r.get("order"), int):
            name = str(r.get("torch_name", ""))
            out[name] = min(out.get(name, r["order"]), r["order"])
    return out


def _order_of(location: str, orders: Mapping[str, int]) -> int | None:
    """Execution index of ``location`` or of its nearest listed ancestor (a parameter's module)."""
    loc = location
    while loc:
        if loc in orders:
            return orders[loc]
        loc = loc.rpartition(".")[0]
    below = [v for k, v in orders.items() if k.startswith(location + ".")] if location else []
    return min(below) if below else None


def _related(a: str, b: str) -> bool:
    return bool(a) and bool(b) and (a == b or a.startswith(b + ".") or b.startswith(a + "."))


def _explains(root: Mapping[str, Any], f: Mapping[str, Any], orders: Mapping[str, int]) -> bool:
    """Whether error/warning finding ``f`` (later in causal order) follows from ``root``."""
    rt, ft = str(root.get("type", "")), str(f.get("type", ""))
    rloc, floc = str(root.get("location") or ""), str(f.get("location") or "")
    if ft not in _FOLLOW_ON:
        return False
    if _related(rloc, floc):
        return True
    if not rloc:  # a model-wide cause (eval before the gradient pass, ...) explains every gradient symptom
        return ft in _GRADIENT_TYPES or ft == "backward_divergence"
    ro, fo = _order_of(rloc, orders), _order_of(floc, orders)
    if rt in _FORWARD_CAUSES:
        # Everything computed after a forward break differs: later outputs, every gradient, the loss.
        return ft in _GRADIENT_TYPES or ft in ("loss_divergence", "assigner_mismatch") or (
            ro is not None and fo is not None and fo >= ro)
    if rt == "backward_divergence":
        # A backward break changes the gradients of everything that ran before it.
        return ft in _GRADIENT_TYPES and ro is not None and fo is not None and fo <= ro
    return False


def explained_by(results: Mapping[str, Any]) -> dict[str, str]:
    """finding id -> id of the earlier finding that explains it (roots are absent)."""
    orders = module_orders(results)
    roots: list[Mapping[str, Any]] = []
    out: dict[str, str] = {}
    for f in results.get("findings") or []:
        if f.get("severity") not in ("error", "warning"):
            continue
        root = next((r for r in roots if _explains(r, f, orders)), None)
        if root is not None:
            out[str(f.get("id"))] = str(root.get("id"))
        elif f.get("severity") == "error":
            roots.append(f)
    return out


def _ratio(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"


def _first_error(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((f for f in results.get("findings") or [] if f.get("severity") == "error"), None)


def _finding_at(results: Mapping[str, Any], location: str, ftype: str) -> Mapping[str, Any] | None:
    findings = [f for f in results.get("findings") or [] if f.get("severity") == "error"]
    return (next((f for f in findings if f.get("location") == location and f.get("type") == ftype), None)
            or next((f for f in findings if f.get("location") == location), None))


def headline(results: Mapping[str, Any], lang: str, t: Callable[..., str]) -> Headline:
    """Culprit-first headline: where it breaks, why (one sentence), what to do next."""
    layers: Sequence[Mapping[str, Any]] = results.get("layers") or []
    if results.get("verdict") == "pass":
        return Headline("pass", t("head_pass", compared=fmt_num(len(layers))), t("head_pass_cause"), "", "", "")
    fd = results.get("first_divergence") or {}
    first = _first_error(results)
    row_i = first_row_index(results)
    if fd and row_i >= 0:
        row = layers[row_i]
        loc = str(fd.get("location") or fd.get("torch_name") or "")
        direction = str(fd.get("direction", ""))
        ratio = row.get("introduced_ratio")
        intro = t("head_introduced", ratio=_ratio(ratio)) if isinstance(ratio, (int, float)) and ratio > 1.5 else ""
        title = t(f"head_{direction}" if direction in ("forward", "backward") else "head_forward",
                  location=loc or t("whole_model"), state=state_label(str(row.get("state", "")), lang),
                  metric=str(fd.get("metric") or ""), value=fmt_num(fd.get("value")), tol=fmt_num(fd.get("tol")),
                  intro=intro)
        f = _finding_at(results, loc, f"{direction}_divergence") or first
        cause = localized(f, "likely_cause", lang) or localized(f, "message", lang) if f else ""
        step = t(f"next_{direction}_divergence", location=loc, module_type=str(row.get("module_type", "")))
        return Headline("divergence", title, cause, step, f"#row-{row_i}", t("head_show_row"))
    if first is not None:
        loc = str(first.get("location") or "")
        ftype = str(first.get("type", ""))
        state = first.get("state")
        kind = "model" if not loc else "finding"
        where = t("whole_model") if not loc else loc
        title = t(f"head_{kind}", type=type_name(ftype, lang), location=where,
                  state=state_label(str(state), lang) if state else t("state_independent"))
        cause = localized(first, "message", lang)
        key = f"next_{ftype}"
        step = t(key, location=where, module_type="") if t(key) != key else t("next_default", location=where)
        return Headline(kind, title, cause, step, f"#finding-{first.get('id')}", t("head_show_finding"))
    return Headline("finding", t("head_fail_unknown"), "", "", "", "")
