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
import fcntl
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum, unique
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from aligner.errors import AlignerError
from aligner.fsio import atomic_write, read_json_bytes
from aligner.report.i18n import localized, translator, type_name
from aligner.results_io import check_results, finding_key, finding_metric, fmt_num

# 1: first version (one JSON object per line, every line carries "format").
FIXLOG_FORMAT = 1
DEFAULT_DIR = Path("reports") / "fixlog"
ENTRIES_FILE = "entries.jsonl"
# "Improved" means the finding's metric dropped by at least this fraction since the entry was opened.
IMPROVEMENT = 0.10
FIELDS = ("date", "problem", "analysis", "fix", "verification", "status")
DATE_FORMAT = "%Y-%m-%d %H:%M"
DAY_FORMAT = "%Y-%m-%d"
_ID = re.compile(r"FX\d{4,9}")
_TEXT_FIELDS = ("problem", "analysis", "fix", "verification", "problem_zh", "analysis_zh", "fix_zh",
                "verification_zh")
_OPTIONAL_TEXT = ("key", "pair", "opened_run", "last_run", "metric")
_OPTIONAL_NUM = ("open_value", "value", "tol")

__all__ = ["FIXLOG_FORMAT", "DEFAULT_DIR", "Status", "Entry", "SyncReport", "FixlogError", "entries_path",
           "load", "save", "add", "edit", "get", "sync_with_results", "render_markdown", "check_date"]


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
    def from_json(cls, d: Any) -> Entry:
        """An entry from its JSON object, every field checked (types, id, date, status, non-empty problem)."""
        if not isinstance(d, dict):
            raise FixlogError("a fix-log line must be a JSON object")
        if d.get("format") != FIXLOG_FORMAT:
            raise FixlogError(f"fix-log entry has format {d.get('format')!r}; this aligner reads {FIXLOG_FORMAT}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"format"}
        if unknown:
            raise FixlogError(f"unknown field(s) {', '.join(sorted(unknown))[:80]}")
        missing = [k for k in ("id", *FIELDS) if k not in d]
        if missing:
            raise FixlogError(f"missing field(s) {', '.join(missing)}")
        if not isinstance(d["id"], str) or not _ID.fullmatch(d["id"]):
            raise FixlogError(f"entry id {str(d['id'])[:20]!r} is not FX followed by digits")
        for k in _TEXT_FIELDS:
            if not isinstance(d.get(k, ""), str):
                raise FixlogError(f"{d['id']}: {k} must be text")
        for k in _OPTIONAL_TEXT:
            if d.get(k) is not None and not isinstance(d[k], str):
                raise FixlogError(f"{d['id']}: {k} must be text or null")
        for k in _OPTIONAL_NUM:
            v = d.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or (isinstance(v, float) and not math.isfinite(v))):
                raise FixlogError(f"{d['id']}: {k} must be a finite number or null")
        history = d.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            raise FixlogError(f"{d['id']}: history must be a list of text lines")
        check_date(d["date"])
        check_problem(d["problem"])
        try:
            status = Status(d["status"])
        except (ValueError, TypeError):
            raise FixlogError(f"{d['id']}: status {str(d['status'])[:20]!r} is not one of "
                              f"{', '.join(s.value for s in Status)}") from None
        return cls(**{**{k: v for k, v in d.items() if k in known}, "status": status, "history": tuple(history)})


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


def check_date(date: Any) -> str:
    """``date`` if it is a real "YYYY-MM-DD HH:MM" (or a day, "YYYY-MM-DD"), else FixlogError."""
    for fmt, size in ((DATE_FORMAT, 16), (DAY_FORMAT, 10)):
        try:
            if isinstance(date, str) and len(date) == size and datetime.strptime(date, fmt):
                return date
        except ValueError:
            pass
    raise FixlogError(f"date {str(date)[:30]!r} is not a date like 2026-11-26 14:05 (YYYY-MM-DD HH:MM or YYYY-MM-DD)")


def check_problem(problem: Any) -> str:
    if not isinstance(problem, str) or not problem.strip():
        raise FixlogError("the problem (问题) of an entry cannot be empty")
    return problem


def _read(f: Path) -> list[Entry]:
    try:
        raw = f.read_bytes()
    except OSError as exc:
        raise FixlogError(f"cannot read {f}: {exc.strerror or exc}") from None
    if raw and not raw.endswith(b"\n"):
        raise FixlogError(f"{f}: the last line is incomplete (the file was cut off)")
    out, seen = [], set()
    for n, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            try:
                entry = Entry.from_json(read_json_bytes(line, f"{f}:{n}", FixlogError))
            except FixlogError as exc:
                raise FixlogError(f"{f}:{n}: unreadable fix-log entry ({exc})") from None
            if entry.id in seen:
                raise FixlogError(f"{f}:{n}: entry id {entry.id} appears twice")
            seen.add(entry.id)
            out.append(entry)
    return out


def load(path: str | Path | None = None, *, must_exist: bool = False) -> list[Entry]:
    """All entries; a store that does not exist is empty, or an error with ``must_exist`` (a mistyped --dir)."""
    f = entries_path(path)
    if not f.exists():
        if must_exist:
            where = f if f.parent.is_dir() else f.parent
            raise FixlogError(f"no fix log at {where} (start one with `aligner fixlog add --dir ...`)")
        return []
    return _read(f)


def save(entries: Iterable[Entry], path: str | Path | None = None) -> Path:
    """Write every entry atomically (temp file in the same directory, then rename)."""
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False, allow_nan=False) + "\n" for e in entries)
    return atomic_write(entries_path(path), text)


@contextmanager
def _locked(path: str | Path | None) -> Iterator[None]:
    """Exclusive lock around a read-modify-write of the store (concurrent adds keep every entry)."""
    f = entries_path(path)
    f.parent.mkdir(parents=True, exist_ok=True)
    with open(f.with_name(f".{f.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _now(now: datetime | None) -> str:
    return (now or datetime.now()).strftime(DATE_FORMAT)


def _next_id(entries: Sequence[Entry]) -> str:
    nums = [int(e.id[2:]) for e in entries if e.id.startswith("FX") and e.id[2:].isdigit()]
    return f"FX{max(nums, default=0) + 1:04d}"


def add(path: str | Path | None, *, problem: str, analysis: str = "", fix: str = "", verification: str = "",
        status: Status = Status.OPEN, date: str | None = None, now: datetime | None = None) -> Entry:
    """Append a manual entry and return it."""
    check_problem(problem)
    date = check_date(date) if date is not None else _now(now)
    with _locked(path):
        entries = load(path)
        entry = Entry(_next_id(entries), date, problem, analysis, fix, verification, Status(status))
        save([*entries, entry], path)
    return entry


def get(path: str | Path | None, entry_id: str) -> Entry:
    for e in load(path, must_exist=True):
        if e.id == entry_id:
            return e
    raise FixlogError(f"no fix-log entry {entry_id!r} in {entries_path(path)}")


def edit(path: str | Path | None, entry_id: str, **changes: Any) -> Entry:
    """Change fields of one entry (``status`` may be a Status or its value). A changed text field
    replaces both languages, because a person wrote it."""
    upd = {k: v for k, v in changes.items() if v is not None}
    bad = set(upd) - set(FIELDS)
    if bad:
        raise FixlogError(f"cannot edit {sorted(bad)}; editable fields: {', '.join(FIELDS)}")
    if "date" in upd:
        check_date(upd["date"])
    if "problem" in upd:
        check_problem(upd["problem"])
    if "status" in upd:
        try:
            upd["status"] = Status(upd["status"])
        except ValueError:
            raise FixlogError(f"status {upd['status']!r} is not one of {', '.join(s.value for s in Status)}") from None
    for f in ("problem", "analysis", "fix", "verification"):
        if f in upd:
            upd[f"{f}_zh"] = ""
    with _locked(path):
        entries = load(path, must_exist=True)
        for i, e in enumerate(entries):
            if e.id == entry_id:
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
    with _locked(path):
        return _sync(results, path, now)


def _sync(results: Mapping[str, Any], path: str | Path | None, now: datetime | None) -> SyncReport:
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
