"""Inline-SVG plot geometry for the report: numbers in, coordinates out.

No markup is built here (style.md: no HTML in Python strings); ``templates/partials/_charts.html.j2``
draws these dataclasses, and jinja's autoescape handles every label that comes from user data (module
names). Exact zeros get their own band under the log axis (never a made-up 1e-12), each state has its own
tolerance line, and the first divergence is marked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from aligner.results_io import judged_value
from aligner.tolerances import NOISE

__all__ = ["Tick", "Point", "Series", "Band", "Chart", "Bar", "CoverageRow", "CoverageChart",
           "error_depth_chart", "steps_loss_chart", "steps_drift_chart", "coverage_chart"]

WIDTH, HEIGHT = 760, 280
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 30, 40
ZERO_BAND = 16     # px under the log axis where exact zeros are drawn


@dataclass(frozen=True)
class Tick:
    pos: float     # pixel coordinate along the axis
    label: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    fail: bool
    title: str     # tooltip: module name and value (escaped by the template); "" when ``i`` names the row
    i: int = -1    # index of the layer row (the page's script shows its name on hover)


@dataclass(frozen=True)
class Band:
    """A labelled x range: a top-level module (backbone, neck, ...) along the execution axis."""
    x0: float
    x1: float
    label: str


@dataclass(frozen=True)
class Series:
    label: str
    css: str                   # css class: s0, s1, ... (colour per series)
    points: tuple[Point, ...]  # markers drawn one by one (failing points; every point of small charts)
    line: str                  # SVG polyline "x,y x,y ..." ("" for markers only)
    dots: str = ""             # SVG path of the in-tolerance points ("M x y h0" each, round caps): one element
    dot_rows: str = ""         # their layer-row indices, comma-separated, in path order (for the hover)


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
    tol_line: str              # "" when there is no tolerance (steps charts)
    tol_label: str
    empty: bool
    tol_lines: tuple[tuple[str, str, str], ...] = ()   # per state: (css, label, polyline points)
    zero_y: float = 0.0        # centre of the exact-zero band (0: none)
    zero_label: str = ""
    bands: tuple[Band, ...] = ()
    fd_x: float = 0.0          # x of the first divergence (0: none)
    fd_label: str = ""


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    css: str                   # nonzero | zero | unreachable | frozen
    title: str


@dataclass(frozen=True)
class CoverageRow:
    module: str
    y: float
    mismatch: bool
    bars_ref: tuple[Bar, ...]
    bars_port: tuple[Bar, ...]
    label_ref: str             # "nz/z/u/f" counts
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
    """log10 of a positive value; None for missing, NaN and non-positive values."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or v <= 0:
        return None
    return math.log10(v) if math.isfinite(v) else None


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


def _bands(rows: Sequence[Mapping[str, Any]], fx: Any, root_label: str) -> tuple[Band, ...]:
    """Consecutive runs of the same top-level module along the execution index."""
    spans: list[list[Any]] = []
    for r in sorted(rows, key=lambda r: r["order"]):
        top = str(r.get("torch_name", "")).split(".")[0] or root_label
        if spans and spans[-1][2] == top:
            spans[-1][1] = r["order"]
        else:
            spans.append([r["order"], r["order"], top])
    return tuple(Band(round(fx(a), 1), round(fx(b), 1), label) for a, b, label in spans if label)


def error_depth_chart(cid: str, layers: Sequence[Mapping[str, Any]], kind: str, *, title: str,
                      xlabel: str, ylabel: str, tol_label: str, zero_label: str = "0", fd_index: int = -1,
                      fd_label: str = "", state_label: Callable[[str], str] = str, root_label: str = "(model)"
                      ) -> Chart:
    """The judged error (log) per execution index for rows of ``kind``: the number each row's verdict used
    (:func:`aligner.results_io.judged_value`), against that row's bound; one series and bound line per
    state. Rows the noise makes uncheckable (metric ``noise``) are not plotted."""
    value = {i: v for i, r in enumerate(layers) if r.get("kind") == kind and isinstance(r.get("order"), int)
             and (v := _judged(r)) is not None}
    idx = list(value)
    if not idx:
        return _chart(cid, title, xlabel, ylabel, (), (), (), empty=True)
    rows = [layers[i] for i in idx]
    logs = [v for v in (_log(value[i]) for i in idx) if v is not None]
    logs += [v for v in (_log(r.get("tol")) for r in rows) if v is not None]
    lo_log = min(logs) if logs else -8.0
    hi_log = max(logs) + 0.3 if logs else -7.0
    fx, xticks = _xscale(min(r["order"] for r in rows), max(r["order"] for r in rows))
    fy, yticks = _yscale_log(lo_log, hi_log)
    zeros = any(value[i] <= 0 for i in idx)
    zero_y = HEIGHT - MARGIN_B + ZERO_BAND / 2 + 2 if zeros else 0.0

    def y_of(v: float) -> float:
        lv = _log(v)
        return zero_y if lv is None else fy(lv)

    states = list(dict.fromkeys(str(r.get("state")) for r in rows))
    series, tol_lines = [], []
    for si, state in enumerate(states):
        mine = sorted((i for i in idx if str(layers[i].get("state")) == state), key=lambda i: layers[i]["order"])
        pts = [Point(round(fx(layers[i]["order"]), 1), round(y_of(value[i]), 1),
                     not layers[i].get("ok", True), "", i) for i in mine]
        # thousands of points: the passing ones travel as one path, the failing ones as circles
        ok_pts = [p for p in pts if not p.fail]
        dots = "".join(f"M{p.x:g} {p.y:g}h0" for p in ok_pts)
        series.append(Series(state_label(state), f"s{si % 4}", tuple(p for p in pts if p.fail), "", dots,
                             ",".join(str(p.i) for p in ok_pts)))
        # The bound varies per row (noise-floor calibration): this state's own bound per index.
        tol_by_x: dict[int, float] = {}
        for i in mine:
            tv = layers[i].get("tol")
            if isinstance(tv, (int, float)) and tv > 0:
                tol_by_x[layers[i]["order"]] = max(tol_by_x.get(layers[i]["order"], 0.0), float(tv))
        if tol_by_x:
            tol_lines.append((f"s{si % 4}", f"{tol_label} ({state_label(state)})",
                              " ".join(f"{fx(x):.1f},{fy(math.log10(tv)):.1f}" for x, tv in sorted(tol_by_x.items()))))
    fd_x = 0.0
    if 0 <= fd_index < len(layers) and layers[fd_index].get("kind") == kind:
        fd_x = round(fx(layers[fd_index]["order"]), 1)
    chart = _chart(cid, title, xlabel, ylabel, xticks, yticks, series, tol_lines[0][2] if tol_lines else "",
                   tol_label)
    return Chart(**{**chart.__dict__, "tol_lines": tuple(tol_lines), "zero_y": zero_y, "zero_label": zero_label,
                    "bands": _bands(rows, fx, root_label), "fd_x": fd_x, "fd_label": fd_label,
                    "height": HEIGHT + (ZERO_BAND + 4 if zeros else 0)})


def _judged(row: Mapping[str, Any]) -> float | None:
    """The number a row's verdict judged (``rel`` for rows written before that was recorded); None for a
    noise-dominated row or a non-finite value."""
    if row.get("metric") == NOISE:
        return None
    v = judged_value(row)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _line_series(label: str, css: str, xs: Sequence[float], ys: Sequence[Any], fx: Any, fy: Any,
                 transform: Any = None) -> Series:
    """Polyline + markers; ``transform`` maps a value to plot space (e.g. log10), tooltips keep the value."""
    keep = [(x, float(y)) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and not math.isnan(y)]
    pts = [(fx(x), fy(transform(y) if transform else y), y) for x, y in keep]
    points = tuple(Point(round(px, 1), round(py, 1), False, f"{label}: {y:.6g}") for px, py, y in pts)
    return Series(label, css, points, " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts))


def steps_loss_chart(cid: str, steps: Sequence[Mapping[str, Any]], *, title: str, xlabel: str,
                     labels: Mapping[str, str], ylabel: str = "loss") -> Chart:
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
    return _chart(cid, title, xlabel, ylabel, xticks, yticks, series)


def steps_drift_chart(cid: str, steps: Sequence[Mapping[str, Any]], *, title: str, xlabel: str,
                      labels: Mapping[str, str], ylabel: str = "drift") -> Chart:
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
    return _chart(cid, title, xlabel, ylabel, xticks, yticks, series)


def _bars(counts: Sequence[int], x0: float, width: float, names: Sequence[str]) -> tuple[Bar, ...]:
    total = sum(counts)
    if total <= 0:
        return ()
    bars, x = [], x0
    for c, css, name in zip(counts, ("nonzero", "zero", "unreachable", "frozen"), names):
        w = width * c / total
        if c:
            bars.append(Bar(round(x, 1), round(w, 1), css, f"{name}: {c}"))
        x += w
    return tuple(bars)


def _four(side: Any) -> list[int]:
    """[nonzero, zero, unreachable, frozen] from a per-module entry (older producers give three)."""
    vals = [int(v) for v in (side or [])][:4]
    return vals + [0] * (4 - len(vals))


def coverage_chart(cid: str, pattern: Mapping[str, Any], *, title: str, names: Sequence[str],
                   total_label: str = "total") -> CoverageChart:
    """Stacked bars (non-zero / zero / unreachable / frozen) for the reference and the port: the whole model
    first (the only place frozen tensors are counted when per-module entries have three numbers), then per module."""
    keys = ("nonzero", "zero", "unreachable", "frozen")
    per: dict[str, Any] = {}
    if isinstance(pattern.get("torch"), Mapping) and isinstance(pattern.get("jittor"), Mapping):
        per[total_label] = {side: [pattern[side].get(k) or 0 for k in keys] for side in ("torch", "jittor")}
    per.update(pattern.get("per_module") or {})
    label_w, bar_w, row_h = 170, 430, 30
    rows = []
    for i, (module, sides) in enumerate(per.items()):
        ref, port = _four(sides.get("torch")), _four(sides.get("jittor"))
        y = 8 + i * row_h
        rows.append(CoverageRow(str(module), y, ref != port,
                                _bars(ref, label_w, bar_w, names), _bars(port, label_w, bar_w, names),
                                "/".join(map(str, ref)), "/".join(map(str, port))))
    return CoverageChart(cid, title, label_w + bar_w + 90, 16 + len(rows) * row_h, label_w, bar_w, row_h,
                         tuple(rows))
