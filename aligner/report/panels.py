"""Side panels of the report as small tables: parameters, gradient patterns, anchors, loss, run context.

View-model builders only (results dict in, :class:`Table` out); the template draws them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from aligner.results_io import fmt_num

__all__ = ["Cell", "Table", "ParamsTable", "QuickAnswer", "params_table", "grad_tables", "anchor_tables", "loss_tables",
           "context_items", "quick_answers"]

# The input size whose anchor count (2,100 for GOLD-YOLO's strides) people expect by habit.
COMMON_SIZE = 320


@dataclass(frozen=True)
class Cell:
    text: str
    bad: bool = False


@dataclass(frozen=True)
class QuickAnswer:
    id: str
    question: str
    lines: tuple[str, ...]
    ok: bool                   # the answer is reassuring (no port bug behind it)


@dataclass(frozen=True)
class Table:
    head: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str = ""


def _st(state: Any, t: Callable[..., str]) -> str:
    """A model state's label ("init" -> 初始化 in zh; "<state>/step<k>" keeps its step)."""
    base, sep, rest = str(state).partition("/")
    label = t(f"st_{base}")
    if rest.startswith("step") and rest[4:].isdigit():
        rest = t("step_n", n=rest[4:])
    return (label if label != f"st_{base}" else base) + sep + rest


@dataclass(frozen=True)
class ParamsTable(Table):
    """The parameter counts, with the port's parameter story (``params.story``) in English and Chinese: the
    template shows the sentence of the report's language above the section's tables."""
    story: tuple[str, str] = ("", "")

    def story_in(self, lang: str) -> str:
        return self.story[1] if lang == "zh" else self.story[0]


def params_table(results: Mapping[str, Any], t: Callable[..., str]) -> ParamsTable:
    p = results.get("params") or {}
    ts, js = p.get("torch") or {}, p.get("jittor") or {}
    rows = []
    for key, label in (("trainable", t("trainable")), ("trainable_tensors", t("param_trainable_tensors")),
                       ("buffers", t("buffers")), ("frozen", t("param_frozen"))):
        a, b = ts.get(key), js.get(key)
        rows.append((Cell(label), Cell(fmt_num(a)), Cell(fmt_num(b), a != b)))
    story = p.get("story") or {}  # absent in results written before the story existed
    return ParamsTable(("", t("torch"), t("jittor")), tuple(rows),
                       story=(str(story.get("en") or ""), str(story.get("zh") or "")))


def grad_tables(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[Table, ...]:
    out = []
    for state, gp in ((results.get("params") or {}).get("grad_pattern") or {}).items():
        ts, js = gp.get("torch") or {}, gp.get("jittor") or {}
        rows = tuple((Cell(t(k)), Cell(fmt_num(ts.get(k))), Cell(fmt_num(js.get(k)), ts.get(k) != js.get(k)))
                     for k in ("nonzero", "zero", "unreachable", "frozen"))
        same = t("same") if gp.get("same") else t("different")
        out.append(Table(("", t("torch"), t("jittor")), rows, f"{t('grad_pattern')} · {_st(state, t)} · {same}"))
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


def _judged(results: Mapping[str, Any], types: Sequence[str], state: str, location: str) -> bool:
    """Whether the analysis reported an error/warning of ``types`` at ``location`` in ``state``."""
    return any(f.get("type") in types and f.get("severity") in ("error", "warning") and f.get("state") in (None, state)
               and str(f.get("location") or "") == location for f in results.get("findings") or [])


def loss_tables(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[Table, ...]:
    """Loss items and assigner sums per state; red only where the analysis's tolerance was exceeded."""
    out = []
    assigner = results.get("assigner") or {}
    loss_rel = ((results.get("run") or {}).get("tolerances") or {}).get("loss_rel")
    # the assigner's sum bound in the analysis: max(loss tolerance, 1e-6)
    sum_tol = max(float(loss_rel), 1e-6) if isinstance(loss_rel, (int, float)) else 1e-4
    for state, lo in (results.get("loss") or {}).items():
        ts, js = lo.get("torch") or {}, lo.get("jittor") or {}
        names = lo.get("item_names") or [str(i) for i in range(len(ts.get("items") or []))]
        rows = []
        for i, n in enumerate(names):
            a = (ts.get("items") or [None] * len(names))[i]
            b = (js.get("items") or [None] * len(names))[i]
            both = isinstance(a, (int, float)) and isinstance(b, (int, float))
            rel = abs(a - b) / max(abs(a), 1e-30) if both else None
            bad = _judged(results, ("loss_divergence",), state, f"loss.{n}")
            rows.append((Cell(str(n)), Cell(fmt_num(a, 6)), Cell(fmt_num(b, 6), bad), Cell(fmt_num(rel), bad)))
        bad_total = _judged(results, ("loss_divergence",), state, "loss")
        rows.append((Cell(t("total")), Cell(fmt_num(ts.get("total"), 6)), Cell(fmt_num(js.get("total"), 6), bad_total),
                     Cell(fmt_num(lo.get("rel")), bad_total)))
        asg = assigner.get(state) or {}
        for key in ("fg_count", "target_scores_sum"):
            a, b = (asg.get("torch") or {}).get(key), (asg.get("jittor") or {}).get(key)
            if a is None and b is None:
                continue
            both = isinstance(a, (int, float)) and isinstance(b, (int, float))
            rel = abs(a - b) / max(abs(a), 1e-30) if both else None
            bad = (a != b) if key == "fg_count" else (rel is None or rel > sum_tol)
            rows.append((Cell(t(key)), Cell(fmt_num(a, 6)), Cell(fmt_num(b, 6), bad),
                         Cell(fmt_num(rel) if key != "fg_count" else "", bad and key != "fg_count")))
        out.append(Table((t("loss_item"), t("torch"), t("jittor"), t("rel")), tuple(rows), _st(state, t)))
    return tuple(out)


def context_items(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[tuple[str, str, bool], ...]:
    """(label, value, value is code) rows of the run context; settings keep their identifiers."""
    run = results.get("run") or {}

    def kv(d: Mapping[str, Any] | None) -> str:
        parts = []
        for k, v in (d or {}).items():
            if isinstance(v, Mapping):
                v = "{" + ", ".join(f"{a}: {fmt_num(b)}" for a, b in v.items()) + "}"
            elif isinstance(v, list):
                v = json.dumps(v)
            else:
                v = fmt_num(v)
            parts.append(f"{k}={v}")
        return ", ".join(parts)

    onednn = run.get("onednn")
    return (
        (t("run_id"), str(run.get("id", "")), True), (t("created"), str(run.get("created", "")), False),
        (t("pair"), str(run.get("pair", "")), True), (t("config"), kv(run.get("config")), True),
        (t("dtype"), str(run.get("dtype", "")), True), (t("seed"), str(run.get("seed", "")), False),
        (t("states"), ", ".join(_st(s, t) for s in run.get("states") or []), False),
        (t("versions"), kv(run.get("versions")), True),
        (t("onednn"), t("yes") if onednn else (t("no") if onednn is not None else "–"), False),
        (t("timings"), kv(run.get("timings")), True), (t("tolerances"), kv(run.get("tolerances")), True),
    )


def _anchor_answer(a: Mapping[str, Any], t: Callable[..., str]) -> QuickAnswer | None:
    size, strides = a.get("img_size"), [int(s) for s in a.get("strides") or [] if isinstance(s, (int, float))]
    if not isinstance(size, int) or not strides:
        return None
    sides = [math.ceil(size / s) for s in strides]
    total = sum(n * n for n in sides)
    lines = [t("q_anchors_answer", total=fmt_num(total), size=size, terms=" + ".join(f"{n}²" for n in sides),
               counts=" + ".join(fmt_num(n * n) for n in sides), strides="/".join(map(str, strides)),
               ceil=", ".join(f"ceil({size}/{s}) = {n}" for s, n in zip(strides, sides)))]
    wrong_sides = [math.ceil(COMMON_SIZE / s) for s in strides]
    wrong = sum(n * n for n in wrong_sides)
    if size != COMMON_SIZE:
        lines.append(t("q_anchors_wrong", wrong=fmt_num(wrong), wrong_size=COMMON_SIZE,
                       wrong_terms=" + ".join(f"{n}²" for n in wrong_sides)))
    else:
        lines.append(t("q_anchors_same", wrong_size=COMMON_SIZE))
    tv, jv = a.get("torch"), a.get("jittor")
    ok = tv == total and jv == total
    lines.append(t("q_anchors_sides", torch=fmt_num(tv), jittor=fmt_num(jv),
                   verdict=t("q_anchors_ok") if ok else t("q_anchors_bad")))
    return QuickAnswer("q-anchors", t("q_anchors"), tuple(lines), ok)


def _names(findings: Sequence[Mapping[str, Any]], ftype: str) -> list[str]:
    out: list[str] = []
    for f in findings:
        if f.get("type") != ftype:
            continue
        ev = f.get("evidence") or {}
        listed = ev.get("params") or ev.get("names") if isinstance(ev, Mapping) else None
        out.extend(map(str, listed) if isinstance(listed, list) else [str(f.get("location") or "")])
    return list(dict.fromkeys(n for n in out if n))


def _grads_answer(results: Mapping[str, Any], t: Callable[..., str]) -> QuickAnswer | None:
    p = results.get("params") or {}
    patterns = p.get("grad_pattern") or {}
    if not patterns:
        return None
    lines = []
    same_all = True
    for state, gp in patterns.items():
        ts, js = gp.get("torch") or {}, gp.get("jittor") or {}
        total = sum(int(ts.get(k) or 0) for k in ("nonzero", "zero", "unreachable", "frozen"))
        lines.append(t("q_grads_answer", state=_st(state, t), nz=fmt_num(ts.get("nonzero")), total=fmt_num(total),
                       zero=fmt_num(ts.get("zero")), unr=fmt_num(ts.get("unreachable")),
                       frozen=fmt_num(ts.get("frozen")),
                       pnz=fmt_num(js.get("nonzero")), pzero=fmt_num(js.get("zero")),
                       punr=fmt_num(js.get("unreachable")), pfrozen=fmt_num(js.get("frozen"))))
        same_all = same_all and bool(gp.get("same"))
    lines.append(t("q_grads_same") if same_all else t("q_grads_diff"))
    tp, jp = p.get("torch") or {}, p.get("jittor") or {}
    if tp or jp:
        lines.append(t("q_params", tt=fmt_num(tp.get("trainable_tensors")), te=fmt_num(tp.get("trainable")),
                       be=fmt_num(tp.get("buffers")), fe=fmt_num(tp.get("frozen")), ce=fmt_num(tp.get("constants", 0)),
                       jtt=fmt_num(jp.get("trainable_tensors")), jte=fmt_num(jp.get("trainable")),
                       jbe=fmt_num(jp.get("buffers")), jfe=fmt_num(jp.get("frozen"))))
        findings = results.get("findings") or []
        extra, missing = _names(findings, "extra_parameter"), _names(findings, "missing_parameter")
        if extra:
            lines.append(t("q_params_extra", items=", ".join(extra[:8]) + (" …" if len(extra) > 8 else "")))
        if missing:
            lines.append(t("q_params_missing", items=", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")))
        lines.append(t("q_params_frameworks"))
    return QuickAnswer("q-grads", t("q_grads"), tuple(lines), same_all)


def quick_answers(results: Mapping[str, Any], t: Callable[..., str]) -> tuple[QuickAnswer, ...]:
    """The two questions that stall a detector port: the anchor count and the sparse gradients."""
    a = results.get("anchors")
    answers = (_anchor_answer(a, t) if isinstance(a, Mapping) else None, _grads_answer(results, t))
    return tuple(x for x in answers if x is not None)
