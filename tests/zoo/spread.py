"""The torch reference's own float32 spread on one tensor of a zoo pair (torch only, no aligner code).

For a tensor the aligner flagged on a correct pair, this recomputes it in float64 and in several
float32 runs of the reference: as captured (default threads), with one thread (another reduction
order), with the inputs or the weights moved by one ulp. Each float32 run's relative error against
float64 (max-norm ``max|a - ref| / max|ref|`` or L2, the norm the aligner judged) says how far
legitimate float32 rounding alone moves that tensor.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .catalogue import ZooPair, build

__all__ = ["reference_spread", "VARIANTS"]

VARIANTS = ("fp32", "fp32_1thread", "fp32_input_ulp", "fp32_weight_ulp")


class _Ctx:
    """The part of the aligner's loss context the zoo losses use."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype)

    def record(self, name: str, value: Any) -> None:
        pass


def _probe_loss(out: Any, seed: int) -> torch.Tensor:
    """The aligner's default (probe) loss: sum over output leaves i of (out_i * R_i), R_i ~ N(0, 1) from
    ``default_rng([seed, i])``."""
    leaves = [out] if isinstance(out, torch.Tensor) else list(out)
    total = None
    for i, t in enumerate(leaves):
        r = torch.as_tensor(np.random.default_rng([seed, i]).standard_normal(tuple(t.shape)), dtype=t.dtype)
        total = (t * r).sum() if total is None else total + (t * r).sum()
    assert total is not None
    return total


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run(model: torch.nn.Module, x: np.ndarray, targets: Any, loss: Any, seed: int, kind: str,
         name: str) -> np.ndarray:
    """The tensor: ``act`` (module output), ``gact`` (loss gradient w.r.t. it) or ``pgrad`` (parameter gradient)."""
    dtype = next(model.parameters()).dtype
    held: dict[str, torch.Tensor] = {}
    handle = None
    if kind in ("act", "gact"):
        def hook(_m: Any, _i: Any, o: torch.Tensor) -> None:
            if o.requires_grad:
                o.retain_grad()
            held["t"] = o
        handle = dict(model.named_modules())[name].register_forward_hook(hook)
    try:
        xt = torch.as_tensor(x, dtype=dtype).requires_grad_(True)
        out = model(xt)
        if loss is None:
            total = _probe_loss(out, seed)
        else:
            tgt = tuple(torch.as_tensor(t, dtype=dtype) for t in targets)
            total = loss(out, tgt, _Ctx(dtype))
        model.zero_grad(set_to_none=True)
        total.backward()
    finally:
        if handle is not None:
            handle.remove()
    if kind == "act":
        return held["t"].detach().double().numpy()
    if kind == "gact":
        return held["t"].grad.double().numpy()
    return dict(model.named_parameters())[name].grad.double().numpy()


def _rel(a: np.ndarray, ref: np.ndarray, l2: bool) -> float:
    d, r = (float(np.linalg.norm(a - ref)), float(np.linalg.norm(ref))) if l2 else \
        (float(np.abs(a - ref).max()), float(np.abs(ref).max()))
    return d / r if r > 0 else d


def reference_spread(pair: ZooPair, size: int, seed: int, kind: str, name: str, l2: bool = True) -> dict[str, Any]:
    """Relative error vs float64 (L2 or max-norm) of each float32 variant of the reference for one tensor."""
    tm, _, loss = build(pair, seed)
    t_loss = loss[0] if loss else None
    inputs, targets = pair.inputs(size, seed)
    x = inputs[0]
    state = {k: v.detach().clone() for k, v in tm.state_dict().items()}
    m64 = copy.deepcopy(tm).double()
    ref = _run(m64, x.astype(np.float64), targets, t_loss, seed, kind, name)
    out: dict[str, Any] = {"kind": kind, "name": name, "norm": "l2" if l2 else "max",
                           "norm_fp64": float(np.linalg.norm(ref)), "numel": int(ref.size),
                           "torch_threads": torch.get_num_threads()}
    for v in VARIANTS:
        m = copy.deepcopy(tm)
        m.load_state_dict(state)
        xv = x
        if v == "fp32_input_ulp":
            xv = np.nextafter(x, np.float32(np.inf)).astype(np.float32)
        if v == "fp32_weight_ulp":
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        with _threads(1 if v == "fp32_1thread" else None):
            a = _run(m, xv, targets, t_loss, seed, kind, name)
        out[v] = _rel(a, ref, l2)
    return out
