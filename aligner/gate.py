"""The CI regression gate: results (+ baseline) + policy -> GateResult. Pure; the CLI prints and exits.

Fails on any error finding and on regressions against an accepted baseline beyond per-metric
budgets: a layer that passed and now fails, an error that grew by more than a factor, a new
unmatched module, a parameter-count change. A baseline is a trimmed results.json (:func:`make_baseline`).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from aligner.comparability import check_runs
from aligner.errors import UsageError
from aligner.fsio import atomic_write
from aligner.report.i18n import translator
from aligner.results_io import check_results, finding_key, fmt_num, judged_error, layer_key, write_json

__all__ = ["GatePolicy", "Change", "CheckOutcome", "GateResult", "evaluate", "make_baseline", "write_baseline",
           "write_junit", "format_table", "CHECKS"]

CHECKS = ("error_findings", "new_failing_layers", "error_growth", "new_unmatched", "param_counts")
_PARAM_KEYS = ("trainable", "trainable_tensors", "buffers", "frozen")
_BASELINE_LAYER_KEYS = ("state", "kind", "order", "torch_name", "jittor_name", "sub", "call", "rel", "tol", "ok",
                        "metric", "rel_fp64", "rel_l2", "max_abs")


@dataclass(frozen=True)
class GatePolicy:
    """Budgets. ``growth_factor`` maps a layer kind to the allowed error growth ("" = default)."""
    fail_on_error_findings: bool = True
    growth_factor: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({"": 10.0}))
    # Growth only counts once the new error exceeds this fraction of the row's tolerance: 1e-9 -> 1e-8
    # is float noise, not a regression.
    growth_floor: float = 0.01
    fail_on_new_failing_layer: bool = True
    fail_on_new_unmatched: bool = True
    fail_on_param_change: bool = True

    def __post_init__(self) -> None:
        for kind, f in self.growth_factor.items():
            # NaN would make every comparison false and switch the check off; below 1 every run regresses
            if not isinstance(f, (int, float)) or not math.isfinite(f) or f < 1:
                raise UsageError(f"growth factor{' for ' + kind if kind else ''} must be a finite number >= 1, "
                                 f"got {f!r}")
        if not math.isfinite(self.growth_floor) or self.growth_floor < 0:
            raise UsageError(f"growth floor must be a finite number >= 0, got {self.growth_floor!r}")

    def factor(self, kind: str) -> float:
        return float(self.growth_factor.get(kind, self.growth_factor.get("", 10.0)))


@dataclass(frozen=True)
class Change:
    check: str          # one of CHECKS, or "fixed_layer" / "resolved_finding" for improvements
    subject: str
    before: str
    after: str
    regression: bool


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    failures: tuple[str, ...]
    enabled: bool = True


@dataclass(frozen=True)
class GateResult:
    passed: bool
    run_id: str
    baseline_id: str | None
    checks: tuple[CheckOutcome, ...]
    changes: tuple[Change, ...]

    @property
    def regressions(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.regression)


def _rel(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _compared_errors(before: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The errors the growth check compares: the judged number of both rows when both record it under the
    same metric, else the max-norm ``rel`` of both (baselines written before rows recorded their metric)."""
    jb, jn = judged_error(before), judged_error(now)
    if jb is not None and jn is not None and jb[0] == jn[0]:
        return jb[1], jn[1]
    return _rel(before.get("rel")), _rel(now.get("rel"))


def _layer_changes(rows: Sequence[Mapping[str, Any]], base_rows: Sequence[Mapping[str, Any]],
                   policy: GatePolicy) -> list[Change]:
    before = {layer_key(r): r for r in base_rows}
    out = []
    for r in rows:
        b = before.get(layer_key(r))
        if b is None:
            continue
        subject = f"{r.get('state')}/{r.get('kind')} {r.get('torch_name')}" + (f"/{r['sub']}" if r.get("sub") else "")
        old, new = _compared_errors(b, r)
        if b.get("ok") and not r.get("ok"):
            out.append(Change("new_failing_layers", subject, f"ok rel={fmt_num(old)}",
                              f"FAIL rel={fmt_num(new)} tol={fmt_num(r.get('tol'))}", True))
        elif not b.get("ok") and r.get("ok"):
            out.append(Change("fixed_layer", subject, f"FAIL rel={fmt_num(old)}", f"ok rel={fmt_num(new)}", False))
        if new is None or old is None:
            continue
        factor = policy.factor(str(r.get("kind")))
        tol = _rel(r.get("tol")) or 0.0
        grew = (math.isnan(new) and not math.isnan(old)) or (
            new > factor * old and new > policy.growth_floor * tol and not math.isnan(old))
        if grew:
            ratio = "NaN" if math.isnan(new) else (f"x{new / old:.3g}" if old > 0 else "from 0")
            out.append(Change("error_growth", subject, fmt_num(old), f"{fmt_num(new)} ({ratio} > x{factor:g})", True))
    return out


def _param_changes(params: Mapping[str, Any], base: Mapping[str, Any]) -> list[Change]:
    out = []
    for side in ("torch", "jittor"):
        now, was = params.get(side) or {}, base.get(side) or {}
        for k in _PARAM_KEYS:
            if k in was and now.get(k) != was.get(k):
                out.append(Change("param_counts", f"{side}.{k}", fmt_num(was.get(k)), fmt_num(now.get(k)), True))
        mods_now, mods_was = now.get("modules") or {}, was.get("modules") or {}
        for m in dict.fromkeys([*mods_was, *mods_now]):
            if mods_now.get(m) != mods_was.get(m):
                fmt = lambda d: (f"{fmt_num(d.get('trainable'))}/{fmt_num(d.get('buffers'))}"  # noqa: E731
                                 if isinstance(d, Mapping) else "–")
                out.append(Change("param_counts", f"{side}.modules.{m} (trainable/buffers)", fmt(mods_was.get(m)),
                                  fmt(mods_now.get(m)), True))
    return out


def evaluate(results: Mapping[str, Any], baseline: Mapping[str, Any] | None = None,
             policy: GatePolicy | None = None) -> GateResult:
    """Judge ``results`` against the absolute rule (no error finding) and, if given, the baseline."""
    policy = policy or GatePolicy()
    check_results(results)
    if baseline is not None:
        check_results(baseline, "baseline", baseline=True)
        check_runs(results, baseline)
    changes: list[Change] = []
    errors = [f for f in results.get("findings") or [] if f.get("severity") == "error"]
    for f in errors:
        changes.append(Change("error_findings", f"{f.get('type')} @ {f.get('location')}"
                              + (f" [{f['state']}]" if f.get("state") else ""), "", str(f.get("message", "")), True))
    if baseline is not None:
        now_keys = {finding_key(f) for f in errors}
        for f in baseline.get("findings") or []:
            if f.get("severity") == "error" and finding_key(f) not in now_keys:
                changes.append(Change("resolved_finding", f"{f.get('type')} @ {f.get('location')}", "error", "gone",
                                      False))
        changes += _layer_changes(results.get("layers") or [], baseline.get("layers") or [], policy)
        for side in ("torch", "jittor"):
            was = set((baseline.get("unmatched") or {}).get(side) or [])
            for name in (results.get("unmatched") or {}).get(side) or []:
                if name not in was:
                    changes.append(Change("new_unmatched", f"{side}: {name}", "matched", "unmatched", True))
        changes += _param_changes(results.get("params") or {}, baseline.get("params") or {})
    enabled = {"error_findings": policy.fail_on_error_findings,
               "new_failing_layers": policy.fail_on_new_failing_layer and baseline is not None,
               "error_growth": baseline is not None,
               "new_unmatched": policy.fail_on_new_unmatched and baseline is not None,
               "param_counts": policy.fail_on_param_change and baseline is not None}
    checks = []
    for name in CHECKS:
        fails = tuple(f"{c.subject}: {c.before} -> {c.after}" if c.before else f"{c.subject}: {c.after}"
                      for c in changes if c.check == name and c.regression)
        checks.append(CheckOutcome(name, not (enabled[name] and fails), fails, enabled[name]))
    run_id = str((results.get("run") or {}).get("id", ""))
    base_id = str((baseline.get("run") or {}).get("id", "")) if baseline is not None else None
    return GateResult(all(c.passed for c in checks), run_id, base_id, tuple(checks), tuple(changes))


def make_baseline(results: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a results dict the gate compares, as a smaller schema-1 document."""
    check_results(results)
    run = results.get("run") or {}
    return {
        "schema": results["schema"], "baseline": True,
        "run": {k: run.get(k) for k in ("id", "created", "pair", "config", "dtype", "seed", "states", "versions")},
        "verdict": results.get("verdict"), "first_divergence": results.get("first_divergence"),
        "counts": results.get("counts"),
        "findings": [{k: f.get(k) for k in ("id", "type", "severity", "state", "location", "message")}
                     for f in results.get("findings") or []],
        "layers": [{k: r.get(k) for k in _BASELINE_LAYER_KEYS} for r in results.get("layers") or []],
        "unmatched": results.get("unmatched") or {"torch": [], "jittor": []},
        "params": {side: (results.get("params") or {}).get(side) for side in ("torch", "jittor")},
        "anchors": results.get("anchors"),
    }


def write_baseline(results: Mapping[str, Any], path: str | Path) -> Path:
    """Accept ``results`` as the new baseline (atomic write)."""
    return write_json(make_baseline(results), path)


def write_junit(result: GateResult, path: str | Path) -> Path:
    """JUnit XML: one test case per gate check, with the offending items in the failure text."""
    failures = sum(1 for c in result.checks if not c.passed)
    suites = ET.Element("testsuites", name="aligner", tests=str(len(result.checks)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="aligner-gate", tests=str(len(result.checks)),
                          failures=str(failures), errors="0", skipped=str(sum(not c.enabled for c in result.checks)))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="run_id", value=result.run_id)
    ET.SubElement(props, "property", name="baseline_id", value=result.baseline_id or "")
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname="aligner.gate", name=c.name, time="0")
        if not c.enabled:
            ET.SubElement(case, "skipped", message="disabled by policy or no baseline")
        elif not c.passed:
            fail = ET.SubElement(case, "failure", type=c.name, message=f"{len(c.failures)} item(s)")
            fail.text = "\n".join(c.failures)
    ET.indent(suites)
    return atomic_write(Path(path), ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")


def format_table(result: GateResult, *, lang: str = "en", limit: int = 20) -> str:
    """A short plain-text table of what changed (regressions first), ending with the verdict line."""
    t = translator(lang)
    rows = sorted(result.changes, key=lambda c: (not c.regression, CHECKS.index(c.check) if c.check in CHECKS else 99))
    head = (t("gate_check"), "", t("gate_before"), t("gate_after"), t("gate_status"))
    body = [(c.check, c.subject, c.before, c.after, "REGRESSION" if c.regression else "improved") for c in rows[:limit]]
    lines = []
    if body:
        widths = [min(max(len(str(r[i])) for r in (head, *body)), 60) for i in range(5)]
        clip = lambda s, w: s if len(s) <= w else s[: w - 1] + "…"  # noqa: E731
        for r in (head, *body):
            lines.append("  ".join(clip(str(v), w).ljust(w) for v, w in zip(r, widths)).rstrip())
        if len(rows) > limit:
            lines.append(f"… +{len(rows) - limit}")
    for c in result.checks:
        state = "skip" if not c.enabled else ("ok" if c.passed else f"FAIL ({len(c.failures)})")
        lines.append(f"  {c.name:<20} {state}")
    lines.append(t("gate_pass") if result.passed else t("gate_fail"))
    return "\n".join(lines)
