"""results.json -> view-model dataclasses -> one self-contained HTML page (jinja2, autoescape on).

Templates only loop and branch (style.md); every decision (ordering, formatting, what counts as a
mismatch) is made here. CSS, JS and SVG are inlined, so the page opens offline from disk. The layer
table travels as compact JSON (escaped for a script element) and is drawn a page at a time by the script,
which keeps a full GOLD-YOLO report small and interactive.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
from markupsafe import Markup

from aligner.report import plots
from aligner.report.culprit import Headline, explained_by, first_row_index, headline
from aligner.report.i18n import localized, state_label, translator, type_name
from aligner.report.panels import (QuickAnswer, Table, anchor_tables, context_items, grad_tables, loss_tables,
                                   params_table, quick_answers)
from aligner.results_io import check_results, fmt_num, judged_value, severity_rank

__all__ = ["FindingView", "FixlogRow", "TreeNode", "ReportPage", "build_page", "render_html", "order_findings",
           "layer_data"]

TEMPLATE_DIR = Path(__file__).with_name("templates")
# Which layer kinds a finding type points at (for the table's "finding type" filter and the finding links).
_TYPE_KINDS = {"forward_divergence": ("forward",), "backward_divergence": ("backward",),
               "unreachable_gradient": ("param_grad", "backward"), "gradient_pattern": ("param_grad", "backward"),
               "extra_gradient": ("param_grad",), "frozen_parameter": ("param_grad",),
               "vanishing_gradient": ("param_grad", "backward")}
_LIST_PREVIEW = 12
_MORE = re.compile(r"\.\.\.\s*(\d+) more")
# Gradient status words the analysis writes into its messages in both languages.
_STATUS_TOKEN = re.compile(r"(?<![\w.])(nonzero|zero|unreachable|frozen|UNREACHABLE)(?![\w.])")
PAGE_SIZE = 100
# Columns of one row of the embedded layer data (report.js reads them by these names).
# ``judged``: the number the row's verdict used (its ``metric``, an index into ``metrics``), next to ``tol``,
# the bound it was judged against. ``rel`` (max-norm against the float32 reference, which also carries the
# reference's own rounding) is in the data and layers.csv, not a table column.
LAYER_FIELDS = ("state", "kind", "order", "torch", "jittor", "type", "match", "shape", "shape_bad", "max_abs",
                "rel", "judged", "metric", "tol", "cos", "floor", "intro", "ok", "ftypes",
                "path")   # path None: same as torch
# Table columns: (sort key, label key, numeric).
LAYER_COLUMNS = (("state", "col_state", False), ("kind", "col_kind", False), ("order", "col_order", True),
                 ("torch", "col_torch", False), ("jittor", "col_jittor", False), ("type", "col_type", False),
                 ("match", "col_match", False), ("shape", "col_shape", False), ("max_abs", "col_max_abs", True),
                 ("judged", "col_judged", True), ("metric", "col_metric", False),
                 ("tol", "col_tol", True), ("cos", "col_cos", True),
                 ("floor", "col_floor", True), ("intro", "col_intro", True), ("ok", "col_ok", True))
_STATUS_CSS = {"done": "st-done", "open": "st-open", "partial": "st-partial"}
# the porting-log template's status words
_STATUS_WORDS = {"done": "✅完成", "open": "❌待修复", "partial": "⚠️部分完成"}


@dataclass(frozen=True)
class FindingView:
    id: str
    type: str
    type_name: str
    severity: str
    severity_label: str
    state: str
    location: str
    location_label: str        # the location, or "the whole model" for ""
    message: str
    cause: str
    evidence: tuple[tuple[str, str, tuple[str, ...]], ...]   # (key, preview text, full list when cut)
    is_first: bool
    row_href: str              # "#row-N" of the first matching layer row ("" when none)
    explained_by: str          # id of the finding that explains this one ("" for a root)
    explained_label: str       # "explained by the break at …"


@dataclass(frozen=True)
class FindingGroup:
    root: FindingView
    follow: tuple[FindingView, ...]


@dataclass(frozen=True)
class FixlogRow:
    id: str
    status: str                # done | open | partial
    status_css: str
    cells: tuple[str, ...]     # date, problem, analysis, fix, verification, status text


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
    head: Headline
    counts_line: str
    type_chips: tuple[tuple[str, str, int], ...]   # (severity, type name, count)
    findings: tuple[FindingView, ...]              # results.json order (the analysis's causal order)
    groups: tuple[FindingGroup, ...]               # roots with the findings they explain
    quick: tuple[QuickAnswer, ...]
    layer_json: Markup     # compact layer rows for report.js
    n_layers: int
    columns: tuple[tuple[str, str, bool], ...]     # (sort key, label, numeric)
    kinds: tuple[tuple[str, str], ...]
    states: tuple[tuple[str, str], ...]   # (value, label)
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
    fixlog_head: tuple[str, ...]
    fixlog: tuple[FixlogRow, ...]
    fixlog_statuses: tuple[tuple[str, str], ...]
    context: tuple[tuple[str, str, bool], ...]


def _evidence(ev: Any, t: Callable[..., str], lang: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    if not isinstance(ev, Mapping):
        return (("value", fmt_num(ev), ()),) if ev is not None else ()
    out = []
    for k, v in ev.items():
        if v == "":
            continue
        full: tuple[str, ...] = ()
        if isinstance(v, (list, tuple)):
            cut = 0
            if v and isinstance(v[-1], str) and _MORE.fullmatch(v[-1]):   # the analysis cut the list: "... 27 more"
                cut, v = int(_MORE.fullmatch(v[-1]).group(1)), v[:-1]
            items = [t(f"val_{x}") if isinstance(x, str) and t(f"val_{x}") != f"val_{x}" else
                     fmt_num(x) if not isinstance(x, (dict, list)) else json.dumps(x, ensure_ascii=False) for x in v]
            # The analysis may have cut a long list itself and recorded the real length next to it.
            total = next((ev[c] for c in (f"n_{k}", f"{k}_count", f"{k}_total") if isinstance(ev.get(c), int)),
                         len(items) + cut)
            if k == "zero_gradient" and isinstance(ev.get("total"), int) and isinstance(ev.get("nonzero"), int):
                total = max(total, ev["total"] - ev["nonzero"])   # the list holds the first names only
            more = total - min(len(items), _LIST_PREVIEW)
            text = ", ".join(items[:_LIST_PREVIEW]) + (f", … (+{fmt_num(more)})" if more > 0 else "")
            full = tuple(items) if len(items) > _LIST_PREVIEW else ()
        elif isinstance(v, dict):
            text = json.dumps(v, ensure_ascii=False, sort_keys=True)
        elif isinstance(v, bool):
            text = t("yes") if v else t("no")
        elif isinstance(v, str) and t(f"val_{v}") != f"val_{v}":
            text = t(f"val_{v}")
        elif isinstance(v, str) and k == "state":
            text = state_label(v, lang)
        else:
            text = fmt_num(v)
        out.append((t(f"ev_{k}") if t(f"ev_{k}") != f"ev_{k}" else str(k), text, full))
    return tuple(out)


def _is_first(f: Mapping[str, Any], fd: Mapping[str, Any] | None) -> bool:
    if not fd or f.get("severity") != "error":
        return False
    return (f.get("location") == fd.get("location") and f.get("type") == f"{fd.get('direction')}_divergence"
            and (f.get("state") in (None, fd.get("state"))))


def order_findings(findings: Sequence[Mapping[str, Any]], fd: Mapping[str, Any] | None = None
                   ) -> list[Mapping[str, Any]]:
    """The findings in results.json order: the analysis already sorts them by its causal order."""
    return list(findings)


def _row_matches(row: Mapping[str, Any], f: Mapping[str, Any]) -> bool:
    loc, ftype = str(f.get("location") or ""), str(f.get("type", ""))
    if not loc or (f.get("state") and f.get("state") != row.get("state")):
        return False
    kinds = _TYPE_KINDS.get(ftype)
    if kinds and row.get("kind") not in kinds:
        return False
    name = str(row.get("torch_name", ""))
    return name == loc or name.startswith(loc + ".")


def _finding_rows(results: Mapping[str, Any]) -> dict[str, int]:
    """finding id -> index of the row it points at (the failing one first, else the first match)."""
    layers = results.get("layers") or []
    out: dict[str, int] = {}
    fd_row = first_row_index(results)
    for f in results.get("findings") or []:
        if _is_first(f, results.get("first_divergence")) and fd_row >= 0:
            out[str(f.get("id"))] = fd_row
            continue
        hits = [i for i, r in enumerate(layers) if _row_matches(r, f)]
        bad = [i for i in hits if not layers[i].get("ok", True)]
        if bad or hits:
            out[str(f.get("id"))] = (bad or hits)[0]
    return out


def _finding_views(results: Mapping[str, Any], lang: str, t: Callable[..., str]) -> tuple[FindingView, ...]:
    fd = results.get("first_divergence")
    rows = _finding_rows(results)
    parents = explained_by(results)
    by_id = {str(f.get("id")): f for f in results.get("findings") or []}
    views = []
    for f in order_findings(results.get("findings") or [], fd):
        fid, sev, loc = str(f.get("id", "")), str(f.get("severity", "")), str(f.get("location", ""))
        parent = parents.get(fid, "")
        message, cause = localized(f, "message", lang), localized(f, "likely_cause", lang)
        if lang == "zh":
            message, cause = _zh_status(message, t), _zh_status(cause, t)
        if cause and cause.strip() in message:
            cause = ""  # the analysis often ends its message with the cause: say it once
        ploc = str((by_id.get(parent) or {}).get("location") or "") if parent else ""
        views.append(FindingView(
            fid, str(f.get("type", "")), type_name(str(f.get("type", "")), lang), sev, t(f"sev_{sev}"),
            state_label(str(f["state"]), lang) if f.get("state") else t("state_independent"), loc,
            loc or t("whole_model"),
            message, cause, _evidence(f.get("evidence"), t, lang),
            _is_first(f, fd), f"#row-{rows[fid]}" if fid in rows else "", parent,
            t("explained_by", location=ploc or t("whole_model")) if parent else ""))
    return tuple(views)


def _zh_status(text: str, t: Callable[..., str]) -> str:
    """The English gradient status words inside a Chinese message (参考：zero) in Chinese."""
    return _STATUS_TOKEN.sub(lambda m: t(f"val_{m.group(1).lower()}"), text)


def _groups(views: Sequence[FindingView]) -> tuple[FindingGroup, ...]:
    follow: dict[str, list[FindingView]] = {}
    for v in views:
        if v.explained_by:
            follow.setdefault(v.explained_by, []).append(v)
    return tuple(FindingGroup(v, tuple(follow.get(v.id, ()))) for v in views if not v.explained_by)


def _shape_text(a: Any, b: Any) -> tuple[str, bool]:
    fa = "×".join(map(str, a)) if isinstance(a, list) else str(a)
    fb = "×".join(map(str, b)) if isinstance(b, list) else str(b)
    return (fa if fa == fb else f"{fa} | {fb}"), fa != fb


def _compact(v: Any) -> float | int | None:
    """A number with 4 significant digits (what the table shows), None for missing or non-finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, int):
        return v
    if math.isnan(v) or math.isinf(v):
        return None
    return float(f"{v:.4g}")


def layer_data(results: Mapping[str, Any], t: Callable[..., str], lang: str = "en") -> dict[str, Any]:
    """The layer rows as compact columns: repeated strings become indices into small lists."""
    findings = results.get("findings") or []
    states: dict[str, int] = {}
    kinds: dict[str, int] = {}
    types: dict[str, int] = {}
    matches: dict[str, int] = {}
    metrics: dict[str, int] = {}
    idx = lambda d, k: d.setdefault(k, len(d))  # noqa: E731
    # Finding types per row: only rows a located finding points at (cheap: by location prefix).
    located = [f for f in findings if f.get("location")]
    rows = []
    for r in results.get("layers") or []:
        shape, bad_shape = _shape_text(r.get("shape_torch"), r.get("shape_jittor"))
        tn, jn = str(r.get("torch_name", "")), str(r.get("jittor_name") or "")
        sub = str(r.get("sub") or "")
        if sub:
            tn, jn = f"{tn}/{sub}", (f"{jn}/{sub}" if jn else jn)
        if r.get("call"):
            tn += f" #{r['call']}"
        ftypes = " ".join(dict.fromkeys(str(f.get("type")) for f in located if _row_matches(r, f)))
        rows.append([idx(states, str(r.get("state", ""))), idx(kinds, str(r.get("kind", ""))),
                     int(r.get("order") or 0), tn, None if jn == tn else jn,
                     idx(types, str(r.get("module_type", ""))), idx(matches, str(r.get("match", ""))), shape,
                     1 if bad_shape else 0, _compact(r.get("max_abs")), _compact(r.get("rel")),
                     _compact(judged_value(r)),
                     idx(metrics, str(r.get("metric") or "")), _compact(r.get("tol")), _compact(r.get("cosine")), _compact(r.get("noise_floor")),
                     _compact(r.get("introduced_ratio")), 1 if r.get("ok", False) else 0, ftypes,
                     None if str(r.get("torch_name", "")) == tn else str(r.get("torch_name", ""))])
    return {"fields": list(LAYER_FIELDS), "states": list(states), "kinds": list(kinds), "types": list(types),
            "matches": list(matches), "metrics": list(metrics),
            "metric_labels": [t("metric_" + m) if m else "" for m in metrics], "rows": rows, "page_size": PAGE_SIZE, "first_row": first_row_index(results),
            "labels": {"kinds": [t(k) for k in kinds], "states": [state_label(st, lang) for st in states],
                       "ok": t("ok"), "fail": t("fail"), "page": t("page"),
                       "first_divergence": t("first_divergence")}}


def _script_json(data: Any) -> Markup:
    """JSON safe inside a <script> element: no "</script>", no "<!--", no HTML parsing of user names."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
                  .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _path_prefixes(results: Mapping[str, Any], depth: int = 2) -> tuple[str, ...]:
    """Module-path prefixes of the rows down to ``depth``, sorted (children right after parents)."""
    out = set()
    for r in results.get("layers") or []:
        parts = str(r.get("torch_name", "")).split(".")
        out.update(".".join(parts[:d]) for d in range(1, min(depth, len(parts)) + 1))
    out.discard("")
    return tuple(sorted(out))


def _fixlog_rows(entries: Sequence[Any], lang: str) -> tuple[FixlogRow, ...]:
    t = translator(lang)
    out = []
    for e in entries:
        status = str(getattr(e.status, "value", e.status))
        values = [v for _, v in e.fields(lang)][:5]
        word = _STATUS_WORDS.get(status, status)
        # The template's words in both languages; the English report adds the English word.
        text = word if lang == "zh" else f"{word} · {t('fx_word_' + status)}"
        out.append(FixlogRow(str(e.id), status, _STATUS_CSS.get(status, ""), (*values, text)))
    return tuple(out)


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
    data = layer_data(results, t, lang)
    counts = results.get("counts") or {}
    n = {s: counts.get(s, sum(f.severity == s for f in findings)) for s in ("error", "warning", "info")}
    all_layers = results.get("layers") or []
    fd_row = first_row_index(results)
    charts = tuple(plots.error_depth_chart(
        f"chart-{kind}", all_layers, kind, title=t(title), xlabel=t("plot_x_depth"), ylabel=t("plot_y_rel"),
        tol_label=t("plot_tol"), zero_label=t("plot_zero"), fd_index=fd_row, fd_label=t("plot_fd"),
        state_label=lambda st: state_label(st, lang), root_label=t("whole_model"))
        for kind, title in (("forward", "plot_fwd"), ("backward", "plot_bwd")))
    cov_names = (t("cov_nonzero"), t("cov_zero"), t("cov_unreachable"), t("cov_frozen"))
    grad_pattern = (results.get("params") or {}).get("grad_pattern") or {}
    coverage = tuple(plots.coverage_chart(f"cov-{i}", gp, title=t("plot_coverage", state=state_label(state, lang)),
                                          names=cov_names, total_label=t("total"))
                     for i, (state, gp) in enumerate(grad_pattern.items()))
    steps = results.get("steps") or []
    step_labels = {k: t(k) for k in ("loss_torch", "loss_jittor", "weight_drift", "grad_drift")}
    step_charts = (plots.steps_loss_chart("steps-loss", steps, title=t("plot_steps_loss"), xlabel=t("plot_step"),
                                          labels=step_labels, ylabel=t("loss_item_y")),
                   plots.steps_drift_chart("steps-drift", steps, title=t("plot_steps_drift"), xlabel=t("plot_step"),
                                           labels=step_labels, ylabel=t("drift_y"))) if steps else ()
    unmatched = results.get("unmatched") or {}
    anchors, anchors_totals = anchor_tables(results, t)
    run = results.get("run") or {}
    ftypes = tuple((ft, type_name(ft, lang)) for ft in dict.fromkeys(f.type for f in findings))
    fx_rows = _fixlog_rows(fixlog_entries, lang)
    return ReportPage(
        lang=lang, title=f"{t('title')} · {run.get('pair', '')}", run_id=str(run.get("id", "")),
        created=str(run.get("created", "")), verdict=str(results.get("verdict")),
        verdict_label=t("verdict_pass") if results.get("verdict") == "pass" else t("verdict_fail"),
        head=headline(results, lang, t),
        counts_line=t("counts_line", errors=n["error"], warnings=n["warning"], infos=n["info"]),
        type_chips=_chips(results, lang), findings=findings, groups=_groups(findings),
        quick=quick_answers(results, t), layer_json=_script_json(data), n_layers=len(all_layers),
        columns=tuple((k, t(label), num) for k, label, num in LAYER_COLUMNS),
        kinds=tuple((k, t(k)) for k in data["kinds"]),
        states=tuple((st, state_label(st, lang)) for st in data["states"]),
        paths=_path_prefixes(results), finding_types=ftypes, charts=charts,
        coverage=coverage, step_charts=step_charts, tree=_tree(results), params=params_table(results, t),
        grad_patterns=grad_tables(results, t), unmatched_torch=tuple(map(str, unmatched.get("torch") or [])),
        unmatched_jittor=tuple(map(str, unmatched.get("jittor") or [])), anchors=anchors,
        anchors_totals=anchors_totals, losses=loss_tables(results, t),
        fixlog_head=(t("fx_id"), *(t(f"fx_{k}") for k in ("date", "problem", "analysis", "fix", "verification",
                                                          "status"))),
        fixlog=fx_rows,
        fixlog_statuses=tuple((s, _STATUS_WORDS[s] if lang == "zh" else t(f"fx_word_{s}"))
                              for s in dict.fromkeys(r.status for r in fx_rows) if s in _STATUS_WORDS),
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
