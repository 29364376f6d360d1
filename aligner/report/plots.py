"""Inline-SVG plot geometry for the report: numbers in, coordinates out.

No markup is built here (style.md: no HTML in Python strings); the templates in
``templates/partials/_chart.html.j2`` and ``_coverage.html.j2`` draw these dataclasses, and jinja's
autoescape handles every label that comes from user data (module names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["Tick", "Point", "Series", "Chart", "Bar", "CoverageRow", "CoverageChart",
           "error_depth_chart", "steps_loss_chart", "steps_drift_chart", "coverage_chart"]

WIDTH, HEIGHT = 760, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 14, 40
LOG_FLOOR = -12.0  # values <= 0 (bit-exact) are drawn at this decade


@dataclass(frozen=True)
class Tick:
    pos: float     # pixel coordinate along the axis
    label: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    fail: bool
    title: str     # tooltip: module name and value (escaped by the template)


@dataclass(frozen=True)
class Series:
    label: str
    css: str                   # css class: s0, s1, ... (colour per series)
    points: tuple[Point, ...]  # markers (empty for pure lines)
    line: str                  # SVG polyline "x,y x,y ..." ("" for markers only)


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    xlabel: str
    ylabel: str
    width: int
    height: int
    x0: float
    x1: float
    y0: float                  # top of the plot area
    y1: float                  # bottom of the plot area
    xticks: tuple[Tick, ...]
    yticks: tuple[Tick, ...]
    series: tuple[Series, ...]
    tol_line: str              # "" when there is no tolerance
    tol_label: str
    empty: bool


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    css: str                   # nonzero | zero | unreachable
    title: str


@dataclass(frozen=True)
class CoverageRow:
    module: str
    y: float
    mismatch: bool
    bars_ref: tuple[Bar, ...]
    bars_port: tuple[Bar, ...]
    label_ref: str             # "nz/z/u" counts
    label_port: str


@dataclass(frozen=True)
class CoverageChart:
    id: str
    title: str
    width: int
    height: int
    label_w: int
    bar_w: int
    row_h: int
    rows: tuple[CoverageRow, ...]


def _nice_step(span: float, target: int = 6) -> float:
    raw = max(span, 1e-12) / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _log(v: float | None) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return math.log10(v) if v > 0 else LOG_FLOOR


def _xscale(lo: float, hi: float) -> tuple[Any, tuple[Tick, ...]]:
    if hi <= lo:
        hi = lo + 1
    x0, x1 = MARGIN_L, WIDTH - MARGIN_R
    fx = lambda v: x0 + (v - lo) / (hi - lo) * (x1 - x0)  # noqa: E731
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + 1e-9:
        ticks.append(Tick(round(fx(v), 1), f"{v:g}"))
        v += step
    return fx, tuple(ticks)


def _yscale_log(lo: float, hi: float) -> tuple[Any, tuple[Tick, ...]]:
    lo, hi = math.floor(lo), math.ceil(hi)
    if hi <= lo:
        hi = lo + 1
    y0, y1 = MARGIN_T, HEIGHT - MARGIN_B
    fy = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    every = max(1, math.ceil((hi - lo) / 8))
    ticks = tuple(Tick(round(fy(d), 1), f"1e{d}") for d in range(int(lo), int(hi) + 1, every))
    return fy, ticks


def _yscale_lin(lo: float, hi: float) -> tuple[Any, tuple[Tick, ...]]:
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    y0, y1 = MARGIN_T, HEIGHT - MARGIN_B
    fy = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    step = _nice_step(hi - lo, 5)
    ticks, v = [], math.ceil(lo / step) * step
    while v <= hi:
        ticks.append(Tick(round(fy(v), 1), f"{v:.6g}"))
        v += step
    return fy, tuple(ticks)


def _chart(cid: str, title: str, xlabel: str, ylabel: str, xticks: tuple[Tick, ...], yticks: tuple[Tick, ...],
           series: Iterable[Series], tol_line: str = "", tol_label: str = "", empty: bool = False) -> Chart:
    return Chart(cid, title, xlabel, ylabel, WIDTH, HEIGHT, MARGIN_L, WIDTH - MARGIN_R, MARGIN_T,
                 HEIGHT - MARGIN_B, xticks, yticks, tuple(series), tol_line, tol_label, empty)


def error_depth_chart(cid: str, layers: Sequence[Mapping[str, Any]], kind: str, *, title: str,
                      xlabel: str, ylabel: str, tol_label: str) -> Chart:
    """Relative error (log) per execution index for rows of ``kind``, one series per state."""
    rows = [r for r in layers if r.get("kind") == kind and _log(r.get("rel")) is not None
            and isinstance(r.get("order"), int)]
    if not rows:
        return _chart(cid, title, xlabel, ylabel, (), (), (), empty=True)
    logs = [_log(r["rel"]) for r in rows] + [_log(r.get("tol")) for r in rows if r.get("tol")]
    logs = [v for v in logs if v is not None]
    fx, xticks = _xscale(min(r["order"] for r in rows), max(r["order"] for r in rows))
    fy, yticks = _yscale_log(max(min(logs), LOG_FLOOR), max(logs) + 0.3)
    states = list(dict.fromkeys(str(r.get("state")) for r in rows))
    series = []
    for i, state in enumerate(states):
        pts = tuple(
            Point(round(fx(r["order"]), 1), round(fy(_log(r["rel"])), 1), not r.get("ok", True),
                  f"{r.get('torch_name')}{'/' + str(r['sub']) if r.get('sub') else ''} [{state}] "
                  f"rel={r['rel']:.3g} tol={r.get('tol') or 0:.1g}")
            for r in sorted((r for r in rows if str(r.get("state")) == state), key=lambda r: r["order"]))
        series.append(Series(state, f"s{i % 4}", pts, ""))
    # The tolerance may vary per row (noise-floor calibration): draw the largest bound per index.
    tol_by_x: dict[int, float] = {}
    for r in rows:
        t = r.get("tol")
        if isinstance(t, (int, float)) and t > 0:
            tol_by_x[r["order"]] = max(tol_by_x.get(r["order"], 0.0), float(t))
    tol_line = " ".join(f"{fx(x):.1f},{fy(math.log10(t)):.1f}" for x, t in sorted(tol_by_x.items()))
    return _chart(cid, title, xlabel, ylabel, xticks, yticks, series, tol_line, tol_label)


def _line_series(label: str, css: str, xs: Sequence[float], ys: Sequence[Any], fx: Any, fy: Any,
                 transform: Any = None) -> Series:
    """Polyline + markers; ``transform`` maps a value to plot space (e.g. log10), tooltips keep the value."""
    keep = [(x, float(y)) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and not math.isnan(y)]
    pts = [(fx(x), fy(transform(y) if transform else y), y) for x, y in keep]
    points = tuple(Point(round(px, 1), round(py, 1), False, f"{label}: {y:.6g}") for px, py, y in pts)
    return Series(label, css, points, " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts))


def steps_loss_chart(cid: str, steps: Sequence[Mapping[str, Any]], *, title: str, xlabel: str,
                     labels: Mapping[str, str]) -> Chart:
    """Loss per optimizer step, torch vs jittor (linear scale)."""
    if not steps:
        return _chart(cid, title, xlabel, "", (), (), (), empty=True)
    xs = [float(s["step"]) for s in steps]
    keys = ("loss_torch", "loss_jittor")
    vals = [float(s[k]) for s in steps for k in keys if isinstance(s.get(k), (int, float))]
    if not vals:
        return _chart(cid, title, xlabel, "", (), (), (), empty=True)
    fx, xticks = _xscale(min(xs), max(xs))
    fy, yticks = _yscale_lin(min(vals), max(vals))
    series = [_line_series(labels[k], f"s{i}", xs, [s.get(k) for s in steps], fx, fy) for i, k in enumerate(keys)]
    return _chart(cid, title, xlabel, "loss", xticks, yticks, series)


def steps_drift_chart(cid: str, steps: Sequence[Mapping[str, Any]], *, title: str, xlabel: str,
                      labels: Mapping[str, str]) -> Chart:
    """Weight and gradient drift per optimizer step (log scale)."""
    keys = ("weight_drift", "grad_drift")
    if not steps:
        return _chart(cid, title, xlabel, "", (), (), (), empty=True)
    xs = [float(s["step"]) for s in steps]
    logs = [_log(s.get(k)) for s in steps for k in keys]
    logs = [v for v in logs if v is not None]
    if not logs:
        return _chart(cid, title, xlabel, "", (), (), (), empty=True)
    fx, xticks = _xscale(min(xs), max(xs))
    fy, yticks = _yscale_log(min(logs), max(logs) + 0.3)
    series = [_line_series(labels[k], f"s{i + 2}", xs, [s.get(k) for s in steps], fx, fy, transform=_log)
              for i, k in enumerate(keys)]
    return _chart(cid, title, xlabel, "drift", xticks, yticks, series)


def _bars(counts: Sequence[int], x0: float, width: float, names: Sequence[str]) -> tuple[Bar, ...]:
    total = sum(counts)
    if total <= 0:
        return ()
    bars, x = [], x0
    for c, css, name in zip(counts, ("nonzero", "zero", "unreachable"), names):
        w = width * c / total
        if c:
            bars.append(Bar(round(x, 1), round(w, 1), css, f"{name}: {c}"))
        x += w
    return tuple(bars)


def coverage_chart(cid: str, pattern: Mapping[str, Any], *, title: str, names: Sequence[str]) -> CoverageChart:
    """Per-module stacked bars (non-zero / zero / unreachable) for the reference and the port."""
    per = pattern.get("per_module") or {}
    label_w, bar_w, row_h = 260, 460, 30
    rows = []
    for i, (module, sides) in enumerate(per.items()):
        ref = [int(v) for v in (sides.get("torch") or [0, 0, 0])][:3]
        port = [int(v) for v in (sides.get("jittor") or [0, 0, 0])][:3]
        y = 8 + i * row_h
        rows.append(CoverageRow(str(module), y, ref != port,
                                _bars(ref, label_w, bar_w, names), _bars(port, label_w, bar_w, names),
                                "/".join(map(str, ref)), "/".join(map(str, port))))
    return CoverageChart(cid, title, label_w + bar_w + 90, 16 + len(rows) * row_h, label_w, bar_w, row_h,
                         tuple(rows))
