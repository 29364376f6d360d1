"""Bare fwd+bwd step of GOLD-YOLO-N, Jittor port vs PyTorch reference, on this machine's CPU.

Train mode, batch 1, float32, same weights in both (torch init copied into Jittor), loss = sum(w * outputs)
over the head outputs (no detection loss, no optimizer). Kernels are warmed first (Jittor compiles on first
use); then `--repeats` timed steps run interleaved (torch, jittor, torch, ...). Medians and their ratio are
printed for wall time and for process CPU time (all threads; much less sensitive to other load on a shared
machine).

    .venv/bin/python benchmarks/bare_step.py [--size 640] [--repeats 5] [--warmup 2]
"""
from __future__ import annotations

import statistics
import time

import click
import numpy as np
import torch

import jittor_impl.env  # noqa: F401  (before jittor)
import jittor as jt
from jittor_impl.model import build_model as build_jittor
from jittor_impl.weights import load_torch_state_dict
from reference_torch.model import build_model as build_torch


def _torch_step(model: torch.nn.Module, x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    model.zero_grad(set_to_none=True)
    (feats, scores, distri), _ = model(x)
    loss = sum((o * w).sum() for o, w in zip(list(feats) + [scores, distri], weights))
    loss.backward()
    return time.perf_counter() - t0, time.process_time() - c0


def _jittor_step(model: jt.Module, params: list[jt.Var], x: jt.Var,
                 weights: list[jt.Var]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    (feats, scores, distri), _ = model(x)
    loss = sum((o * w).sum() for o, w in zip(list(feats) + [scores, distri], weights))
    grads = jt.grad(loss, params)
    jt.sync(grads)  # Jittor is lazy: force the whole fwd+bwd graph
    return time.perf_counter() - t0, time.process_time() - c0


@click.command(help=__doc__.splitlines()[0])
@click.option("--size", type=int, default=640, show_default=True, help="square input size")
@click.option("--repeats", type=int, default=5, show_default=True, help="timed steps per framework")
@click.option("--warmup", type=int, default=2, show_default=True, help="untimed steps first (kernel compile)")
def main(size: int, repeats: int, warmup: int) -> None:
    torch.manual_seed(0)
    ref = build_torch("gold_yolo-n", num_classes=80).train()
    jt.set_global_seed(0)
    port = build_jittor("gold_yolo-n", num_classes=80)
    load_torch_state_dict(port, ref.state_dict())
    params = [p for p in port.parameters() if not p.is_stop_grad()]

    rng = np.random.default_rng(0)
    x = rng.random((1, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        (feats, scores, distri), _ = ref(torch.from_numpy(x))
    shapes = [tuple(o.shape) for o in list(feats) + [scores, distri]]
    w_np = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tx, tw = torch.from_numpy(x), [torch.from_numpy(w) for w in w_np]
    jx, jw = jt.array(x), [jt.array(w) for w in w_np]

    for _ in range(warmup):
        _torch_step(ref, tx, tw)
        _jittor_step(port, params, jx, jw)
    # interleaved, so that both frameworks see the same background load on a shared machine
    t_times, j_times = [], []
    for _ in range(repeats):
        t_times.append(_torch_step(ref, tx, tw))
        j_times.append(_jittor_step(port, params, jx, jw))
    print(f"GOLD-YOLO-N fwd+bwd, {size}x{size}, batch 1, train mode, float32, "
          f"torch threads {torch.get_num_threads()}, median of {repeats} (interleaved)")
    for label, idx in (("wall", 0), ("cpu", 1)):  # cpu = process CPU time, all threads: robust to load
        tt, jj = [t[idx] for t in t_times], [t[idx] for t in j_times]
        t_med, j_med = statistics.median(tt), statistics.median(jj)
        print(f"  {label:4s} torch {t_med:7.3f} s  jittor {j_med:7.3f} s  ratio jittor/torch {j_med / t_med:.2f} "
              f"(best {min(jj) / min(tt):.2f})  [torch {', '.join(f'{t:.2f}' for t in tt)}; "
              f"jittor {', '.join(f'{t:.2f}' for t in jj)}]")


if __name__ == "__main__":
    main()
