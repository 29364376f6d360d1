"""Side panels of the report as small tables: parameters, gradient patterns, anchors, loss, run context.

View-model builders only (results dict in, :class:`Table` out); the template draws them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from aligner.report.results import fmt_num

__all__ = ["Cell", "Table", "params_table", "grad_tables", "anchor_tables", "loss_tables", "context_items"]

# A loss item counts as different above this relative difference (highlight only; findings judge).
LOSS_HIGHLIGHT_REL = 1e-4


@dataclass(frozen=True)
class Cell:
    text: str
    bad: bool = False


@dataclass(frozen=True)
class Table:
    head: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str = ""


def params_table(results: Mapping[str, Any], t: Callable[..., str]) -> Table:
    p = results.get("params") or {}
    ts, js = p.get("torch") or {}, p.get("jittor") or {}
    rows = []
    for key, label in (("trainable", t("trainable")), ("trainable_tensors", t("param_trainable_tensors")),
                       ("buffers", t("buffers")), ("frozen", t("param_frozen"))):
        a, b = ts.get(key), js.get(key)
        rows.append((Cell(label), Cell(fmt_num(a)), Cell(fmt_num(b), a != b)))
    return Table(("", t("torch"), t("jittor")), tuple(rows))


def grad_tables(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[Table, ...]:
    out = []
    for state, gp in ((results.get("params") or {}).get("grad_pattern") or {}).items():
        ts, js = gp.get("torch") or {}, gp.get("jittor") or {}
        rows = tuple((Cell(t(k)), Cell(fmt_num(ts.get(k))), Cell(fmt_num(js.get(k)), ts.get(k) != js.get(k)))
                     for k in ("nonzero", "zero", "unreachable", "frozen"))
        same = t("same") if gp.get("same") else t("different")
        out.append(Table(("", t("torch"), t("jittor")), rows, f"{t('grad_pattern')} · {state} · {same}"))
    return tuple(out)


def anchor_tables(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[Table | None, Table | None]:
    a = results.get("anchors")
    if not a:
        return None, None
    levels = tuple((Cell(fmt_num(lv.get("stride"))), Cell(f"{lv.get('h')} × {lv.get('w')}"),
                    Cell(fmt_num(lv.get("count")), lv.get("count") != lv.get("expected")),
                    Cell(fmt_num(lv.get("expected")))) for lv in a.get("levels") or [])
    lv_table = Table((t("stride"), t("hxw"), t("count"), t("expected")), levels,
                     f"{t('anchors_img')} {fmt_num(a.get('img_size'))}")
    exp = a.get("expected")
    totals = Table((t("expected"), t("torch"), t("jittor")),
                   ((Cell(fmt_num(exp)), Cell(fmt_num(a.get("torch")), a.get("torch") != exp),
                     Cell(fmt_num(a.get("jittor")), a.get("jittor") != exp)),), t("total"))
    return lv_table, totals


def loss_tables(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[Table, ...]:
    out = []
    assigner = results.get("assigner") or {}
    for state, lo in (results.get("loss") or {}).items():
        ts, js = lo.get("torch") or {}, lo.get("jittor") or {}
        names = lo.get("item_names") or [str(i) for i in range(len(ts.get("items") or []))]
        rows = []
        for i, n in enumerate(names):
            a = (ts.get("items") or [None] * len(names))[i]
            b = (js.get("items") or [None] * len(names))[i]
            both = isinstance(a, (int, float)) and isinstance(b, (int, float))
            rel = abs(a - b) / max(abs(a), 1e-30) if both else None
            rows.append((Cell(str(n)), Cell(fmt_num(a, 6)), Cell(fmt_num(b, 6)),
                         Cell(fmt_num(rel), bool(rel and rel > LOSS_HIGHLIGHT_REL))))
        rows.append((Cell(t("total")), Cell(fmt_num(ts.get("total"), 6)), Cell(fmt_num(js.get("total"), 6)),
                     Cell(fmt_num(lo.get("rel")), bool(lo.get("rel") and lo["rel"] > LOSS_HIGHLIGHT_REL))))
        asg = assigner.get(state) or {}
        for key in ("fg_count", "target_scores_sum"):
            a, b = (asg.get("torch") or {}).get(key), (asg.get("jittor") or {}).get(key)
            if a is not None or b is not None:
                rows.append((Cell(t(key)), Cell(fmt_num(a, 6)), Cell(fmt_num(b, 6), a != b), Cell("")))
        out.append(Table((t("loss_item"), t("torch"), t("jittor"), t("rel")), tuple(rows), str(state)))
    return tuple(out)


def context_items(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[tuple[str, str], ...]:
    run = results.get("run") or {}
    def kv(d: Mapping[str, Any] | None) -> str:
        return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else fmt_num(v)}"
                         for k, v in (d or {}).items())

    onednn = run.get("onednn")
    return (
        (t("run_id"), str(run.get("id", ""))), (t("created"), str(run.get("created", ""))),
        (t("pair"), str(run.get("pair", ""))), (t("config"), kv(run.get("config"))),
        (t("dtype"), str(run.get("dtype", ""))), (t("seed"), str(run.get("seed", ""))),
        (t("states"), ", ".join(map(str, run.get("states") or []))),
        (t("versions"), kv(run.get("versions"))),
        (t("onednn"), t("yes") if onednn else (t("no") if onednn is not None else "–")),
        (t("timings"), kv(run.get("timings"))), (t("tolerances"), kv(run.get("tolerances"))),
    )
