"""Benchmark: element pairs per second of one tensor comparison, per backend of the fused reductions.

    python -m benchmarks.compare_throughput            # 1e5, 1e6, 1e7 elements, float32 and float64
    python -m benchmarks.compare_throughput --quick    # 1e5 and 1e6 only, fewer rounds

Candidates, on the same arrays, interleaved round by round (the machine may be shared, so the ratios
are what to read, the absolute rates only for this run's load):

* ``numpy``: the chunked numpy passes (the implementation before the compiled kernel; its fallback);
* ``c``: the compiled one-pass kernel (:mod:`aligner.fused_kernel`), the default where it builds;
* ``torch``: the same quantities from torch CPU ops on ``from_numpy`` views (float64 buffers, ``out=``);
* ``numba``: a scalar ``@njit(nogil=True)`` loop per chunk, same thread split (only if numba imports).

Each candidate's sums are checked against the ``numpy`` ones (maxima and counts exact, sums within
1e-12 relative). ``measure`` rows time :func:`aligner.metrics.measure` end to end (backend numpy vs c);
``stats`` rows time :meth:`TensorStats.of` (fingerprint included) and, alone, the sha1 of the bytes it used to
take. Results go to ``benchmarks/results/compare_throughput.json`` and ``.md``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from aligner import reductions
from aligner.metrics import measure
from aligner.records import TensorStats
from aligner.reductions import CHUNK, PairSums

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RTOL, ATOL = 1e-3, 1e-6
MIN_CALL_S = 0.02   # small arrays: repeat a call until one timing sample lasts this long
FIELDS = ("zeros_ref", "zeros_port", "ref_absmax", "max_abs", "sum_abs", "rr", "pp", "rp", "dd", "required", "close")
EXACT = {"zeros_ref", "zeros_port", "ref_absmax", "max_abs", "required", "close"}


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def _with_backend(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        previous = reductions.set_backend(name)
        try:
            return fn(*args)
        finally:
            reductions.set_backend(previous)
    return run


def torch_pair_sums(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> PairSums | None:
    """The pair sums from torch ops (intra-op threads), 1 Mi-element float64 chunks, no per-chunk allocation."""
    import torch  # noqa: PLC0415 - a benchmark candidate, not a dependency of the metrics
    r, p = (torch.from_numpy(np.ascontiguousarray(a).reshape(-1)) for a in (ref, port))
    n, step = r.numel(), 1 << 20
    bufs = [torch.empty(min(step, n), dtype=torch.float64) for _ in range(5)]
    mask = torch.empty(min(step, n), dtype=torch.bool)
    parts = []
    for s in range(0, n, step):
        e = min(s + step, n)
        R, P, D, AR, S = (b[:e - s] for b in bufs)
        B = mask[:e - s]
        R.copy_(r[s:e])
        P.copy_(p[s:e])
        torch.sub(P, R, out=D)
        D.abs_()
        torch.abs(R, out=AR)
        zr = int(torch.eq(R, 0, out=B).sum())
        zp = int(torch.eq(P, 0, out=B).sum())
        torch.mul(AR, rtol, out=S)
        close = int(torch.le(D, S + atol, out=B).sum())
        parts.append((zr, zp, float(AR.max()), float(D.max()), float(D.sum()), float(R.dot(R)), float(P.dot(P)),
                      float(R.dot(P)), float(D.dot(D)), float((D - S).max()), close))
    col = list(zip(*parts))
    out = PairSums(n, sum(col[0]), sum(col[1]), max(col[2]), max(col[3]), math.fsum(col[4]), math.fsum(col[5]),
                   math.fsum(col[6]), math.fsum(col[7]), math.fsum(col[8]), max(col[9]), sum(col[10]))
    return out if all(math.isfinite(v) for v in (out.rr, out.pp, out.dd)) else None


def numba_candidate() -> Callable[..., PairSums | None] | None:
    """A numba per-chunk kernel on the pool, or None where numba is not installed."""
    try:
        import numba  # noqa: PLC0415 - optional candidate
    except ImportError:
        return None

    @numba.njit(nogil=True, cache=False)
    def chunks(r, p, rtol, atol, out):  # noqa: ANN001, ANN202 - numba-typed
        n = r.size
        for k in range(out.shape[0]):
            zr = zp = cl = 0.0
            am = dm = ds = rr = pp = rp = dd = 0.0
            rq = -np.inf
            for i in range(k * CHUNK, min((k + 1) * CHUNK, n)):
                a, b = np.float64(r[i]), np.float64(p[i])
                d = b - a
                ad, ar = abs(d), abs(a)
                s = ar * rtol
                zr += a == 0
                zp += b == 0
                am = max(am, ar)
                dm = max(dm, ad)
                ds += ad
                rr += a * a
                pp += b * b
                rp += a * b
                dd += d * d
                rq = max(rq, ad - s)
                cl += ad <= s + atol
            out[k, 0], out[k, 1], out[k, 2], out[k, 3], out[k, 4], out[k, 5] = zr, zp, am, dm, ds, rr
            out[k, 6], out[k, 7], out[k, 8], out[k, 9], out[k, 10] = pp, rp, dd, rq, cl

    def pair(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> PairSums | None:
        r, p = ref.reshape(-1), port.reshape(-1)
        nch = -(-r.size // CHUNK)
        out = np.empty((nch, 11))
        workers = min(os.cpu_count() or 1, 8)
        per = -(-nch // workers)
        starts = list(range(0, nch, per))
        pool = reductions._get_pool()  # noqa: SLF001 - the same thread pool as the library's paths
        futs = [pool.submit(chunks, r[k * CHUNK:(k + per) * CHUNK], p[k * CHUNK:(k + per) * CHUNK], rtol, atol,
                            out[k:k + per]) for k in starts]
        for f in futs:
            f.result()
        c = out.T
        s = PairSums(r.size, int(c[0].sum()), int(c[1].sum()), float(c[2].max()), float(c[3].max()), math.fsum(c[4]),
                     math.fsum(c[5]), math.fsum(c[6]), math.fsum(c[7]), math.fsum(c[8]), float(c[9].max()),
                     int(c[10].sum()))
        return s if all(math.isfinite(v) for v in (s.rr, s.pp, s.dd)) else None

    pair(np.ones(8, np.float32), np.ones(8, np.float32), 0.0, 0.0)   # compile both signatures outside the timing
    pair(np.ones(8), np.ones(8), 0.0, 0.0)
    return pair


def _time_once(fn: Callable[[], Any], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _agrees(got: PairSums | None, want: PairSums | None) -> bool:
    if got is None or want is None:
        return got is want
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        if (a != b) if f in EXACT else abs(a - b) > 1e-12 * abs(b):
            return False
    return True


def bench_case(n: int, dtype: str, rounds: int, candidates: dict[str, Callable[..., Any]]) -> dict[str, Any]:
    """One array size and dtype: every candidate timed once per round, in a rotating order."""
    rng = np.random.default_rng(n)
    ref = rng.standard_normal(n).astype(dtype)
    port = (ref + rng.standard_normal(n).astype(dtype) * np.asarray(1e-3, dtype)).astype(dtype)
    ref[::9] = 0
    calls: dict[str, Callable[[], Any]] = {name: (lambda f=f: f(ref, port, RTOL, ATOL))
                                           for name, f in candidates.items()}
    calls["measure_numpy"] = lambda: _with_backend("numpy", measure)(ref, port, RTOL, ATOL)
    calls["measure_c"] = lambda: _with_backend("c", measure)(ref, port, RTOL, ATOL)
    calls["stats_numpy"] = lambda: _with_backend("numpy", TensorStats.of)(ref)
    calls["stats_c"] = lambda: _with_backend("c", TensorStats.of)(ref)
    calls["sha1_only"] = lambda: hashlib.sha1(memoryview(ref).cast("B")).hexdigest()
    want = candidates["numpy"](ref, port, RTOL, ATOL)
    agree = {name: _agrees(f(ref, port, RTOL, ATOL), want) for name, f in candidates.items()}
    st_n, st_c = _with_backend("numpy", TensorStats.of)(ref), _with_backend("c", TensorStats.of)(ref)
    agree["stats_c"] = all(getattr(st_n, k) == getattr(st_c, k) for k in ("fingerprint", "min", "max", "zero_frac")) \
        and all(abs(getattr(st_n, k) - getattr(st_c, k)) <= 1e-12 * abs(getattr(st_n, k))
                for k in ("mean", "std", "l2"))
    reps = {name: max(1, math.ceil(MIN_CALL_S / max(_time_once(c, 1), 1e-6))) for name, c in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for k in range(rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            samples[name].append(_time_once(calls[name], reps[name]))
    med = {name: statistics.median(v) for name, v in samples.items()}
    row = {"n": n, "dtype": dtype, "rounds": rounds, "agrees_with_numpy": agree,
           "seconds": {k: round(v, 7) for k, v in med.items()},
           "pairs_per_s": {k: round(n / v) for k, v in med.items()},
           "speedup_over_numpy": {k: round(med[k.replace("_c", "_numpy")] / v, 2) if k.endswith("_c")
                                  else round(med["numpy"] / v, 2) for k, v in med.items()
                                  if k in candidates or k.endswith("_c")}}
    log(f"{dtype} n={n:.0e}: " + ", ".join(f"{k} {v / 1e9:.3f} G/s" for k, v in row["pairs_per_s"].items()))
    return row


def machine() -> dict[str, Any]:
    from benchmarks.run import machine as run_machine  # noqa: PLC0415 - same description as bench.json
    m = run_machine()
    for pkg in ("numba",):
        try:
            m["versions"][pkg] = __import__(pkg).__version__
        except ImportError:
            m["versions"][pkg] = None
    m["kernel_backend"] = reductions.backend()
    m["pool_threads"] = reductions._WORKERS  # noqa: SLF001 - reported, not used
    return m


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    names = [k for k in ("numpy", "c", "torch", "numba") if k in doc["rows"][0]["seconds"]]
    lines = [f"# Compare throughput ({doc['date']})", "",
             f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}; "
             f"numpy {m['versions'].get('numpy')}, torch {m['versions'].get('torch')}, "
             f"numba {m['versions'].get('numba')}; backend in use: `{m['kernel_backend']}`. "
             f"Load average {doc['load_before']} before, {doc['load_after']} after "
             "(shared machine: read the ratios).", "",
             "Element pairs per second (millions), median of interleaved rounds. `numpy` is the implementation "
             "before the kernel (kept as the fallback); ratio columns are over it.", "",
             "## Fused pair sums (every metric of one pair)", "",
             "| dtype | n | " + " | ".join(f"{k} M/s" for k in names) + " | "
             + " | ".join(f"{k}/numpy" for k in names[1:])
             + " | agree |", "|" + "---|" * (2 + 2 * len(names))]
    for r in doc["rows"]:
        pp, sp = r["pairs_per_s"], r["speedup_over_numpy"]
        ok = all(r["agrees_with_numpy"].get(k, True) for k in names)
        lines.append(f"| {r['dtype']} | {r['n']:.0e} | " + " | ".join(f"{pp[k] / 1e6:.0f}" for k in names) + " | "
                     + " | ".join(f"{sp[k]:.1f}x" for k in names[1:]) + f" | {'yes' if ok else 'NO'} |")
    lines += ["", "## End to end: `measure(ref, port, rtol, atol)` and `TensorStats.of`", "",
              "| dtype | n | measure before M/s | measure after M/s | ratio "
              "| TensorStats.of before M/s | after M/s | ratio "
              "| sha1 alone M/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        pp, sp = r["pairs_per_s"], r["speedup_over_numpy"]
        lines.append(f"| {r['dtype']} | {r['n']:.0e} | {pp['measure_numpy'] / 1e6:.0f} | {pp['measure_c'] / 1e6:.0f} | "
                     f"{sp['measure_c']:.1f}x | {pp['stats_numpy'] / 1e6:.0f} | {pp['stats_c'] / 1e6:.0f} | "
                     f"{sp['stats_c']:.1f}x | {pp['sha1_only'] / 1e6:.0f} |")
    lines += ["", "`agree`: maxima and counts identical to `numpy`, sums within 1e-12 relative "
              "(`stats_c` too: "
              + ("all yes" if all(r["agrees_with_numpy"]["stats_c"] for r in doc["rows"]) else "NOT all")
              + "). TensorStats.of takes a positional 64-bit fingerprint of the bits in the same kernel pass (stored "
              "in traces, compared for exact/alias equality); it replaced a sha1 of the bytes, whose rate alone is "
              "the `sha1 alone` column.",
              "", "`c` is what the library uses wherever a C compiler builds it (checked against `numpy` on a probe at "
              "first use), else `numpy`. `torch` runs with its default intra-op threads; `numba` is a plain scalar "
              "loop (without fastmath LLVM does not vectorise float reductions).", ""]
    return "\n".join(lines)


@click.command()
@click.option("--quick", is_flag=True, help="1e5 and 1e6 elements only, 3 rounds")
@click.option("--rounds", default=7, show_default=True, help="interleaved timing rounds per case")
def main(quick: bool, rounds: int) -> None:
    """Measure the candidates and write compare_throughput.{json,md}."""
    sizes = (10**5, 10**6) if quick else (10**5, 10**6, 10**7)
    rounds = 3 if quick else rounds
    reductions.backend()  # build the kernel outside the timings
    candidates: dict[str, Callable[..., Any]] = {"numpy": _with_backend("numpy", reductions.pair_sums),
                                                 "c": _with_backend("c", reductions.pair_sums),
                                                 "torch": torch_pair_sums}
    nb = numba_candidate()
    if nb is not None:
        candidates["numba"] = nb
    load0 = os.getloadavg()[0]
    rows = [bench_case(n, dt, rounds, candidates) for dt in ("float32", "float64") for n in sizes]
    doc = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
           "rtol": RTOL, "atol": ATOL, "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
           "rows": rows}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "compare_throughput.json").write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS_DIR / "compare_throughput.md").write_text(render(doc))
    log(f"wrote {RESULTS_DIR / 'compare_throughput.md'}")


if __name__ == "__main__":
    main()
