"""bench.json -> bench.md: machine, bare steps, align runs, memory and disk, cold start, targets, profile."""
from __future__ import annotations

from typing import Any

# run.timings keys in display order; any other key the API adds is shown after these
PARTS = ("build_torch", "transfer", "capture_torch", "build_jittor", "capture_jittor", "capture_torch64", "capture_torch32",
         "compare", "report")
GB = 1024.0


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _mb(b: Any) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:160].replace("|", "/")


def peak(r: dict[str, Any] | None) -> float | None:
    """Peak resident memory of one measurement, MiB (VmHWM, else ru_maxrss); for an align run, the peak
    after its first (CLI-like) run in the process."""
    if not r or "error" in r:
        return None
    return r.get("vmhwm_after_mb") or r.get("vmhwm_mb") or r.get("ru_maxrss_mb")


def align_sum(r: dict[str, Any] | None) -> float | None:
    """Seconds of the alignment's own parts: every run.timings entry (captures, transfer, builds,
    compare) plus the report files."""
    if not r or "error" in r:
        return None
    return round(sum(v for v in (r.get("timings") or {}).values() if isinstance(v, (int, float))), 3)


def bare(row: dict[str, Any], side: str, key: str = "median_s") -> float | None:
    r = row.get(f"bare_{side}") or {}
    return r.get(key)


def fresh_floor(row: dict[str, Any]) -> float | None:
    """Build + first step of each framework in a fresh process (kernels on disk): the floor of one CLI run."""
    try:
        return round(sum(row[f"bare_{s}"]["build_s"] + row[f"bare_{s}"]["first_s"] for s in ("torch", "jittor")), 3)
    except (KeyError, TypeError):
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """The performance targets, computed for GOLD-YOLO-N at the largest and smallest measured sizes."""
    rows = [r for r in doc.get("rows", []) if r["model"] == "N"]
    if not rows:
        return {}
    hi, lo = max(rows, key=lambda r: r["img_size"]), min(rows, key=lambda r: r["img_size"])
    floor = (bare(hi, "torch") or 0) + (bare(hi, "jittor") or 0)
    out: dict[str, Any] = {"size": hi["img_size"], "small_size": lo["img_size"], "bare_sum_s": round(floor, 3)}
    for mode, target in (("full", 1.5), ("stats", 1.2)):
        a = hi.get(f"align_{mode}")
        out[f"align_{mode}_over_bare"] = {"value": _ratio(align_sum(a), floor), "target": target,
                                          "warm": _ratio(align_sum((a or {}).get("repeat")), floor)}
        out[f"align_{mode}_wall_over_bare"] = _ratio((a or {}).get("wall_s"), floor) if align_sum(a) else None
        out[f"align_{mode}_over_fresh_floor"] = _ratio(align_sum(a), fresh_floor(hi))
    out["jittor_over_torch"] = {"value": _ratio(bare(hi, "jittor"), bare(hi, "torch")), "target": 1.5}
    out["jittor_over_torch_cpu"] = _ratio(bare(hi, "jittor", "cpu_median_s"), bare(hi, "torch", "cpu_median_s"))
    growth = {}
    for name, get in (("torch", lambda r: peak(r.get("bare_torch"))), ("jittor", lambda r: peak(r.get("bare_jittor"))),
                      ("stats", lambda r: peak(r.get("align_stats"))), ("full", lambda r: peak(r.get("align_full")))):
        h, low = get(hi), get(lo)
        growth[name] = None if h is None or low is None else round(h - low, 1)
    bare_growth = None if growth["torch"] is None or growth["jittor"] is None else growth["torch"] + growth["jittor"]
    out["memory_growth_mb"] = {**growth, "bare_sum": bare_growth,
                               "ok": None if growth["stats"] is None or bare_growth is None
                               else growth["stats"] <= bare_growth}
    full_peak = peak(hi.get("align_full"))
    out["full_peak_mb"] = {"value": full_peak, "target": 3 * GB,
                           "ok": None if full_peak is None else full_peak < 3 * GB}
    return out


def _timing_keys(doc: dict[str, Any]) -> list[str]:
    """Every run.timings key seen in this document, known ones in PARTS order first."""
    seen: list[str] = []
    for r in doc.get("rows", []):
        for mode in ("warmup", "full", "stats", "default"):
            a = r.get(f"align_{mode}") or {}
            for x in (a, a.get("repeat") or {}):
                seen += [k for k in (x.get("timings") or {}) if k not in seen]
    return [k for k in PARTS if k in seen] + [k for k in seen if k not in PARTS]


def _ok(v: Any, target: float) -> str:
    return "–" if v is None else ("met" if v <= target else "**missed**")


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    o = doc["options"]
    L = [f"# Benchmark: `aligner run` versus the bare training steps{' (partial)' if doc.get('partial') else ''}",
         "",
         f"Generated by `python -m benchmarks.run{' --quick' if o.get('quick') else ''}"
         f"{' --threads ' + str(o['omp_num_threads']) if o.get('omp_num_threads') else ''}` on {doc['created']}; "
         f"batch {o['batch']}, {o['runs']} timed bare steps after {o['warmup']} untimed (median), "
         f"{o['align_runs']} timed align run(s) per mode after one warm-up run. Each number comes from its own "
         "subprocess; `load` is the 1-minute load average before it (2 cores: above ~2 means a neighbour "
         "took CPU and times are inflated).",
         "",
         "## Machine",
         "",
         f"* CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gb']} GiB; {m['platform']}",
         f"* Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
         f"* oneDNN linked: {m['onednn']} (use_mkl={m['use_mkl']}); Jittor cache name: {m['jittor_cache_name']}; "
         f"OMP_NUM_THREADS: {o.get('omp_num_threads') or 'unset'}",
         f"* load average (1/5/15 min) at start: {doc.get('load_start')}, at end: {doc.get('load_end', '–')}; "
         f"total {doc.get('total_s', '–')} s",
         "", "## Bare steps (forward + loss + backward, no optimizer step)", "",
         "`cpu` = median CPU seconds of a step over all threads (less sensitive to a busy neighbour than wall time).",
         "",
         "| model | size | torch median s | torch cpu s | torch first s | jittor median s | jittor cpu s | "
         "jittor first s | J/T | torch build s | jittor build s | torch peak MiB | jittor peak MiB | load T/J |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc.get("rows", []):
        t, j = r.get("bare_torch", {}), r.get("bare_jittor", {})
        L.append(f"| {r['model']} | {r['img_size']} | {_f(t.get('median_s'), 3)} | {_f(t.get('cpu_median_s'), 3)} | "
                 f"{_f(t.get('first_s'))} | {_f(j.get('median_s'), 3)} | {_f(j.get('cpu_median_s'), 3)} | "
                 f"{_f(j.get('first_s'))} | "
                 f"{_f(_ratio(j.get('median_s'), t.get('median_s')))} | {_f(t.get('build_s'))} | "
                 f"{_f(j.get('build_s'))} | {_f(peak(t), 0)} | {_f(peak(j), 0)} | "
                 f"{_f(t.get('load_before'), 1)}/{_f(j.get('load_before'), 1)} |")
    il = doc.get("interleaved")
    if il:
        L += ["", f"Interleaved check (`benchmarks/bare_step.py --size {il.get('size')}`: model-only loss, both "
              "frameworks in one process, steps alternating so both see the same load): "
              + ("error: " + _last_line(il["error"]) if "error" in il else
                 f"Jittor/torch wall {il['wall']['ratio']} ({il['wall']['jittor_s']} s / {il['wall']['torch_s']} s), "
                 f"CPU {il['cpu']['ratio']}; load {il.get('load_before')}.")]
    parts = _timing_keys(doc)
    L += ["", "## `aligner run` (api.run_pair + report files), seconds", "",
          "`full`/`stats`: one state, no float64 noise floor (one forward + backward per framework, as the targets "
          "define a run). `default`: what `aligner run` does with no options (every state of the pair and the "
          "float64 reference). `sum` = the parts listed; `wall` = the whole process (Python start, imports, "
          "model builds included). `/bare` = sum / (bare torch + bare Jittor medians); `/fresh` = sum / "
          "(build + first step of each framework in a fresh process).",
          "",
          "`run`: `fresh` = the first run in a new process (what the CLI pays: imports, builds, first-call set-up "
          "included); `warm` = a second run in the same process. `step T`/`step J` = time inside the hooked "
          "forward + loss + backward + fetch (`Adapter.capture`), part of `capture torch`/`capture jittor`.",
          "",
          "| model | size | mode | run | " + " | ".join(k.replace("_", " ") for k in parts)
          + " | step T | step J | sum | wall | /bare | /fresh | peak MiB | rows | verdict | load |",
          "|" + "---|" * (4 + len(parts) + 10)]
    for r in doc.get("rows", []):
        floor = (bare(r, "torch") or 0) + (bare(r, "jittor") or 0)
        for mode in ("warmup", "full", "stats", "default"):
            a = r.get(f"align_{mode}")
            if not a:
                continue
            if "error" in a:
                L.append(f"| {r['model']} | {r['img_size']} | {mode} | error: {_last_line(a['error'])} |"
                         + " |" * (len(parts) + 10))
                continue
            runs = [("fresh", a)] + ([("warm", a["repeat"])] if a.get("repeat") else [])
            for label, x in runs:
                tm, st = x.get("timings") or {}, x.get("hooked_steps") or {}
                fresh = label == "fresh"
                L.append(f"| {r['model']} | {r['img_size']} | {mode} | {label} | "
                         + " | ".join(_f(tm.get(k)) for k in parts)
                         + f" | {_f(st.get('step_torch'))} | {_f(st.get('step_jittor'))} | {_f(align_sum(x))} | "
                         f"{_f(a.get('wall_s')) if fresh else '–'} | {_f(_ratio(align_sum(x), floor))} | "
                         f"{_f(_ratio(align_sum(x), fresh_floor(r)))} | {_f(peak(x), 0)} | {a.get('rows')} | "
                         f"{a.get('verdict')} | {_f(a.get('load_before'), 1) if fresh else '–'} |")
    L += ["", "## Where the memory goes (fresh run; MiB)", "",
          "Resident memory before the run, around each hooked capture (`Adapter.capture`) and after the report; "
          "`hwm` = the process peak so far.", "",
          "| model | size | mode | start | " + " | ".join(f"{s} before / after / hwm" for s in ("torch", "jittor", "torch64"))
          + " | end | peak |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc.get("rows", []):
        for mode in ("full", "stats", "default"):
            a = r.get(f"align_{mode}")
            if not a or "error" in a:
                continue
            mem = (a.get("hooked_steps") or {}).get("memory") or []
            cells = []
            for step in ("step_torch", "step_jittor", "step_torch64"):
                ms = [m for m in mem if m["step"] == step]
                cells.append(" ; ".join(f"{_f(m['rss_before_mb'], 0)} / {_f(m['rss_after_mb'], 0)} / "
                                        f"{_f(m['hwm_after_mb'], 0)}" for m in ms) or "–")
            L.append(f"| {r['model']} | {r['img_size']} | {mode} | {_f(a.get('rss_start_mb'), 0)} | "
                     + " | ".join(cells) + f" | {_f(a.get('rss_end_mb'), 0)} | {_f(peak(a), 0)} |")
    L += ["", "## Trace sets on disk (one state; torch set includes the state's weights)", "",
          "| model | size | full torch MiB | full jittor MiB | stats torch MiB | stats jittor MiB | weights MiB |",
          "|---|---|---|---|---|---|---|"]
    for r in doc.get("rows", []):
        f, s = r.get("trace_full") or {}, r.get("trace_stats") or {}
        if f or s:
            L.append(f"| {r['model']} | {r['img_size']} | {_mb(f.get('torch_bytes'))} | {_mb(f.get('jittor_bytes'))} | "
                     f"{_mb(s.get('torch_bytes'))} | {_mb(s.get('jittor_bytes'))} | {_mb(f.get('weights_bytes'))} |")
    c = doc.get("cold")
    if c:
        L += ["", "## Cold start (GOLD-YOLO-N, 500, empty kernel cache in a separate `cache_name`)", ""]
        if "error" in c:
            L.append(f"error: {c['error'][-300:]!r}")
        else:
            L += [f"* Jittor core build (first `import jittor` in the new cache): {_f(c.get('core_import_s'), 1)} s",
                  f"* kernel compile (first step − steady step): {_f(c.get('kernel_compile_s'), 1)} s "
                  f"({c.get('kernels_compiled')} kernels; first step {_f(c.get('first_step_s'), 1)} s, "
                  f"steady {_f(c.get('steady_step_s'))} s)",
                  f"* cache size {_mb(c.get('cache_bytes'))} MiB, deleted afterwards: {c.get('deleted', 'no')}; "
                  f"~/.cache/jittor/config.json unchanged: {c.get('config_json_unchanged')}; load {c.get('load_before')}"]
    rt = ratios(doc)
    if rt:
        g = rt["memory_growth_mb"]
        L += ["", f"## Targets (GOLD-YOLO-N at {rt['size']}, ratios from this run)", "",
              "The align ratios are given for the fresh-process run (what `aligner run` costs) and, after the "
              "slash, for a warm second run in the same process; status judges the fresh run.", "",
              "| target | measured | bound | status |", "|---|---|---|---|"]
        for key, label in (("align_full_over_bare", "align full / (bare torch + bare Jittor)"),
                           ("align_stats_over_bare", "align stats-only / (bare torch + bare Jittor)"),
                           ("jittor_over_torch", "Jittor fwd+bwd / torch fwd+bwd")):
            v = rt[key]
            warm = f" / {_f(v['warm'])} warm" if v.get("warm") is not None else ""
            L.append(f"| {label} | {_f(v['value'])}{warm} | ≤ {v['target']} | {_ok(v['value'], v['target'])} |")
        if rt["small_size"] != rt["size"]:
            L.append(f"| stats-only peak growth {rt['small_size']}→{rt['size']} vs bare (torch + Jittor) growth | "
                     f"{_f(g['stats'], 0)} MiB | ≤ {_f(g['bare_sum'], 0)} MiB | "
                     f"{'–' if g['ok'] is None else ('met' if g['ok'] else '**missed**')} |")
        fp = rt["full_peak_mb"]
        L.append(f"| full capture peak memory | {_f(fp['value'], 0)} MiB | < 3072 MiB | "
                 f"{'–' if fp['ok'] is None else ('met' if fp['ok'] else '**missed**')} |")
        L += ["", f"Jittor / torch in CPU seconds per step: {rt['jittor_over_torch_cpu']}. "
              f"Wall-clock variants: full {rt['align_full_wall_over_bare']}, stats {rt['align_stats_wall_over_bare']} "
              f"(whole process / bare sum); against the fresh-process floor: full {rt['align_full_over_fresh_floor']}, "
              f"stats {rt['align_stats_over_fresh_floor']}. Full-capture growth {_f(g['full'], 0)} MiB."]
    p = doc.get("profile")
    if p:
        L += ["", f"## Profile of the align path ({p['label']}; N at {p['size']}, one state, no noise floor)", "",
              "`wall`: pyinstrument (wall clock: on a loaded machine waiting for a core is charged to whatever "
              "runs). `cpu`: cProfile on a CPU-time clock (process CPU, all threads). Total = inclusive time, "
              "own = exclusive; entry points above `run_pair` are left out.", ""]
        for key in ("wall_full", "wall_stats", "cpu_full", "cpu_stats"):
            pr = p.get(key)
            if not pr:
                continue
            clock, mode = key.split("_")
            if "error" in pr:
                L += [f"{key}: error {_last_line(pr['error'])}", ""]
                continue
            total = pr.get("wall_s") if clock == "wall" else pr.get("cpu_s")
            L += [f"**{mode}, {clock} clock** ({total} s profiled; full text: `benchmarks/profiles/profile_{p['label']}_{key}.txt` when regenerated)", "",
                  "| by total time | s | by own time | s |", "|---|---|---|---|"]
            for (kt, vt), (ks, vs) in zip(pr["top_total"][:12], pr["top_self"][:12]):
                L.append(f"| `{kt}` | {vt} | `{ks}` | {vs} |")
            L.append("")
    return "\n".join(L) + "\n"
