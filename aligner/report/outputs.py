"""Write a run directory: index.html, results.json, layers.csv and summary.md, all or nothing.

Every file is rendered first, then written as temp files next to their targets and renamed into place
together (coverage.py's render_report rule: never leave a half-written report behind). User-controlled
text (module names, messages) is escaped for Markdown in summary.md and cannot become a spreadsheet
formula in layers.csv.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from aligner.fsio import atomic_write_files, prepare_output_dir
from aligner.report.html import order_findings, render_html
from aligner.report.i18n import localized, translator, type_name
from aligner.results_io import RESULTS_FILE, check_results, fmt_num, results_text

__all__ = ["OutputPaths", "write_outputs", "render_summary", "layers_csv", "md_text", "md_code", "csv_cell"]

LAYER_COLUMNS = ("state", "kind", "order", "torch_name", "jittor_name", "sub", "call", "module_type", "match",
                 "shape_torch", "shape_jittor", "max_abs", "rel", "mean_abs", "cosine", "frac_close",
                 "required_atol", "nan_torch", "nan_jittor", "inf_torch", "inf_jittor", "zero_frac_torch",
                 "zero_frac_jittor", "metric", "value", "tol", "noise_floor", "introduced_ratio", "ok")
OUTPUT_FILES = ("index.html", RESULTS_FILE, "layers.csv", "summary.md")
_SUMMARY_FINDINGS = 10
# A cell starting with one of these is a formula in Excel / LibreOffice / Sheets (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Characters that make Markdown markup or raw HTML; a backslash turns each into a literal (CommonMark).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#!])")


@dataclass(frozen=True)
class OutputPaths:
    index_html: Path
    results_json: Path
    layers_csv: Path
    summary_md: Path


def csv_cell(value: Any) -> Any:
    """A CSV value: text that a spreadsheet would run as a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def layers_csv(results: Mapping[str, Any]) -> str:
    """layers.csv text: one row per layer row, columns in schema order, shapes as "1x32x125x125"."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LAYER_COLUMNS)
    for r in results.get("layers") or []:
        row = []
        for c in LAYER_COLUMNS:
            v = r.get(c)
            if c in ("shape_torch", "shape_jittor") and isinstance(v, list):
                v = "x".join(map(str, v))
            row.append(csv_cell(v))
        w.writerow(row)
    return buf.getvalue()


def md_text(text: Any) -> str:
    """Plain text for Markdown (a table cell or a list item): no markup, no raw HTML, no cell breaks."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")


def md_code(text: Any) -> str:
    """``text`` as an inline code span that no backtick in it can close early (and no | can split a cell)."""
    body = str(text).replace("\r", " ").replace("\n", " ")
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") or not body.strip() else ""
    return f"{fence}{pad}{body.replace('|', chr(92) + '|')}{pad}{fence}"


def render_summary(results: Mapping[str, Any], *, lang: str = "en", fixlog_entries: Sequence[Any] = ()) -> str:
    """A short Markdown summary: verdict, first divergence, counts, top findings, totals."""
    t = translator(lang)
    run = results.get("run") or {}
    counts = results.get("counts") or {}
    verdict = t("verdict_pass") if results.get("verdict") == "pass" else t("verdict_fail")
    lines = [f"# {t('title')}: {md_text(run.get('pair', ''))} — **{verdict}**", "",
             f"- {t('run_id')}: {md_code(run.get('id', ''))} · {t('dtype')} {md_text(run.get('dtype', ''))} · "
             f"{t('seed')} {md_text(run.get('seed', ''))} · {t('config')} "
             + ", ".join(f"{md_text(k)}={md_text(v)}" for k, v in (run.get("config") or {}).items()),
             "- " + t("counts_line", errors=counts.get("error", 0), warnings=counts.get("warning", 0),
                      infos=counts.get("info", 0))]
    fd = results.get("first_divergence")
    if fd:
        lines.append("- " + t("sentence_fail_fd", location=md_code(fd.get("location", "")),
                              direction=t(str(fd.get("direction", ""))), state=md_text(fd.get("state", "")),
                              metric=md_text(fd.get("metric", "")), value=md_text(fmt_num(fd.get("value"))),
                              tol=md_text(fmt_num(fd.get("tol")))))
    findings = order_findings(results.get("findings") or [], fd)
    if findings:
        lines += ["", f"## {t('findings')}", "",
                  f"| {t('severity')} | {t('type')} | {t('location')} | {t('message')} |", "|---|---|---|---|"]
        for f in findings[:_SUMMARY_FINDINGS]:
            msg = md_text(localized(f, "message", lang))
            lines.append(f"| {t('sev_' + str(f.get('severity')))} | {md_text(type_name(str(f.get('type')), lang))} | "
                         f"{md_code(f.get('location', ''))} | {msg} |")
        if len(findings) > _SUMMARY_FINDINGS:
            lines.append(f"| … | +{len(findings) - _SUMMARY_FINDINGS} | | |")
    p = results.get("params") or {}
    if p.get("torch") or p.get("jittor"):
        tp, jp = p.get("torch") or {}, p.get("jittor") or {}
        lines += ["", f"- {t('params')} ({t('trainable')}): {t('torch')} {md_text(fmt_num(tp.get('trainable')))} · "
                      f"{t('jittor')} {md_text(fmt_num(jp.get('trainable')))}"]
    a = results.get("anchors")
    if a:
        lines.append(f"- {t('anchors')} @ {md_text(a.get('img_size'))}: {t('expected')} "
                     f"{md_text(fmt_num(a.get('expected')))} · {t('torch')} {md_text(fmt_num(a.get('torch')))} · "
                     f"{t('jittor')} {md_text(fmt_num(a.get('jittor')))}")
    if fixlog_entries:
        lines += ["", f"## {t('fixlog')}", ""]
        for e in fixlog_entries:
            fields = dict(e.fields(lang))
            lines.append(f"- {md_text(e.id)} {fields[t('fx_status')]} {md_text(fields[t('fx_problem')])}")
    lines += ["", f"[index.html](index.html) · [results.json](results.json) · [layers.csv](layers.csv)", ""]
    return "\n".join(lines)


def write_outputs(results: Mapping[str, Any], out_dir: str | Path, *, lang: str = "en",
                  fixlog_entries: Sequence[Any] = (), may_replace: Sequence[str] = ()) -> OutputPaths:
    """Render and write the four files of a run directory atomically; returns their paths.

    ``out_dir`` must be new, empty or written by the aligner before, or hold none of the four files
    (``may_replace``: names that may be overwritten anyway, e.g. the results.json rendered from).
    """
    check_results(results)
    files = {"index.html": render_html(results, lang=lang, fixlog_entries=fixlog_entries),
             RESULTS_FILE: results_text(results),
             "layers.csv": layers_csv(results),
             "summary.md": render_summary(results, lang=lang, fixlog_entries=fixlog_entries)}
    out = prepare_output_dir(out_dir, OUTPUT_FILES, may_replace)
    atomic_write_files(out, files)
    return OutputPaths(*(out / name for name in OUTPUT_FILES))
