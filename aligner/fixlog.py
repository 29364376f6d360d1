"""The dated fix log users keep while porting (日期/问题/分析/修复/验证/状态), as data.

Entries live as JSON lines in ``DIR/entries.jsonl`` (default ``reports/fixlog/``) and render to
Markdown in exactly the porting-log template::

    日期: YYYY-MM-DD HH:MM
    问题: ...
    分析: ...
    修复: ...
    验证: ...
    状态: ✅完成 | ❌待修复 | ⚠️部分完成

(English field names with ``lang="en"``). :func:`sync_with_results` opens an entry per new error
finding and verifies open entries against a later run. Manual entries (no finding key) are never
touched by sync.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum, unique
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from aligner.errors import AlignerError
from aligner.report.i18n import localized, translator, type_name
from aligner.report.results import atomic_write_text, check_results, finding_key, finding_metric, fmt_num

# 1: first version (one JSON object per line, every line carries "format").
FIXLOG_FORMAT = 1
DEFAULT_DIR = Path("reports") / "fixlog"
ENTRIES_FILE = "entries.jsonl"
# "Improved" means the finding's metric dropped by at least this fraction since the entry was opened.
IMPROVEMENT = 0.10
FIELDS = ("date", "problem", "analysis", "fix", "verification", "status")

__all__ = ["FIXLOG_FORMAT", "DEFAULT_DIR", "Status", "Entry", "SyncReport", "FixlogError", "entries_path",
           "load", "save", "add", "edit", "get", "sync_with_results", "render_markdown"]


class FixlogError(AlignerError):
    """The fix-log store is unreadable, has another format, or an entry id does not exist."""
    slug = "fixlog"


@unique
class Status(StrEnum):
    DONE = "done"
    OPEN = "open"
    PARTIAL = "partial"

    def label(self, lang: str) -> str:
        """✅完成 / ❌待修复 / ⚠️部分完成 (or the English labels)."""
        return translator(lang)(f"fx_{self.value}")


@dataclass(frozen=True)
class Entry:
    """One fix-log record; ``*_zh`` fields hold the Chinese text of auto-generated entries."""
    id: str
    date: str                      # "YYYY-MM-DD HH:MM", local time of creation
    problem: str
    analysis: str
    fix: str
    verification: str
    status: Status
    problem_zh: str = ""
    analysis_zh: str = ""
    fix_zh: str = ""
    verification_zh: str = ""
    key: str | None = None         # finding_key() of the finding it tracks; None for manual entries
    pair: str | None = None        # pair the finding came from (sync only touches the same pair)
    opened_run: str | None = None
    last_run: str | None = None
    metric: str | None = None      # metric tracked for "improved" (e.g. "rel")
    open_value: float | None = None
    value: float | None = None     # metric at the last run that saw the finding
    tol: float | None = None
    history: tuple[str, ...] = field(default_factory=tuple)  # "run-id: status" lines

    def fields(self, lang: str) -> list[tuple[str, str]]:
        """(label, value) pairs in template order, in ``lang``."""
        t = translator(lang)
        d = dataclasses.asdict(self)
        values = [self.date] + [localized(d, f, lang) for f in ("problem", "analysis", "fix", "verification")]
        values.append(self.status.label(lang))
        return [(t(f"fx_{name}"), value) for name, value in zip(FIELDS, values)]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["history"] = list(self.history)
        return {"format": FIXLOG_FORMAT, **d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Entry:
        if d.get("format") != FIXLOG_FORMAT:
            raise FixlogError(f"fix-log entry has format {d.get('format')!r}; this aligner reads {FIXLOG_FORMAT}")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["status"] = Status(kw["status"])
        kw["history"] = tuple(kw.get("history") or ())
        return cls(**kw)


@dataclass(frozen=True)
class SyncReport:
    opened: tuple[Entry, ...]
    closed: tuple[Entry, ...]
    partial: tuple[Entry, ...]
    still_open: tuple[Entry, ...]

    @property
    def touched(self) -> tuple[Entry, ...]:
        """Every entry this run concerned, in id order (for the report's fix-log section)."""
        return tuple(sorted((*self.opened, *self.closed, *self.partial, *self.still_open), key=lambda e: e.id))


def entries_path(path: str | Path | None) -> Path:
    """``DIR/entries.jsonl`` for a directory (default reports/fixlog/), or the .jsonl file itself."""
    p = Path(path) if path is not None else DEFAULT_DIR
    return p if p.suffix == ".jsonl" else p / ENTRIES_FILE


def load(path: str | Path | None = None) -> list[Entry]:
    """All entries (empty when the store does not exist yet)."""
    f = entries_path(path)
    if not f.exists():
        return []
    out = []
    for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(Entry.from_json(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise FixlogError(f"{f}:{n}: unreadable fix-log entry ({exc})") from exc
    return out


def save(entries: Iterable[Entry], path: str | Path | None = None) -> Path:
    """Write every entry atomically (temp file in the same directory, then rename)."""
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries)
    return atomic_write_text(entries_path(path), text)


def _now(now: datetime | None) -> str:
    return (now or datetime.now()).strftime("%Y-%m-%d %H:%M")


def _next_id(entries: Sequence[Entry]) -> str:
    nums = [int(e.id[2:]) for e in entries if e.id.startswith("FX") and e.id[2:].isdigit()]
    return f"FX{max(nums, default=0) + 1:04d}"


def add(path: str | Path | None, *, problem: str, analysis: str = "", fix: str = "", verification: str = "",
        status: Status = Status.OPEN, date: str | None = None, now: datetime | None = None) -> Entry:
    """Append a manual entry and return it."""
    entries = load(path)
    entry = Entry(_next_id(entries), date or _now(now), problem, analysis, fix, verification, Status(status))
    save([*entries, entry], path)
    return entry


def get(path: str | Path | None, entry_id: str) -> Entry:
    for e in load(path):
        if e.id == entry_id:
            return e
    raise FixlogError(f"no fix-log entry {entry_id!r} in {entries_path(path)}")


def edit(path: str | Path | None, entry_id: str, **changes: Any) -> Entry:
    """Change fields of one entry (``status`` may be a Status or its value). A changed text field
    replaces both languages, because a person wrote it."""
    entries = load(path)
    for i, e in enumerate(entries):
        if e.id == entry_id:
            upd = {k: v for k, v in changes.items() if v is not None}
            bad = set(upd) - set(FIELDS)
            if bad:
                raise FixlogError(f"cannot edit {sorted(bad)}; editable fields: {', '.join(FIELDS)}")
            if "status" in upd:
                upd["status"] = Status(upd["status"])
            for f in ("problem", "analysis", "fix", "verification"):
                if f in upd:
                    upd[f"{f}_zh"] = ""
            entries[i] = dataclasses.replace(e, **upd)
            save(entries, path)
            return entries[i]
    raise FixlogError(f"no fix-log entry {entry_id!r} in {entries_path(path)}")


# ---- sync with a run ------------------------------------------------------------------------------

def _evidence_text(finding: Mapping[str, Any], lang: str) -> str:
    ev = finding.get("evidence") or {}
    parts = [f"{k}={fmt_num(v) if not isinstance(v, (list, dict)) else json.dumps(v, ensure_ascii=False)}"
             for k, v in (ev.items() if isinstance(ev, Mapping) else [])]
    cause = localized(finding, "likely_cause", lang)
    head = f"[{type_name(str(finding.get('type')), lang)} @ {finding.get('location')}"
    head += f", {'状态' if lang == 'zh' else 'state'} {finding['state']}]" if finding.get("state") else "]"
    return " ".join(p for p in (head, cause, ("证据: " if lang == "zh" else "evidence: ") + "; ".join(parts)) if p)


def _open_entry(finding: Mapping[str, Any], run: Mapping[str, Any], entry_id: str, date: str) -> Entry:
    metric = finding_metric(finding)
    en, zh = translator("en"), translator("zh")
    return Entry(
        entry_id, date, localized(finding, "message", "en"), _evidence_text(finding, "en"), en("fx_fix_pending"),
        en("fx_verify_pending"), Status.OPEN, localized(finding, "message", "zh"), _evidence_text(finding, "zh"),
        zh("fx_fix_pending"), zh("fx_verify_pending"), finding_key(finding), str(run.get("pair")),
        str(run.get("id")), str(run.get("id")), metric[0] if metric else None, metric[1] if metric else None,
        metric[1] if metric else None, metric[2] if metric else None, (f"{run.get('id')}: open",))


# Layer kind that shows a finding type passing again (None: any kind at that location).
_KIND_OF = {"forward_divergence": "forward", "backward_divergence": "backward", "nan_inf": None,
            "unreachable_gradient": "param_grad", "gradient_pattern": "param_grad", "extra_gradient": "param_grad",
            "frozen_parameter": "param_grad", "vanishing_gradient": "param_grad"}


def _passing_detail(results: Mapping[str, Any], entry: Entry) -> tuple[str, str] | None:
    """(metric, "value <= tol ...") showing that the entry's location now passes, when the run has it."""
    ftype, state, location = (entry.key or "||").split("|", 2)
    kind = _KIND_OF.get(ftype)
    rows = [r for r in results.get("layers") or []
            if (r.get("torch_name") == location or str(r.get("torch_name", "")).startswith(location + "."))
            and (not state or r.get("state") == state) and (kind is None or r.get("kind") == kind)]
    if rows and all(r.get("ok") for r in rows):
        worst = max(rows, key=lambda r: (r.get("rel") or 0.0) / (r.get("tol") or 1.0))
        detail = f"{fmt_num(worst.get('rel'))} <= tol {fmt_num(worst.get('tol'))}"
        if len(rows) > 1:
            detail += f", {len(rows)}/{len(rows)} {worst.get('kind')} rows ok"
        return "rel", detail
    if location == "loss" and state in (results.get("loss") or {}):
        return "loss rel", fmt_num(results["loss"][state].get("rel"))
    if location == "anchors" and results.get("anchors"):
        a = results["anchors"]
        return "anchors", f"torch {a.get('torch')} = jittor {a.get('jittor')} = expected {a.get('expected')}"
    gp = ((results.get("params") or {}).get("grad_pattern") or {}).get(state)
    if ftype in ("gradient_pattern", "unreachable_gradient", "extra_gradient", "frozen_parameter") and gp:
        return "grad pattern", f"same={gp.get('same')}, jittor unreachable={gp.get('jittor', {}).get('unreachable')}"
    return None


def _close(entry: Entry, results: Mapping[str, Any]) -> Entry:
    run_id = str(results["run"].get("id"))
    passing = _passing_detail(results, entry)
    texts = {}
    for lang in ("en", "zh"):
        t = translator(lang)
        texts[lang] = (t("fx_verified_pass", run=run_id, metric=passing[0], detail=passing[1]) if passing else
                       t("fx_verified_gone", run=run_id, type=type_name(entry.key.split("|")[0], lang),
                         location=entry.key.split("|", 2)[2]))
    return dataclasses.replace(entry, status=Status.DONE, verification=texts["en"], verification_zh=texts["zh"],
                               last_run=run_id, history=(*entry.history, f"{run_id}: done"))


def _recheck(entry: Entry, finding: Mapping[str, Any], run_id: str) -> Entry:
    metric = finding_metric(finding)
    value = metric[1] if metric else None
    base = entry.open_value
    improved = value is not None and base is not None and value <= base * (1 - IMPROVEMENT)
    status = Status.PARTIAL if improved else Status.OPEN
    upd: dict[str, Any] = {"status": status, "last_run": run_id, "value": value,
                           "history": (*entry.history, f"{run_id}: {status.value}")}
    if improved:
        tol = metric[2] if metric else None
        for lang, f in (("en", "verification"), ("zh", "verification_zh")):
            upd[f] = translator(lang)("fx_improved", run=run_id, metric=metric[0], before=fmt_num(base),
                                      after=fmt_num(value), tol=fmt_num(tol))
    return dataclasses.replace(entry, **upd)


def sync_with_results(results: Mapping[str, Any], path: str | Path | None = None, *,
                      now: datetime | None = None) -> SyncReport:
    """Open entries for new error findings; mark tracked entries done / partial / open; save."""
    check_results(results)
    run = results["run"]
    run_id, pair = str(run.get("id")), str(run.get("pair"))
    entries = load(path)
    errors = {finding_key(f): f for f in results.get("findings") or [] if f.get("severity") == "error"}
    tracked = {e.key: i for i, e in enumerate(entries)
               if e.key and e.pair == pair and e.status in (Status.OPEN, Status.PARTIAL)}
    opened, closed, partial, still = [], [], [], []
    for key, i in tracked.items():
        if key in errors:
            entries[i] = _recheck(entries[i], errors[key], run_id)
            (partial if entries[i].status is Status.PARTIAL else still).append(entries[i])
        else:
            entries[i] = _close(entries[i], results)
            closed.append(entries[i])
    date = _now(now)
    for key, f in errors.items():
        if key not in tracked:
            entry = _open_entry(f, run, _next_id(entries), date)
            entries.append(entry)
            opened.append(entry)
    save(entries, path)
    return SyncReport(tuple(opened), tuple(closed), tuple(partial), tuple(still))


# ---- rendering ------------------------------------------------------------------------------------

def _fence(text: str) -> str:
    run, longest = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def render_entry(entry: Entry, lang: str = "zh") -> str:
    """One entry as the six template lines (continuation lines of multi-line values indented)."""
    return "\n".join(f"{label}: {value}".replace("\n", "\n    ") for label, value in entry.fields(lang))


def render_markdown(entries: Sequence[Entry], lang: str = "zh", title: str | None = None) -> str:
    """The whole log as Markdown: a heading per entry, its six lines in a fenced block."""
    t = translator(lang)
    out = [f"# {title or t('fx_title')}", ""]
    for e in entries:
        body = render_entry(e, lang)
        fence = _fence(body)
        out += [f"### {e.id}", "", fence, body, fence, ""]
    return "\n".join(out)
