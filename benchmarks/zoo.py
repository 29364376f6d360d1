"""The zoo benchmark: every correct zoo pair and every planted zoo fault through ``aligner.align``.

    python -m benchmarks.zoo                       # correct pairs at 64, 128, 320; faults at their size
    python -m benchmarks.zoo --sizes 64 --only conv_bn --only bn_eps   # a few cells (merged into the table)

Default mode (noise floor on, float32, batch 2, seed 0). One progress line per cell. Writes
``benchmarks/results/zoo.json`` and ``zoo.md``; each error finding on a correct pair (a false alarm)
is measured against the torch reference's own float32 spread (``tests/zoo/spread.py``).
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES = (64, 128, 320)


def _zoo() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))  # the zoo lives with the tests (``import zoo`` there too)
    import zoo  # noqa: PLC0415
    return zoo


def _judged(f: Any) -> dict[str, Any]:
    """Type, location and the number the verdict judged (with its bound) of one finding."""
    ev = f.evidence or {}
    value = ev.get("value", ev.get("rel"))
    return {"type": str(f.type), "location": f.location, "state": f.state, "metric": ev.get("metric"),
            "value": value, "tol": ev.get("tol"), "noise_floor": ev.get("noise_floor"),
            "tensor": ev.get("torch_name") or f.location, "sub": ev.get("sub"),
            "params": list(ev.get("params") or [])[:20]}


def run_cell(zoo: Any, pair: Any, size: int, seed: int, fault: Any = None) -> dict[str, Any]:
    """Align one pair (correct, or with ``fault`` planted) at one size; the table row as a dict."""
    t0 = time.perf_counter()
    r = zoo.align_cell(pair, size, seed, fault)
    secs = time.perf_counter() - t0
    errors = [f for f in r.findings if str(f.severity) == "error"]
    judged = [_judged(f) for f in errors]
    for j in judged:  # the port's judged number for each parameter gradient behind a parameter-gradient finding
        j["rows"] = {x.torch_name: {"value": x.judgement.value, "bound": x.judgement.bound,
                                    "noise_floor": x.judgement.noise_floor, "ok": x.ok}
                     for x in r.rows if x.torch_name in j["params"] and str(x.kind) == "param_grad"}
    cell: dict[str, Any] = {
        "kind": "fault" if fault else "correct", "name": fault.name if fault else pair.name, "pair": pair.name,
        "size": size, "seed": seed, "verdict": r.verdict, "errors": len(errors),
        "first_error": judged[0] if judged else None, "error_findings": judged,
        "seconds": round(secs, 1)}
    if fault:
        first = cell["first_error"]
        cell.update(expected_type=fault.expected_type, expected_location=fault.expected_location,
                    caught=bool(errors),
                    at_expected_module=bool(first) and zoo.location_matches(fault.expected_location, first["location"]),
                    expected_type_first=bool(first) and first["type"] == fault.expected_type)
    return cell


def _tensors(err: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of the tensors behind one error finding: module output, its gradient, parameter gradients."""
    buffer = err["location"].endswith(("running_mean", "running_var"))
    if err["type"] == "forward_divergence" and err["tensor"] and not buffer:
        return [("act", err["tensor"])]
    if err["type"] == "backward_divergence":
        return [("pgrad", p) for p in err["params"][:3]] if err["params"] else [("gact", err["tensor"])]
    return []


def measure_false_alarm(zoo: Any, pair: Any, size: int, seed: int, err: dict[str, Any]) -> dict[str, Any]:
    """The port's judged error next to the float32 reference spread (float64 oracle) of the same tensor."""
    from zoo.spread import reference_spread  # noqa: PLC0415 - imports torch

    out: dict[str, Any] = {"finding": f"{err['type']} @ {err['location']}", "metric": err["metric"],
                           "port_value": err["value"], "tol": err["tol"], "noise_floor": err["noise_floor"]}
    tensors = _tensors(err)
    l2 = str(err["metric"] or "").startswith("rel_l2")
    # a module output or its gradient is the finding's own judged tensor; parameter gradients have their own rows
    out["tensors"] = [{**reference_spread(pair, size, seed, k, n, l2=l2),
                       "port": err.get("rows", {}).get(n) if k == "pgrad" else None} for k, n in tensors]
    if not tensors:
        out["skipped"] = "not a module output or gradient"
    return out


def _cells(zoo: Any, sizes: tuple[int, ...], only: set[str], pairs: bool, faults: bool) -> list[tuple[Any, int, Any]]:
    out: list[tuple[Any, int, Any]] = []
    for size in sizes:
        if pairs:
            out += [(p, size, None) for p in zoo.PAIRS if not only or p.name in only]
        if faults:
            out += [(zoo.get_pair(f.pair), size, f) for f in zoo.FAULTS
                    if f.size == size and (not only or f.name in only)]
    return out


def _key(c: dict[str, Any]) -> tuple[str, str, int]:
    return c["kind"], c["name"], c["size"]


@click.command()
@click.option("--sizes", default=",".join(map(str, SIZES)), show_default=True, help="image sizes of the correct pairs")
@click.option("--only", multiple=True, help="pair or fault name (repeatable); merged into the existing table")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-pairs", is_flag=True, help="skip the correct pairs")
@click.option("--no-faults", is_flag=True, help="skip the planted faults")
@click.option("--no-spread", is_flag=True, help="do not measure the reference spread of false alarms")
@click.option("--out", "out_dir", default=str(RESULTS_DIR), show_default=True, type=click.Path(file_okay=False))
def main(sizes: str, only: tuple[str, ...], seed: int, no_pairs: bool, no_faults: bool, no_spread: bool,
         out_dir: str) -> None:
    zoo = _zoo()
    unknown = set(only) - {p.name for p in zoo.PAIRS} - {f.name for f in zoo.FAULTS}
    if unknown:
        raise click.BadParameter(f"unknown pair or fault: {', '.join(sorted(unknown))}", param_hint="--only")
    sz = tuple(int(s) for s in sizes.split(","))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "zoo.json"
    doc = json.loads(jpath.read_text(encoding="utf-8")) if (only and jpath.exists()) else {}
    cells = {_key(c): c for c in doc.get("cells", [])}
    todo = _cells(zoo, tuple(sorted(set(sz) | ({f.size for f in zoo.FAULTS} if not no_faults else set()))),
                  set(only), not no_pairs, not no_faults)
    todo = [(p, s, f) for p, s, f in todo if f is not None or s in sz]
    for i, (pair, size, fault) in enumerate(todo, 1):
        cell = run_cell(zoo, pair, size, seed, fault)
        if cell["kind"] == "correct" and cell["errors"] and not no_spread:
            cell["spread"] = [measure_false_alarm(zoo, pair, size, seed, e) for e in cell["error_findings"][:3]]
        cells[_key(cell)] = cell
        fe = cell["first_error"]
        what = f"{fe['type']} @ {fe['location']}" if fe else "-"
        tag = (f" caught={cell['caught']} at_module={cell['at_expected_module']}" if fault else "")
        print(f"[{i}/{len(todo)}] {cell['kind']:7s} {cell['name']:22s} {size:4d}px  {cell['verdict']:4s} "
              f"errors={cell['errors']} first={what}{tag}  {cell['seconds']:.1f}s", flush=True)
        _write(out, cells, seed)
    _write(out, cells, seed)


def _write(out: Path, cells: dict[tuple[str, str, int], dict[str, Any]], seed: int) -> None:
    zoo = _zoo()
    rank = {**{p.name: i for i, p in enumerate(zoo.PAIRS)}, **{f.name: i for i, f in enumerate(zoo.FAULTS)}}
    ordered = sorted(cells.values(), key=lambda c: (c["kind"] != "correct", c["size"], rank.get(c["name"], 99)))
    doc = {"format": 1, "seed": seed, "mode": "aligner.align default (noise floor, float32, batch 2)",
           "machine": {"python": platform.python_version(), "platform": platform.platform()},
           "date": _dt.date.today().isoformat(), "cells": ordered}
    (out / "zoo.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    md = out / "zoo.md"
    notes = _notes(md.read_text(encoding="utf-8")) if md.exists() else ""
    md.write_text(render(doc, notes), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# zoo.json -> zoo.md


def _g(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _judged_text(e: dict[str, Any] | None) -> tuple[str, str]:
    if not e:
        return "–", "–"
    judged = f"{e['metric'] or 'value'} {_g(e['value'])} > {_g(e['tol'])}" if e.get("tol") is not None else "–"
    return f"`{e['type']} @ {e['location'] or '(model)'}`", judged


def _yes(b: Any) -> str:
    return "yes" if b else "**no**"


NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"


def _notes(md: str) -> str:
    """The maintainers' hand-written analysis between the notes markers, kept across regenerations."""
    if NOTES_BEGIN not in md or NOTES_END not in md:
        return ""
    text = md.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    return "" if text == "(none yet)" else text


def render(doc: dict[str, Any], notes: str = "") -> str:
    cells = doc["cells"]
    zoo = _zoo()
    correct = [c for c in cells if c["kind"] == "correct"]
    faults = [c for c in cells if c["kind"] == "fault"]
    lines = ["# Zoo: small torch / Jittor pairs through `aligner.align`", "",
             f"`python -m benchmarks.zoo` ({doc['mode']}, seed {doc['seed']}; {doc['date']}, "
             f"Python {doc['machine']['python']}). Pairs and faults: `tests/zoo/`.", "",
             f"**Correct pairs: {sum(1 for c in correct if c['errors'])} of {len(correct)} cells with error findings "
             f"(false alarms).** **Planted faults: {sum(1 for c in faults if c['caught'])}/{len(faults)} caught, "
             f"{sum(1 for c in faults if c['at_expected_module'])}/{len(faults)} with the first error at the expected "
             f"module, {sum(1 for c in faults if c['expected_type_first'])}/{len(faults)} of the expected type.**", "",
             "## Pairs", "", "| pair | covers |", "|---|---|"]
    lines += [f"| `{p.name}` | {p.covers} |" for p in zoo.PAIRS]
    lines += ["", "## Correct pairs", "",
              "| pair | size | verdict | errors | first error | judged (metric value > bound) | time (s) |",
              "|---|---|---|---|---|---|---|"]
    for c in correct:
        first, judged = _judged_text(c["first_error"])
        lines.append(f"| `{c['name']}` | {c['size']} | {c['verdict']} | {c['errors']} | {first} | {judged} | "
                     f"{c['seconds']:.1f} |")
    lines += ["", "## Planted faults (Jittor side)", "",
              "| fault | pair | size | what | expected | first error | judged | caught | at expected module "
              "| expected type | time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in faults:
        f = zoo.get_fault(c["name"])
        first, judged = _judged_text(c["first_error"])
        lines.append(f"| `{c['name']}` | `{c['pair']}` | {c['size']} | {f.description} | "
                     f"`{c['expected_type']} @ {c['expected_location']}` | {first} | {judged} | {_yes(c['caught'])} | "
                     f"{_yes(c['at_expected_module'])} | {_yes(c['expected_type_first'])} | {c['seconds']:.1f} |")
    lines += ["", "## False alarms today", ""] + _false_alarms(correct)
    lines += ["", "### Analysis (hand-written; kept when the tables are regenerated)", "", NOTES_BEGIN]
    lines += [notes or "(none yet)", NOTES_END]
    return "\n".join(lines) + "\n"


def _false_alarms(correct: list[dict[str, Any]]) -> list[str]:
    rows = []
    for c in correct:
        for s in c.get("spread", []):
            for t in s.get("tensors", []):
                worst = max(t.get(v, 0.0) for v in ("fp32", "fp32_1thread", "fp32_input_ulp", "fp32_weight_ulp"))
                port = t.get("port") or {"value": s["port_value"], "bound": s["tol"], "noise_floor": s["noise_floor"]}
                ratio = (port["value"] / worst) if (worst and port["value"] is not None) else None
                rows.append(f"| `{c['name']}` | {c['size']} | `{s['finding']}` | {t['kind']} `{t['name']}` | "
                            f"{t.get('norm', 'l2')} | {_g(port['value'])} | {_g(port['bound'])} | "
                            f"{_g(port['noise_floor'])} | {_g(t['fp32'])} | {_g(t['fp32_1thread'])} | "
                            f"{_g(t['fp32_input_ulp'])} | {_g(t['fp32_weight_ulp'])} | {_g(ratio)} |")
    if not any(c["errors"] for c in correct):
        return ["No error finding on any correct pair in this run."]
    head = ["Every error finding on a correct pair, with the flagged tensor recomputed by the torch reference alone "
            "(`tests/zoo/spread.py`): the norm the aligner judged it in (max-norm or L2 relative error against the "
            "float64 reference), the port's judged error, its bound and the aligner's noise floor, then the same "
            "error of four float32 runs of the reference: as captured, with one thread instead of the default "
            "(another reduction order), with the inputs and with the weights moved up by one ulp. "
            "*port / spread* is the port's judged error over the largest of the four: about 1 or below means "
            "float32 rounding of the reference alone moves the tensor as far as the port does.", "",
            "| pair | size | finding | tensor | norm | port | bound | noise floor | ref fp32 | 1 thread "
            "| input +1 ulp | weights +1 ulp | port / spread |", "|" + "---|" * 13]
    return head + (rows or ["| (errors present but no measurable tensor) |||||||||||||"])


if __name__ == "__main__":
    main()
