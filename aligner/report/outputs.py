"""Write a run directory: index.html, results.json, layers.csv and summary.md, all or nothing.

Every file is rendered to a temp file next to its target first; only when all four exist are they
renamed into place, and on any failure the temp files are deleted (coverage.py's render_report rule:
never leave a half-written report behind).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from aligner.report.html import order_findings, render_html
from aligner.report.i18n import localized, translator, type_name
from aligner.report.results import check_results, fmt_num
from aligner.result import dumps_json

__all__ = ["OutputPaths", "write_outputs", "render_summary", "layers_frame", "results_json"]

LAYER_COLUMNS = ("state", "kind", "order", "torch_name", "jittor_name", "sub", "call", "module_type", "match",
                 "shape_torch", "shape_jittor", "max_abs", "rel", "mean_abs", "cosine", "frac_close",
                 "required_atol", "nan_torch", "nan_jittor", "inf_torch", "inf_jittor", "zero_frac_torch",
                 "zero_frac_jittor", "tol", "noise_floor", "introduced_ratio", "ok")
_SUMMARY_FINDINGS = 10


@dataclass(frozen=True)
class OutputPaths:
    index_html: Path
    results_json: Path
    layers_csv: Path
    summary_md: Path


def results_json(results: Mapping[str, Any]) -> str:
    """results.json text: UTF-8, indent 1 (a layer row per line), key order kept (it matters, per the schema doc)."""
    return dumps_json(results, allow_nan=True) + "\n"


def layers_frame(results: Mapping[str, Any]) -> Any:
    """pandas DataFrame of the layer rows (shapes as "1x32x125x125"), columns in schema order."""
    import pandas as pd  # heavy; only this writer needs it

    rows = []
    for r in results.get("layers") or []:
        row = {c: r.get(c) for c in LAYER_COLUMNS}
        for c in ("shape_torch", "shape_jittor"):
            if isinstance(row[c], list):
                row[c] = "x".join(map(str, row[c]))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(LAYER_COLUMNS))


def render_summary(results: Mapping[str, Any], *, lang: str = "en", fixlog_entries: Sequence[Any] = ()) -> str:
    """A short Markdown summary: verdict, first divergence, counts, top findings, totals."""
    t = translator(lang)
    run = results.get("run") or {}
    counts = results.get("counts") or {}
    verdict = t("verdict_pass") if results.get("verdict") == "pass" else t("verdict_fail")
    lines = [f"# {t('title')}: {run.get('pair', '')} — **{verdict}**", "",
             f"- {t('run_id')}: `{run.get('id', '')}` · {t('dtype')} {run.get('dtype', '')} · "
             f"{t('seed')} {run.get('seed', '')} · {t('config')} "
             + ", ".join(f"{k}={v}" for k, v in (run.get("config") or {}).items()),
             "- " + t("counts_line", errors=counts.get("error", 0), warnings=counts.get("warning", 0),
                      infos=counts.get("info", 0))]
    fd = results.get("first_divergence")
    if fd:
        lines.append("- " + t("sentence_fail_fd", location=f"`{fd.get('location', '')}`",
                              direction=t(str(fd.get("direction", ""))), state=fd.get("state", ""),
                              metric=fd.get("metric", ""), value=fmt_num(fd.get("value")), tol=fmt_num(fd.get("tol"))))
    findings = order_findings(results.get("findings") or [], fd)
    if findings:
        lines += ["", f"## {t('findings')}", "",
                  f"| {t('severity')} | {t('type')} | {t('location')} | {t('message')} |", "|---|---|---|---|"]
        for f in findings[:_SUMMARY_FINDINGS]:
            msg = _md_text(localized(f, "message", lang))
            lines.append(f"| {t('sev_' + str(f.get('severity')))} | {type_name(str(f.get('type')), lang)} | "
                         f"`{f.get('location', '')}` | {msg} |")
        if len(findings) > _SUMMARY_FINDINGS:
            lines.append(f"| … | +{len(findings) - _SUMMARY_FINDINGS} | | |")
    p = results.get("params") or {}
    if p.get("torch") or p.get("jittor"):
        tp, jp = p.get("torch") or {}, p.get("jittor") or {}
        lines += ["", f"- {t('params')} ({t('trainable')}): {t('torch')} {fmt_num(tp.get('trainable'))} · "
                      f"{t('jittor')} {fmt_num(jp.get('trainable'))}"]
    a = results.get("anchors")
    if a:
        lines.append(f"- {t('anchors')} @ {a.get('img_size')}: {t('expected')} {fmt_num(a.get('expected'))} · "
                     f"{t('torch')} {fmt_num(a.get('torch'))} · {t('jittor')} {fmt_num(a.get('jittor'))}")
    if fixlog_entries:
        lines += ["", f"## {t('fixlog')}", ""]
        for e in fixlog_entries:
            fields = dict(e.fields(lang))
            lines.append(f"- {e.id} {fields[t('fx_status')]} {_md_text(fields[t('fx_problem')])}")
    lines += ["", f"[index.html](index.html) · [results.json](results.json) · [layers.csv](layers.csv)", ""]
    return "\n".join(lines)


def _md_text(text: str) -> str:
    """Plain text for a Markdown table cell: no raw HTML, no cell breaks."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\n", " "))


def _write_temp(directory: Path, name: str, write: Callable[[Path], None], temps: list[Path]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    temps.append(Path(tmp))
    write(Path(tmp))


def write_outputs(results: Mapping[str, Any], out_dir: str | Path, *, lang: str = "en",
                  fixlog_entries: Sequence[Any] = ()) -> OutputPaths:
    """Render and write the four files of a run directory atomically; returns their paths."""
    check_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = OutputPaths(out / "index.html", out / "results.json", out / "layers.csv", out / "summary.md")
    temps: list[Path] = []
    try:
        html = render_html(results, lang=lang, fixlog_entries=fixlog_entries)
        summary = render_summary(results, lang=lang, fixlog_entries=fixlog_entries)
        frame = layers_frame(results)
        _write_temp(out, "index.html", lambda p: p.write_text(html, encoding="utf-8"), temps)
        _write_temp(out, "results.json", lambda p: p.write_text(results_json(results), encoding="utf-8"), temps)
        _write_temp(out, "layers.csv", lambda p: frame.to_csv(p, index=False), temps)
        _write_temp(out, "summary.md", lambda p: p.write_text(summary, encoding="utf-8"), temps)
        for tmp, final in zip(temps, (paths.index_html, paths.results_json, paths.layers_csv, paths.summary_md)):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)  # no-op for the renamed ones
    return paths
