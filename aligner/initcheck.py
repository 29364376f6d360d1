"""The port's own initialisation, checked before the weight transfer overwrites it.

Every run copies the torch weights into the port before comparing, so a port that initialises a tensor
differently (a prediction conv re-initialised after ``initialize_biases``, a wrong prior-probability bias,
BN buffers not at 0/1) computes exactly like the reference and the difference is invisible to every
other check; training the port from its own init would start elsewhere. The capture therefore summarises
each freshly built model (``Trace.meta["init"]``, written by :func:`init_summary`) and
:func:`init_findings` compares the tensors whose reference init is *deterministic*:

* every element equal (zero prediction weights, constant prior biases, BN ones/zeros, running stats), or
* identical in a second build of the reference under another seed (the DFL projection ``linspace``,
  strides), when the capture could make one and that build changed some random tensor (a builder that
  ignores the seed makes "identical" meaningless, so then only the all-equal rule applies).

Randomly initialised tensors are skipped: their values depend on each framework's generator. Numpy only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from aligner.findings import Finding, place
from aligner.match import rename
from aligner.records import FindingType, ParamInfo, Severity, Trace

__all__ = ["INIT_RTOL", "init_summary", "init_findings"]

# Deterministic inits are computed the same way in both frameworks (fills, linspace, a log of a prior):
# they agree to a few float32 ulps; a wrong init is off by O(1).
INIT_RTOL = 1e-5
_IGNORE = ("num_batches_tracked",)  # torch-only bookkeeping (weights.DEFAULT_IGNORE)


def _summary(a: np.ndarray) -> list[float] | None:
    """[min, max, mean, std] in float64, or None for a tensor that cannot be summarised."""
    if a.dtype.kind not in "fiub" or a.size == 0:
        return None
    x = np.asarray(a).astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        return None
    return [float(x.min()), float(x.max()), float(x.mean()), float(x.std())]


def init_summary(arrays: Mapping[str, np.ndarray], twin: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, Any]:
    """``meta["init"]`` of a freshly built model: ``{"stats": {name: [min, max, mean, std]}}`` and, with
    ``twin`` (the same model built under another seed), ``"deterministic"``: the names both builds
    hold bit for bit (only when the other seed changed at least one tensor)."""
    stats = {}
    for name, a in arrays.items():
        s = _summary(np.asarray(a))
        if s is not None:
            stats[name] = s
    out: dict[str, Any] = {"stats": stats}
    if twin is not None:
        same = [n for n, a in arrays.items() if n in twin and np.shape(twin[n]) == np.shape(a)
                and np.array_equal(np.asarray(a), np.asarray(twin[n]))]
        if len(same) < sum(1 for n in arrays if n in twin):
            out["deterministic"] = same
    return out


def _fmt_range(s: list[float]) -> str:
    return f"all {s[0]:.6g}" if s[0] == s[1] else f"in [{s[0]:.4g}, {s[1]:.4g}] (mean {s[2]:.4g}, std {s[3]:.4g})"


def init_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str] | None = None) -> list[Finding]:
    """One ``init_mismatch`` error listing the port tensors whose fresh values differ from the reference's
    deterministic init, placed at the first affected module; [] when either trace has no init summary
    (older traces, models handed in already built). Missing or reshaped tensors are left to the
    inventory findings."""
    ti, ji = torch.meta.get("init"), jittor.meta.get("init")
    if not isinstance(ti, Mapping) or not isinstance(ji, Mapping):
        return []
    tstats, jstats = ti.get("stats") or {}, ji.get("stats") or {}
    det = set(ti.get("deterministic") or ())
    jparams = {p.name: p for p in jittor.params}
    mapping = mapping or {}
    bad: list[tuple[ParamInfo, list[float], list[float]]] = []
    for p in torch.params:
        s = tstats.get(p.name)
        if p.shared_with or s is None or p.name.rsplit(".", 1)[-1] in _IGNORE:
            continue
        constant = s[0] == s[1]
        if not constant and p.name not in det:
            continue  # random init: nothing to compare
        jname = rename(p.name, mapping) or p.name
        q, jp = jstats.get(jname), jparams.get(jname)
        if q is None or jp is None or tuple(jp.shape) != tuple(p.shape):
            continue
        bound = INIT_RTOL * max(abs(s[0]), abs(s[1])) + 1e-12
        if any(abs(q[i] - s[i]) > bound for i in ((0, 1) if constant else (0, 1, 2, 3))):
            bad.append((p, s, q))
    if not bad:
        return []
    loc = place((p.module for p, _, _ in bad), torch)
    p0, s0, q0 = bad[0]
    names = [p.name for p, _, _ in bad]
    listed = names if len(names) <= 20 else names[:20] + [f"... {len(names) - 20} more"]
    example = f"{p0.name}: reference {_fmt_range(s0)}, port {_fmt_range(q0)}"
    return [Finding(
        FindingType.INIT_MISMATCH, Severity.ERROR, None, loc,
        f"{len(bad)} tensors of the freshly built port differ from the reference's deterministic "
        f"initialisation (checked before the weight transfer, which hides it from every other check), "
        f"e.g. {example}",
        {"count": len(bad), "params": listed,
         "examples": [{"name": p.name, "torch": s, "jittor": q} for p, s, q in bad[:5]],
         "stats": "[min, max, mean, std]", "rtol": INIT_RTOL},
        "the port initialises these tensors differently: a blanket re-initialisation after "
        "initialize_biases (prediction convs not zero, class bias not the prior), another default for BN "
        "weights/buffers, or a constant (DFL projection, strides) computed differently. This run copied the "
        "torch weights in, but training the port from its own initialisation starts elsewhere",
        f"新构建的移植版中有 {len(bad)} 个张量与参考实现的确定性初始化不同（在权重迁移之前检查，迁移会让其他检查都看不到它），"
        f"例如 {p0.name}：参考 {_fmt_range(s0)}，移植版 {_fmt_range(q0)}",
        "移植版对这些张量的初始化不同：在 initialize_biases 之后又整体重新初始化（预测卷积不为零、分类偏置不是先验值）、"
        "BN 权重/buffer 的默认值不同，或常量（DFL 投影、步长）计算方式不同。本次运行复制了 torch 权重，但移植版从自己的初始化开始训练会得到不同结果",
        torch.params.index(p0))]
