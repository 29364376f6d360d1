"""results.json -> view-model dataclasses -> one self-contained HTML page (jinja2, autoescape on).

Templates only loop and branch (style.md); every decision (ordering, formatting, what counts as a
mismatch) is made here. CSS, JS and SVG are inlined, so the page opens offline from disk.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2

from aligner.report import plots
from aligner.report.panels import (Table, anchor_tables, context_items, grad_tables, loss_tables,
                                   params_table)
from aligner.report.i18n import localized, translator, type_name
from aligner.report.results import check_results, fmt_num, severity_rank

__all__ = ["FindingView", "LayerRow", "TreeNode", "ReportPage", "build_page", "render_html"]

TEMPLATE_DIR = Path(__file__).with_name("templates")
# Most important first inside one severity: root causes before their consequences.
TYPE_PRIORITY = (
    "weight_transfer", "shape_mismatch", "missing_parameter", "extra_parameter", "param_count_drift",
    "init_mismatch", "mode_mismatch", "nan_inf", "forward_divergence", "backward_divergence", "unreachable_gradient",
    "frozen_parameter", "gradient_pattern", "extra_gradient", "vanishing_gradient", "anchor_count_drift",
    "loss_divergence", "assigner_mismatch", "unmatched_module", "grad_sparsity_explained")
# Which layer kinds a finding type points at (for the table's "finding type" filter).
_TYPE_KINDS = {"forward_divergence": ("forward",), "backward_divergence": ("backward",),
               "unreachable_gradient": ("param_grad", "backward"), "gradient_pattern": ("param_grad", "backward"),
               "extra_gradient": ("param_grad",), "frozen_parameter": ("param_grad",),
               "vanishing_gradient": ("param_grad", "backward")}
_LIST_PREVIEW = 12


@dataclass(frozen=True)
class FindingView:
    id: str
    type: str
    type_name: str
    severity: str
    severity_label: str
    state: str
    location: str
    message: str
    cause: str
    evidence: tuple[tuple[str, str], ...]
    is_first: bool


@dataclass(frozen=True)
class LayerRow:
    state: str
    kind: str
    kind_label: str
    order: int
    torch_name: str
    jittor_name: str
    module_type: str
    match: str
    shape: str
    shape_mismatch: bool
    max_abs: str
    max_abs_v: float
    rel: str
    rel_v: float
    tol: str
    tol_v: float
    cosine: str
    cosine_v: float
    floor: str
    floor_v: float
    intro: str
    intro_v: float
    ok: bool
    same_name: bool        # jittor name equals torch name (shown as "=")
    path: str              # torch module/parameter path, for the module-path filter
    ftypes: str            # space-separated finding types pointing at this row
    search: str            # lower-case text the search box matches


@dataclass(frozen=True)
class TreeNode:
    name: str
    short: str
    type: str
    torch_trainable: str
    torch_buffers: str
    jittor_trainable: str
    jittor_buffers: str
    count_mismatch: bool
    flag: str              # "finding" (a finding points here), "failing" (out-of-tolerance rows), ""
    problem_below: bool
    children: tuple["TreeNode", ...]


@dataclass(frozen=True)
class ReportPage:
    lang: str
    title: str
    run_id: str
    created: str
    verdict: str           # "pass" | "fail"
    verdict_label: str
    sentence: str
    counts_line: str
    type_chips: tuple[tuple[str, str, int], ...]   # (severity, type name, count)
    findings: tuple[FindingView, ...]
    layers: tuple[LayerRow, ...]
    kinds: tuple[tuple[str, str], ...]
    states: tuple[str, ...]
    paths: tuple[str, ...]   # module-path prefixes (depth 1 and 2) for the filter
    finding_types: tuple[tuple[str, str], ...]
    charts: tuple[plots.Chart, ...]
    coverage: tuple[plots.CoverageChart, ...]
    step_charts: tuple[plots.Chart, ...]
    tree: tuple[TreeNode, ...]
    params: Table
    grad_patterns: tuple[Table, ...]
    unmatched_torch: tuple[str, ...]
    unmatched_jittor: tuple[str, ...]
    anchors: Table | None
    anchors_totals: Table | None
    losses: tuple[Table, ...]
    fixlog: tuple[tuple[tuple[str, str], ...], ...]   # per entry: (label, value) in template order
    context: tuple[tuple[str, str], ...]


def _num(v: Any) -> float:
    """Sort value for a data-v attribute; missing values sort last (as +inf)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("inf")


def _evidence(ev: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(ev, Mapping):
        return (("value", fmt_num(ev)),) if ev is not None else ()
    out = []
    for k, v in ev.items():
        if isinstance(v, (list, tuple)):
            items = [fmt_num(x) if not isinstance(x, (dict, list)) else json.dumps(x) for x in v]
            more = len(items) - _LIST_PREVIEW
            text = ", ".join(items[:_LIST_PREVIEW]) + (f", … (+{more})" if more > 0 else "")
        elif isinstance(v, dict):
            text = json.dumps(v, ensure_ascii=False, sort_keys=True)
        else:
            text = fmt_num(v)
        out.append((str(k), text))
    return tuple(out)


def _is_first(f: Mapping[str, Any], fd: Mapping[str, Any] | None) -> bool:
    if not fd or f.get("severity") != "error":
        return False
    return (f.get("location") == fd.get("location") and f.get("type") == f"{fd.get('direction')}_divergence"
            and (f.get("state") in (None, fd.get("state"))))


def order_findings(findings: Sequence[Mapping[str, Any]], fd: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Most important first: severity, the first divergence, then root-cause types before consequences."""
    def key(ix: tuple[int, Mapping[str, Any]]) -> tuple[int, int, int, int]:
        i, f = ix
        t = f.get("type", "")
        prio = TYPE_PRIORITY.index(t) if t in TYPE_PRIORITY else len(TYPE_PRIORITY)
        return severity_rank(f.get("severity", "")), 0 if _is_first(f, fd) else 1, prio, i
    return [f for _, f in sorted(enumerate(findings), key=key)]


def _finding_views(results: Mapping[str, Any], lang: str, t: Callable[..., str]) -> tuple[FindingView, ...]:
    fd = results.get("first_divergence")
    views = []
    for f in order_findings(results.get("findings") or [], fd):
        sev = str(f.get("severity", ""))
        views.append(FindingView(
            str(f.get("id", "")), str(f.get("type", "")), type_name(str(f.get("type", "")), lang), sev,
            t(f"sev_{sev}"), str(f.get("state") or t("state_independent")), str(f.get("location", "")),
            localized(f, "message", lang), localized(f, "likely_cause", lang), _evidence(f.get("evidence")),
            _is_first(f, fd)))
    return tuple(views)


def _row_ftypes(row: Mapping[str, Any], findings: Sequence[Mapping[str, Any]]) -> str:
    name = str(row.get("torch_name", ""))
    hits = []
    for f in findings:
        loc, ftype = str(f.get("location") or ""), str(f.get("type", ""))
        if not loc or (f.get("state") and f.get("state") != row.get("state")):
            continue
        kinds = _TYPE_KINDS.get(ftype)
        if kinds and row.get("kind") not in kinds:
            continue
        if name == loc or name.startswith(loc + "."):
            hits.append(ftype)
    return " ".join(dict.fromkeys(hits))


def _shape_text(a: Any, b: Any) -> tuple[str, bool]:
    fa = "×".join(map(str, a)) if isinstance(a, list) else str(a)
    fb = "×".join(map(str, b)) if isinstance(b, list) else str(b)
    return (fa if fa == fb else f"{fa} | {fb}"), fa != fb


def _layer_rows(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[LayerRow, ...]:
    findings = results.get("findings") or []
    rows = []
    for r in results.get("layers") or []:
        shape, bad_shape = _shape_text(r.get("shape_torch"), r.get("shape_jittor"))
        tn, jn = str(r.get("torch_name", "")), str(r.get("jittor_name") or "")
        sub = str(r.get("sub") or "")
        if sub:
            tn, jn = f"{tn}/{sub}", (f"{jn}/{sub}" if jn else jn)
        if r.get("call"):
            tn += f" #{r['call']}"
        rows.append(LayerRow(
            str(r.get("state", "")), str(r.get("kind", "")), t(str(r.get("kind", ""))), int(r.get("order") or 0),
            tn, jn, str(r.get("module_type", "")), str(r.get("match", "")), shape, bad_shape,
            fmt_num(r.get("max_abs")), _num(r.get("max_abs")), fmt_num(r.get("rel")), _num(r.get("rel")),
            fmt_num(r.get("tol")), _num(r.get("tol")), fmt_num(r.get("cosine"), 4), _num(r.get("cosine")),
            fmt_num(r.get("noise_floor")), _num(r.get("noise_floor")), fmt_num(r.get("introduced_ratio")),
            _num(r.get("introduced_ratio")), bool(r.get("ok", False)), tn == jn, str(r.get("torch_name", "")),
            _row_ftypes(r, findings),
            f"{tn} {jn} {r.get('module_type', '')}".lower()))
    return tuple(rows)


def _path_prefixes(rows: Sequence[LayerRow], depth: int = 2) -> tuple[str, ...]:
    """Module-path prefixes of the rows down to ``depth``, sorted (children right after parents)."""
    out = set()
    for r in rows:
        parts = r.path.split(".")
        out.update(".".join(parts[:d]) for d in range(1, min(depth, len(parts)) + 1))
    return tuple(sorted(out))


def _counts(side: Any) -> tuple[Any, Any]:
    if not isinstance(side, Mapping):
        return None, None
    return side.get("trainable"), side.get("buffers")


def _nearest(name: str, names: set[str]) -> str:
    """The closest proper ancestor of ``name`` present in ``names`` ("" when none)."""
    parent = name
    while parent:
        parent = parent.rpartition(".")[0]
        if parent in names:
            return parent
    return ""


def _tree(results: Mapping[str, Any]) -> tuple[TreeNode, ...]:
    mods = list(results.get("modules") or [])
    if not mods:  # older producers: top-level counts only
        p = results.get("params") or {}
        tm, jm = (p.get("torch") or {}).get("modules") or {}, (p.get("jittor") or {}).get("modules") or {}
        mods = [{"name": n, "type": "", "torch": tm.get(n), "jittor": jm.get(n), "ok": tm.get(n) == jm.get(n)}
                for n in dict.fromkeys([*tm, *jm])]
    names = {str(m.get("name", "")) for m in mods if m.get("name")}
    failing = {str(r.get("torch_name")) for r in results.get("layers") or []
               if not r.get("ok", True) and r.get("kind") in ("forward", "backward")}
    # A finding's location may be below the listed modules (a BN inside a block): mark the nearest one.
    flagged = set()
    for f in results.get("findings") or []:
        loc = str(f.get("location") or "")
        if f.get("severity") in ("error", "warning") and loc:
            flagged.add(loc if loc in names else _nearest(loc, names))
    children: dict[str, list[Mapping[str, Any]]] = {}
    for m in mods:
        name = str(m.get("name", ""))
        if name:
            children.setdefault(_nearest(name, names), []).append(m)

    def build(m: Mapping[str, Any], parent: str) -> TreeNode:
        name = str(m.get("name", ""))
        kids = tuple(build(c, name) for c in children.get(name, []))
        ttr, tbuf = _counts(m.get("torch"))
        jtr, jbuf = _counts(m.get("jittor"))
        mismatch = (ttr, tbuf) != (jtr, jbuf) or m.get("ok") is False
        flag = "finding" if name in flagged else ("failing" if name in failing else "")
        below = mismatch or flag == "finding" or any(k.problem_below for k in kids)
        short = name[len(parent) + 1:] if parent else name
        return TreeNode(name, short, str(m.get("type", "")), fmt_num(ttr), fmt_num(tbuf), fmt_num(jtr),
                        fmt_num(jbuf), mismatch, flag, below, kids)

    return tuple(build(m, "") for m in children.get("", []))


def _headline(results: Mapping[str, Any], findings: Sequence[FindingView], t: Callable[..., str]) -> str:
    fd = results.get("first_divergence")
    if results.get("verdict") == "pass":
        return t("sentence_pass", compared=fmt_num(len(results.get("layers") or [])))
    if fd:
        return t("sentence_fail_fd", location=fd.get("location", ""), direction=t(str(fd.get("direction", ""))),
                 state=fd.get("state", ""), metric=fd.get("metric", ""), value=fmt_num(fd.get("value")),
                 tol=fmt_num(fd.get("tol")))
    errors = [f for f in findings if f.severity == "error"]
    first = f"{errors[0].type_name} @ {errors[0].location}" if errors else "–"
    return t("sentence_fail_nofd", errors=len(errors), first=first)


def _chips(results: Mapping[str, Any], lang: str) -> tuple[tuple[str, str, int], ...]:
    worst: dict[str, str] = {}
    for f in results.get("findings") or []:
        ftype, sev = str(f.get("type", "")), str(f.get("severity", ""))
        if ftype not in worst or severity_rank(sev) < severity_rank(worst[ftype]):
            worst[ftype] = sev
    by_type = (results.get("counts") or {}).get("by_type") or {}
    counted = {k: int(v) for k, v in by_type.items()} or {
        k: sum(f.get("type") == k for f in results.get("findings") or []) for k in worst}
    chips = [(worst.get(k, "info"), type_name(k, lang), n) for k, n in counted.items() if n]
    return tuple(sorted(chips, key=lambda c: (severity_rank(c[0]), -c[2], c[1])))


def build_page(results: Mapping[str, Any], *, lang: str = "en",
               fixlog_entries: Sequence[Any] = ()) -> ReportPage:
    """The whole view model of one report."""
    check_results(results)
    t = translator(lang)
    findings = _finding_views(results, lang, t)
    layers = _layer_rows(results, t)
    counts = results.get("counts") or {}
    n = {s: counts.get(s, sum(f.severity == s for f in findings)) for s in ("error", "warning", "info")}
    all_layers = results.get("layers") or []
    charts = tuple(plots.error_depth_chart(f"chart-{kind}", all_layers, kind, title=t(title), xlabel=t("plot_x_depth"),
                                           ylabel=t("plot_y_rel"), tol_label=t("plot_tol"))
                   for kind, title in (("forward", "plot_fwd"), ("backward", "plot_bwd")))
    cov_names = (t("cov_nonzero"), t("cov_zero"), t("cov_unreachable"))
    coverage = tuple(plots.coverage_chart(f"cov-{i}", gp, title=t("plot_coverage", state=state), names=cov_names)
                     for i, (state, gp) in enumerate(((results.get("params") or {}).get("grad_pattern") or {}).items()))
    steps = results.get("steps") or []
    step_labels = {k: t(k) for k in ("loss_torch", "loss_jittor", "weight_drift", "grad_drift")}
    step_charts = (plots.steps_loss_chart("steps-loss", steps, title=t("plot_steps_loss"), xlabel=t("plot_step"),
                                          labels=step_labels),
                   plots.steps_drift_chart("steps-drift", steps, title=t("plot_steps_drift"), xlabel=t("plot_step"),
                                           labels=step_labels)) if steps else ()
    unmatched = results.get("unmatched") or {}
    anchors, anchors_totals = anchor_tables(results, t)
    run = results.get("run") or {}
    ftypes = tuple((ft, type_name(ft, lang)) for ft in dict.fromkeys(f.type for f in findings))
    fixlog_fields = tuple(tuple(e.fields(lang)) for e in fixlog_entries)
    return ReportPage(
        lang=lang, title=f"{t('title')} · {run.get('pair', '')}", run_id=str(run.get("id", "")),
        created=str(run.get("created", "")), verdict=str(results.get("verdict")),
        verdict_label=t("verdict_pass") if results.get("verdict") == "pass" else t("verdict_fail"),
        sentence=_headline(results, findings, t),
        counts_line=t("counts_line", errors=n["error"], warnings=n["warning"], infos=n["info"]),
        type_chips=_chips(results, lang), findings=findings, layers=layers,
        kinds=tuple((k, t(k)) for k in dict.fromkeys(r.kind for r in layers)),
        states=tuple(dict.fromkeys(r.state for r in layers)), paths=_path_prefixes(layers), finding_types=ftypes,
        charts=charts,
        coverage=coverage, step_charts=step_charts, tree=_tree(results), params=params_table(results, t),
        grad_patterns=grad_tables(results, t), unmatched_torch=tuple(map(str, unmatched.get("torch") or [])),
        unmatched_jittor=tuple(map(str, unmatched.get("jittor") or [])), anchors=anchors,
        anchors_totals=anchors_totals, losses=loss_tables(results, t), fixlog=fixlog_fields,
        context=context_items(results, t))


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # one per process: it caches the compiled templates (compiling them took ~0.2 s per report)
    # autoescape for every template: module names and messages come from user code
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render_html(results: Mapping[str, Any], *, lang: str = "en", fixlog_entries: Sequence[Any] = ()) -> str:
    """Render the report page for ``results`` (a schema-1 dict) as one HTML string."""
    page = build_page(results, lang=lang, fixlog_entries=fixlog_entries)
    return _environment().get_template("report.html.j2").render(page=page, t=translator(lang))
