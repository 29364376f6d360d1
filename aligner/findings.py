"""Rules that turn comparisons and traces into typed :class:`Finding`s (per model state).

Pure functions: records in, findings out; no printing. State-independent structure checks
(parameter inventory, counts, modes, anchors) live in :mod:`aligner.inventory`, loss-side stages
(loss items, assigner, anchor points) in :mod:`aligner.stages`.
Every message exists in English and Chinese; evidence is JSON-able.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aligner.compare import Comparison, Divergence, StateComparison
from aligner.match import rename
from aligner.records import (FindingType, FrozenBy, GradStatus, ParamInfo, ParamKind, Severity,
                             Trace)
from aligner.tolerances import Kind

__all__ = ["Finding", "sort_findings", "divergence_findings", "nan_inf_findings",
           "shape_findings", "gradient_findings", "grad_pattern", "common_module", "place", "frozen_finding",
           "sparsity_finding", "VANISHING_RATIO"]

T, S = FindingType, Severity

# A port gradient this many times smaller than the reference's (both non-zero) is "vanishing".
VANISHING_RATIO = 1e-3
_MAX_LISTED = 20   # names listed in evidence before truncating

# Order of findings of equal severity, in causal order: structure and modes, then the forward pass,
# then the loss side (anchors -> assigner -> loss value), then the backward pass and gradient
# patterns. The first error is what a user should look at first.
_TYPE_RANK = {t: i for i, t in enumerate([
    T.WEIGHT_TRANSFER, T.MISSING_PARAMETER, T.EXTRA_PARAMETER, T.SHAPE_MISMATCH, T.PARAM_COUNT_DRIFT,
    T.INIT_MISMATCH, T.MODE_MISMATCH, T.NAN_INF, T.FORWARD_DIVERGENCE, T.ANCHOR_COUNT_DRIFT, T.ASSIGNER_MISMATCH,
    T.LOSS_DIVERGENCE, T.BACKWARD_DIVERGENCE, T.FROZEN_PARAMETER, T.UNREACHABLE_GRADIENT,
    T.GRADIENT_PATTERN, T.EXTRA_GRADIENT, T.VANISHING_GRADIENT, T.UNMATCHED_MODULE,
    T.GRAD_SPARSITY_EXPLAINED])}
_SEV_RANK = {S.ERROR: 0, S.WARNING: 1, S.INFO: 2}


@dataclass(frozen=True)
class Finding:
    """One typed finding (an entry of results.json ``findings``; the id is given at output time)."""
    type: FindingType
    severity: Severity
    state: str | None          # model state it comes from; None when state-independent
    location: str              # module path (torch name), parameter name, "anchors", "loss", ...
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    likely_cause: str = ""
    message_zh: str = ""
    likely_cause_zh: str = ""
    order: int = -1            # execution order / inventory index, for sorting only

    def to_dict(self, fid: str) -> dict[str, Any]:
        return {"id": fid, "type": self.type.value, "severity": self.severity.value,
                "state": self.state, "location": self.location, "message": self.message,
                "message_zh": self.message_zh or self.message, "evidence": self.evidence,
                "likely_cause": self.likely_cause, "likely_cause_zh": self.likely_cause_zh or self.likely_cause}


def sort_findings(findings: Iterable[Finding], states: list[str]) -> list[Finding]:
    """Severity, then type rank (causes before consequences), then state order, then position."""
    srank = {s: i for i, s in enumerate(states)}
    return sorted(findings, key=lambda f: (_SEV_RANK[f.severity], _TYPE_RANK.get(f.type, 99),
                                           srank.get(f.state or "", -1), f.order, f.location))


def common_module(names: Iterable[str]) -> str:
    """Longest common dotted prefix of module names ("" = the whole model)."""
    parts = [n.split(".") if n else [] for n in names]
    if not parts:
        return ""
    out = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return ".".join(out)


def place(affected: Iterable[str], trace: Trace, *, last: bool = False) -> str:
    """Where a finding about a group of modules points.

    Their common ancestor when the group is every parameter-owning module under it (e.g. all of the
    model after Jittor's eval()); otherwise the first affected module in the reference's execution
    order (``last``: the latest, e.g. the one closest to a graph break), so structure findings point at
    the same module a first divergence would.
    """
    names = sorted(set(affected))
    if not names:
        return ""
    lca = common_module(names)
    owners = {p.module for p in trace.params if p.kind == ParamKind.TRAINABLE}
    under = {m for m in owners if lca == "" or m == lca or m.startswith(lca + ".")}
    if len(names) == 1 or under <= set(names):
        return lca if len(names) > 1 else names[0]
    first: dict[str, int] = {}
    for c in trace.calls:
        first.setdefault(c.module, c.order)
    inv = {p.module: i for i, p in enumerate(trace.params)}

    def pos(m: str) -> tuple[int, int]:
        return (first.get(m, 10 ** 9), inv.get(m, 10 ** 9))

    return max(names, key=pos) if last else min(names, key=pos)


def _where(location: str) -> str:
    return "the whole model" if location == "" else location


def _where_zh(location: str) -> str:
    return "整个模型" if location == "" else location


def _listed(names: list[str]) -> list[str]:
    return names if len(names) <= _MAX_LISTED else names[:_MAX_LISTED] + [f"... {len(names) - _MAX_LISTED} more"]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.3g}" if math.isfinite(x) else str(x))


# ---------------------------------------------------------------------------------------------
# divergence, NaN/Inf, shapes


def _forward_cause(div: Divergence, row: Comparison | None, ctx: Mapping[str, Any]) -> tuple[str, str]:
    name = (div.location + " " + (row.module_type if row else "")).lower()
    img = ctx.get("img_size")
    modes = ctx.get("mode_locations", set())
    if div.location == "inputs":
        return ("the two frameworks were fed different inputs (seed, preprocessing or dtype conversion)",
                "两个框架的输入不同（随机种子、预处理或数据类型转换）")
    if any(div.location == m or div.location.startswith(m + ".") for m in modes if m):
        return ("a mode flag differs at this module (see the mode_mismatch finding: BN eps/momentum, "
                "training flag or dropout)", "该模块的模式参数不同（见 mode_mismatch：BN eps/momentum、训练标志或 dropout）")
    if any(k in name for k in ("pool", "fam", "fusion")):
        extra = f" at input size {img}" if img else ""
        return ("adaptive average pooling with a non-divisible size: Jittor's nn.AdaptiveAvgPool2d uses a "
                f"fixed kernel (onnx style), torch uses variable windows{extra}; use jt.nn.resize(mode='area') "
                "or torch's window formula, or an interpolation default (Jittor defaults to bilinear)",
                "非整除尺寸的自适应平均池化：Jittor 的 nn.AdaptiveAvgPool2d 使用固定卷积核（onnx 方式），torch 使用可变窗口；"
                "或插值默认模式不同（Jittor 默认 bilinear）")
    if "bn" in name.split(".")[-1] or "batchnorm" in name:
        return ("batch normalisation differs: eps/momentum of the wrong family, eval vs train statistics, "
                "or Jittor's E[x²]-E[x]² variance when |mean| >> std",
                "BatchNorm 不一致：eps/momentum 用错、训练/推理统计量不同，或 Jittor 以 E[x²]-E[x]² 计算方差时 |均值| 远大于标准差")
    if any(k in name for k in ("upsample", "interp", "resize")):
        return ("interpolation mode or coordinate convention differs (Jittor's interpolate defaults to bilinear)",
                "插值模式或坐标约定不同（Jittor 的 interpolate 默认 bilinear）")
    if any(k in name for k in ("attn", "attention")):
        return ("attention computed differently (scaling by 1/sqrt(d), softmax axis, head split order)",
                "注意力计算不同（1/sqrt(d) 缩放、softmax 维度或多头拆分顺序）")
    return (f"the port's forward of this module ({row.module_type if row else 'module'}) computes something "
            "different from the reference: compare the two implementations line by line (activation, "
            "branch, residual, split/concat order)",
            "移植版此模块的前向计算与参考实现不同：逐行对比两份实现（激活函数、分支、残差、split/concat 顺序）")


def divergence_findings(sc: StateComparison, ctx: Mapping[str, Any] | None = None) -> list[Finding]:
    """Forward and backward first divergences of one state, with counts of failing rows."""
    ctx = ctx or {}
    out = []
    rows_by = {(r.kind, r.order, r.sub): r for r in sc.rows}
    if sc.forward is not None:
        d = sc.forward
        row = rows_by.get((Kind.FORWARD, d.order, d.sub))
        n_fail = sum(1 for r in sc.rows if r.kind == Kind.FORWARD and not r.ok)
        cause, cause_zh = _forward_cause(d, row, ctx)
        out.append(Finding(
            T.FORWARD_DIVERGENCE, S.ERROR, sc.state, d.location,
            f"forward diverges first at {_where(d.location)}: {d.message}; {n_fail} forward outputs fail in total",
            _div_evidence(d, row, n_fail), cause,
            f"前向首次发散于 {_where_zh(d.location)}：{d.metric} = {_fmt(d.value)} 超过容差 {_fmt(d.tol)}；"
            f"共 {n_fail} 个前向输出超出容差", cause_zh, d.order))
    if sc.backward is not None:
        d = sc.backward
        where = {"": "the top-level model's forward (between its submodules)"}.get(d.location, d.location)
        where_zh = {"": "顶层模型自身的前向（子模块之间）"}.get(d.location, d.location)
        row = rows_by.get((Kind.BACKWARD, d.order, d.sub))
        n_fail = sum(1 for r in sc.rows if r.kind == Kind.BACKWARD and not r.ok)
        broken = row is not None and (row.missing == "jittor" or row.metrics.zero_frac_port == 1.0)
        if sc.forward is not None:
            cause = "a consequence of the forward divergence (fix that first)"
            cause_zh = "前向发散的后果（先修复前向问题）"
        elif d.location == "loss":
            cause = ("the loss cuts or changes the graph: a numpy round trip (jt.array(x.numpy())), .item(), "
                     "detach()/stop_grad, or a different loss formula")
            cause_zh = "损失函数截断或改变了计算图：numpy 往返（jt.array(x.numpy())）、.item()、detach()/stop_grad，或公式不同"
        elif broken:
            cause = (f"a graph break inside {where}: detach(), stop_grad(), jt.no_grad(), a numpy round "
                     "trip or an integer cast; the gradient does not reach the layers before it")
            cause_zh = (f"{where_zh} 内部计算图断开：detach()、stop_grad()、jt.no_grad()、numpy 往返或整型转换；"
                        "梯度无法到达其之前的层")
        else:
            cause = (f"the backward of {where} differs: an operation with a different gradient (e.g. a "
                     "clamp, a max, or a custom op) or a non-detached/detached weight")
            cause_zh = f"{where_zh} 的反向传播不同：某个操作的梯度不同（如 clamp、max 或自定义算子），或权重 detach 状态不同"
        out.append(Finding(
            T.BACKWARD_DIVERGENCE, S.ERROR, sc.state, d.location,
            f"backward diverges first at {where}: {d.message}; {n_fail} output gradients fail in total",
            {**_div_evidence(d, row, n_fail), "candidates": list(d.candidates), "graph_broken": broken},
            cause,
            f"反向首次发散于 {where_zh}：{d.torch_name} 输出的梯度 {d.metric} = {_fmt(d.value)} "
            f"超过容差 {_fmt(d.tol)}；共 {n_fail} 个输出梯度超出容差", cause_zh, -d.order))
    elif sc.forward is None and any(r.kind == Kind.PARAM_GRAD and not r.ok and r.missing is None
                                    for r in sc.rows):
        out.append(_param_grad_finding(sc, ctx))
    buf = _buffer_finding(sc, ctx)
    if buf is not None:
        out.append(buf)
    return out


def _buffer_finding(sc: StateComparison, ctx: Mapping[str, Any]) -> Finding | None:
    """Buffers (BN running statistics) that leave tolerance after the captured train-mode forward, in
    modules that ran before the first forward divergence (so their inputs agree): the update rule
    itself differs. Buffers of later modules may inherit a diverged input (a BN normalises a scale
    error away in its output, not in its running_var) and are only counted."""
    bad = [r for r in sc.rows if r.kind == Kind.PARAM and not r.ok and r.torch_key.startswith("buf/")]
    if not bad:
        return None
    first_call = ctx.get("first_call") or {}
    pmod = ctx.get("param_module") or {}
    modes = ctx.get("mode_locations", set())

    def module(r: Comparison) -> str:
        return pmod.get(r.torch_name, r.torch_name.rsplit(".", 1)[0] if "." in r.torch_name else "")

    limit = sc.forward.order if sc.forward is not None else None
    own = [r for r in bad if limit is None or first_call.get(module(r), 10 ** 9) < limit]
    if not own:
        return None
    r = min(own, key=lambda x: (first_call.get(module(x), 10 ** 9), x.order))
    mod, jd = module(r), r.judgement
    if any(m and (mod == m or mod.startswith(m + ".")) for m in modes):
        cause = ("a mode flag differs at this module (see the mode_mismatch finding: BN momentum or the "
                 "training flag)")
        cause_zh = "该模块的模式参数不同（见 mode_mismatch：BN momentum 或训练标志）"
    else:
        cause = ("the running statistics are updated differently: running_var from the biased batch variance "
                 "sum/n (Jittor's own BatchNorm) instead of torch's unbiased sum/(n-1), the momentum convention "
                 "(torch: running = (1-m)*running + m*batch; Keras writes 1-m), or an update in another mode. "
                 "The train-mode output is unaffected; eval-mode outputs and later steps drift")
        cause_zh = ("running 统计量的更新方式不同：running_var 用有偏批方差 sum/n（Jittor 自带 BatchNorm 的做法）而非 torch 的无偏 "
                    "sum/(n-1)、momentum 约定不同（torch：running = (1-m)*running + m*batch；Keras 写作 1-m），或在另一模式下更新。"
                    "训练模式输出不受影响；推理模式输出和后续训练步会漂移")
    return Finding(
        T.FORWARD_DIVERGENCE, S.ERROR, sc.state, r.torch_name,
        f"buffer {r.torch_name} leaves tolerance after the captured train-mode forward ({jd.metric} "
        f"{_fmt(jd.value)} > {_fmt(jd.bound)}) while the output of {_where(mod)} and everything before it "
        f"is within; {len(own)} buffers differ this way ({len(bad)} failing in total)",
        {"torch_name": r.torch_name, "jittor_name": r.jittor_name, "module": mod, "metric": jd.metric,
         "value": jd.value, "tol": jd.bound, "rel": r.metrics.rel, "max_abs": r.metrics.max_abs,
         "noise_floor": jd.noise_floor, "count": len(own), "failing_buffers": len(bad),
         "buffers": _listed([x.torch_name for x in own])},
        cause,
        f"训练模式前向之后 buffer {r.torch_name} 超出容差（{jd.metric} = {_fmt(jd.value)} 超过 {_fmt(jd.bound)}），"
        f"而 {_where_zh(mod)} 及其之前的输出都在容差内；共 {len(own)} 个 buffer 如此（总计 {len(bad)} 个超出容差）",
        cause_zh, first_call.get(mod, r.order))


def _param_grad_finding(sc: StateComparison, ctx: Mapping[str, Any]) -> Finding:
    """Parameter gradients out of tolerance while every module-output gradient is within: the
    weight-gradient computation itself differs. Blamed on the failing parameter closest to the loss."""
    # rows where one side has no gradient at all are gradient-pattern findings, not value divergences
    bad = [r for r in sc.rows if r.kind == Kind.PARAM_GRAD and not r.ok and r.missing is None]
    first_call = ctx.get("first_call") or {}
    pmod = ctx.get("param_module") or {}

    def pos(r: Comparison) -> int:
        mod = pmod.get(r.torch_name, r.torch_name.rsplit(".", 1)[0])
        return first_call.get(mod, r.order)

    r = max(bad, key=pos)
    loc = pmod.get(r.torch_name, r.torch_name.rsplit(".", 1)[0])
    jd = r.judgement
    return Finding(
        T.BACKWARD_DIVERGENCE, S.ERROR, sc.state, loc,
        f"{len(bad)} parameter gradients leave tolerance while the module-output gradients are within; "
        f"closest to the loss: {r.torch_name} ({jd.metric} {_fmt(jd.value)} > {_fmt(jd.bound)})",
        {"count": len(bad), "params": _listed([x.torch_name for x in bad]), "metric": jd.metric,
         "value": jd.value, "tol": jd.bound, "noise_floor": jd.noise_floor, "missing": r.missing},
        "the weight gradient of this module differs although the gradient reaching its output agrees: a "
        "parameter used differently in forward (e.g. detached, reparameterised, scaled) or a different "
        "gradient of an op that uses it",
        f"{len(bad)} 个参数梯度超出容差，而模块输出梯度都在容差内；最靠近损失的是 {r.torch_name}",
        "该模块的权重梯度不同而其输出梯度一致：参数在前向中的用法不同（被 detach、重参数化、缩放），或使用它的算子梯度不同",
        -10 ** 6)


def _div_evidence(d: Divergence, row: Comparison | None, n_fail: int) -> dict[str, Any]:
    ev: dict[str, Any] = {"torch_name": d.torch_name, "jittor_name": d.jittor_name, "sub": d.sub,
                          "metric": d.metric, "value": d.value, "tol": d.tol,
                          "introduced_ratio": d.introduced_ratio, "failing_rows": n_fail}
    if row is not None:
        m = row.metrics
        ev.update({"rel": m.rel, "max_abs": m.max_abs, "cosine": m.cosine, "noise_floor": row.judgement.noise_floor,
                   "shape_torch": list(m.shape_ref), "shape_jittor": list(m.shape_port),
                   "module_type": row.module_type, "missing": row.missing})
    return ev


def nan_inf_findings(sc: StateComparison) -> list[Finding]:
    """The first tensor (execution order) per kind where the port has NaN/Inf the reference lacks."""
    out = []
    for kind in (Kind.FORWARD, Kind.BACKWARD, Kind.PARAM_GRAD):
        rows = sorted((r for r in sc.rows if r.kind == kind and (r.metrics.nan_port or r.metrics.inf_port
                                                                 or r.metrics.nan_ref or r.metrics.inf_ref)),
                      key=lambda r: r.order if kind != Kind.BACKWARD else -r.order)
        if not rows:
            continue
        r = rows[0]
        m = r.metrics
        port_only = (m.nan_port > m.nan_ref) or (m.inf_port > m.inf_ref)
        sev = S.ERROR if port_only else S.WARNING
        who = "the port only" if port_only else "both frameworks"
        out.append(Finding(
            T.NAN_INF, sev, sc.state, r.torch_name,
            f"{kind.value} tensor of {r.torch_name} has NaN/Inf in {who} (torch NaN {m.nan_ref} Inf {m.inf_ref}, "
            f"jittor NaN {m.nan_port} Inf {m.inf_port}); {len(rows)} {kind.value} tensors affected",
            {"kind": kind.value, "nan_torch": m.nan_ref, "nan_jittor": m.nan_port, "inf_torch": m.inf_ref,
             "inf_jittor": m.inf_port, "affected": len(rows), "sub": r.sub},
            "log/sqrt/division of a non-positive value, an overflow, or a clamp missing in the port "
            "(torch's BCE clamps log at -100, Jittor's bce_loss clamps p at 1e-20)",
            f"{r.torch_name} 的{kind.value}张量出现 NaN/Inf（torch NaN {m.nan_ref} Inf {m.inf_ref}，"
            f"jittor NaN {m.nan_port} Inf {m.inf_port}）",
            "对非正数取 log/sqrt/除法、数值溢出，或移植版缺少截断（torch 的 BCE 将 log 截断在 -100）", r.order))
    return out


def shape_findings(sc: StateComparison) -> list[Finding]:
    """Module outputs whose shapes differ (first few, in execution order)."""
    rows = sorted((r for r in sc.rows if r.kind == Kind.FORWARD and not r.metrics.shape_ok),
                  key=lambda r: r.order)
    out = []
    for r in rows[:5]:
        st, sj = list(r.metrics.shape_ref), list(r.metrics.shape_port)
        out.append(Finding(
            T.SHAPE_MISMATCH, S.ERROR, sc.state, r.torch_name,
            f"output{'[' + r.sub + ']' if r.sub else ''} of {r.torch_name} has shape {sj} in the port, {st} in the reference",
            {"sub": r.sub, "shape_torch": st, "shape_jittor": sj, "affected": len(rows)},
            "channel widths, strides, padding or the output structure differ (e.g. widths scaled twice by "
            "the width multiplier, or a missing/extra output)",
            f"{r.torch_name} 的输出形状在移植版为 {sj}，参考实现为 {st}",
            "通道数、步长、padding 或输出结构不同（例如通道数被宽度系数重复缩放，或输出缺失/多余）", r.order))
    return out


# ---------------------------------------------------------------------------------------------
# gradients


def _trainable(trace: Trace) -> list[ParamInfo]:
    return [p for p in trace.params if p.kind == ParamKind.TRAINABLE and not p.shared_with]


def grad_pattern(torch: Trace, jittor: Trace, rows: list[Comparison] | None = None,
                 mapping: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Counts per gradient status over the reference's trainable tensors, both sides, per top module.

    ``same`` is True when every tensor has the same status on both sides, where a reference
    ``nonzero`` against a port ``zero`` (or the reverse) counts as the same when the value row
    passed (round-off of a mathematically zero gradient).
    """
    mapping = mapping or {}
    jp = {p.name: p for p in jittor.params}
    ok = {r.torch_name: r.ok for r in rows or [] if r.kind == Kind.PARAM_GRAD}
    keys = ("nonzero", "zero", "unreachable", "frozen")
    counts = {"torch": dict.fromkeys(keys, 0), "jittor": dict.fromkeys(keys, 0)}
    per_module: dict[str, dict[str, list[int]]] = {}
    same = True
    for p in _trainable(torch):
        q = jp.get(rename(p.name, mapping) or p.name)
        ts = p.grad_status
        js = q.grad_status if q is not None else GradStatus.NONE
        top = p.name.split(".")[0] if "." in p.name else ""
        pm = per_module.setdefault(top, {"torch": [0, 0, 0], "jittor": [0, 0, 0]})
        for side, s in (("torch", ts), ("jittor", js)):
            if s.value in counts[side]:
                counts[side][s.value] += 1
            idx = {"nonzero": 0, "zero": 1, "unreachable": 2}.get(s.value)
            if idx is not None:
                pm[side][idx] += 1
        if ts != js and not ({ts, js} == {GradStatus.NONZERO, GradStatus.ZERO} and ok.get(p.name, False)):
            same = False
    return {"torch": counts["torch"], "jittor": counts["jittor"], "same": same, "per_module": per_module}


_GRAD_TEXT = {
    T.UNREACHABLE_GRADIENT: (
        "{n} parameter tensors receive a gradient in the reference but are UNREACHABLE in the port "
        "(the graph from the loss to them is broken), e.g. {ex}",
        "{n} 个参数张量在参考实现中有梯度，但在移植版中不可达（从损失到它们的计算图断开），例如 {ex}",
        "a graph break (detach(), stop_grad(), numpy round trip, jt.no_grad(), requires_grad_(False) on a "
        "block) between these parameters and the loss; see the backward_divergence finding for where",
        "这些参数与损失之间的计算图断开（detach()、stop_grad()、numpy 往返、jt.no_grad()、对模块调用 requires_grad_(False)）；"
        "断点位置见 backward_divergence"),
    T.GRADIENT_PATTERN: (
        "{n} parameter tensors have a different gradient status in the port than in the reference at the "
        "same state (reference: {ts}, port: {js}), e.g. {ex}",
        "{n} 个参数张量在同一状态下的梯度状态与参考实现不同（参考：{ts}，移植版：{js}），例如 {ex}",
        "a zero gradient that is reachable in the reference but not in the port means the port's graph is "
        "broken; a non-zero reference gradient that is exactly zero in the port means a path is cut or "
        "multiplied by zero",
        "参考实现中可达的零梯度在移植版中不可达，说明移植版计算图断开；参考实现非零而移植版恰为零，说明某条路径被截断或乘以零"),
    T.EXTRA_GRADIENT: (
        "{n} parameter tensors receive a gradient in the port but not in the reference (reference: {ts}), e.g. {ex}",
        "{n} 个参数张量在移植版中有梯度而参考实现中没有（参考：{ts}），例如 {ex}",
        "a tensor that is frozen/constant in the reference is trainable in the port (Jittor treats every "
        "public Var attribute as a parameter; call stop_grad()), or a detach()/no_grad in the reference is missing",
        "参考实现中冻结/常量的张量在移植版中可训练（Jittor 把所有公开 Var 属性当作参数，需调用 stop_grad()），或缺少参考实现中的 detach()/no_grad"),
    T.VANISHING_GRADIENT: (
        "{n} parameter tensors have gradients more than 1000x smaller in the port than in the reference, e.g. {ex}",
        "{n} 个参数张量在移植版中的梯度比参考实现小 1000 倍以上，例如 {ex}",
        "a scale factor, normalisation or saturation differs upstream of these parameters",
        "这些参数上游的缩放系数、归一化或饱和行为不同"),
}


def gradient_findings(state: str, torch: Trace, jittor: Trace, rows: list[Comparison],
                      mapping: Mapping[str, str] | None = None) -> list[Finding]:
    """Gradient-pattern findings of one state, judged against the reference's own pattern there."""
    mapping = mapping or {}
    jp = {p.name: p for p in jittor.params}
    ok = {r.torch_name: r for r in rows if r.kind == Kind.PARAM_GRAD}
    groups: dict[tuple[FindingType, str], list[tuple[ParamInfo, ParamInfo]]] = {}
    for idx, p in enumerate(_trainable(torch)):
        q = jp.get(rename(p.name, mapping) or p.name)
        if q is None:
            continue  # missing parameter: an inventory finding
        ftype, sub = _classify(p, q, ok.get(p.name))
        if ftype is not None:
            groups.setdefault((ftype, sub), []).append((p, q))
    out = []
    for (ftype, sub), pairs in groups.items():
        names = [p.name for p, _ in pairs]
        # a cut graph starves everything before the cut: the latest starved module is nearest to it
        cut = ftype == T.UNREACHABLE_GRADIENT or sub in ("zero_vs_unreachable", "nonzero_vs_zero")
        loc = place((p.module for p, _ in pairs), torch, last=cut)
        ts = sorted({p.grad_status.value for p, _ in pairs})
        js = sorted({q.grad_status.value for _, q in pairs})
        ev = {"count": len(pairs), "params": _listed(names), "torch_status": ts, "jittor_status": js}
        if ftype == T.FROZEN_PARAMETER:
            continue  # a trainable-vs-frozen kind difference: reported once by the inventory check
        msg, msg_zh, cause, cause_zh = _GRAD_TEXT[ftype]
        ex = ", ".join(names[:3])
        fmt = {"n": len(pairs), "ex": ex, "ts": "/".join(ts), "js": "/".join(js)}
        out.append(Finding(ftype, S.ERROR, state, loc, msg.format(**fmt), ev, cause, msg_zh.format(**fmt),
                           cause_zh, min(torch.params.index(p) for p, _ in pairs)))
    return out


def _classify(p: ParamInfo, q: ParamInfo, row: Comparison | None) -> tuple[FindingType | None, str]:
    ts, js = p.grad_status, q.grad_status
    if ts == js:
        if ts == GradStatus.NONZERO and row is not None and p.grad_max_abs and q.grad_max_abs is not None \
                and not row.ok and q.grad_max_abs < VANISHING_RATIO * p.grad_max_abs:
            return T.VANISHING_GRADIENT, ""
        return None, ""
    within = row is not None and row.ok
    if js == GradStatus.FROZEN and ts in (GradStatus.NONZERO, GradStatus.ZERO, GradStatus.UNREACHABLE):
        return T.FROZEN_PARAMETER, (q.frozen_by.value if q.frozen_by else "stop_grad")
    if js == GradStatus.UNREACHABLE and ts == GradStatus.NONZERO:
        return T.UNREACHABLE_GRADIENT, ""
    if js == GradStatus.UNREACHABLE and ts == GradStatus.ZERO:
        return T.GRADIENT_PATTERN, "zero_vs_unreachable"
    if js == GradStatus.ZERO and ts == GradStatus.NONZERO:
        return (None, "") if within else (T.GRADIENT_PATTERN, "nonzero_vs_zero")
    if js == GradStatus.NONZERO and ts in (GradStatus.ZERO, GradStatus.UNREACHABLE, GradStatus.FROZEN,
                                           GradStatus.NONE):
        return (None, "") if within else (T.EXTRA_GRADIENT, "")
    if js == GradStatus.ZERO and ts == GradStatus.UNREACHABLE:
        return T.GRADIENT_PATTERN, "unreachable_vs_zero"
    if js == GradStatus.NONE and ts != GradStatus.NONE:
        return T.GRADIENT_PATTERN, "no_grad"
    return None, ""


def frozen_finding(state: str, loc: str, pairs: list[tuple[ParamInfo, ParamInfo]],
                    ev: dict[str, Any], by: str) -> Finding:
    n = len(pairs)
    ev = {**ev, "frozen_by": by}
    if by == FrozenBy.EVAL.value:
        cause = ("Jittor's Module.eval() calls stop_grad() on every parameter (restored only by train()); "
                 "a gradient pass after eval() gets no parameter gradients. Set m.is_train = False on the "
                 "modules instead, or call train() before the backward")
        cause_zh = ("Jittor 的 Module.eval() 会对每个参数调用 stop_grad()（只有 train() 会恢复）；eval() 之后做反向传播"
                    "得不到参数梯度。应改为对模块设置 m.is_train = False，或在反向前调用 train()")
    elif by == FrozenBy.REQUIRES_GRAD.value:
        cause, cause_zh = ("requires_grad=False on tensors the reference trains",
                           "参考实现中训练的张量被设置为 requires_grad=False")
    else:
        cause = ("stop_grad() (in-place in Jittor: w2 = w.stop_grad() freezes w itself) or requires_grad=False "
                 "on tensors the reference trains")
        cause_zh = "对参考实现中训练的张量调用了 stop_grad()（Jittor 中是原地操作：w2 = w.stop_grad() 会冻结 w 本身）或 requires_grad=False"
    return Finding(T.FROZEN_PARAMETER, S.ERROR, state, loc,
                   f"{n} parameter tensors are trainable in the reference but frozen in the port "
                   f"({by}) at {_where(loc)}, e.g. {', '.join(p.name for p, _ in pairs[:3])}",
                   ev, cause, f"{n} 个参数张量在参考实现中可训练，但在移植版中被冻结（{by}），位置 {_where_zh(loc)}",
                   cause_zh, -1)


def sparsity_finding(state: str, torch: Trace, pattern: Mapping[str, Any]) -> Finding | None:
    """Info: both frameworks give the same sparse gradient pattern, with the reason when visible.

    The reason looked for: trainable *weights* (not biases: a zero bias blocks nothing) that are all
    zero yet get a gradient, i.e. multiplicative gates that stop every gradient flowing through them.
    """
    if not pattern.get("same"):
        return None
    tc = pattern["torch"]
    total = sum(tc.values())
    nz = tc["nonzero"]
    if total == 0 or nz >= total:
        return None
    trainable = _trainable(torch)
    zero_init = [p.name for p in trainable if p.grad_status == GradStatus.NONZERO
                 and not p.name.endswith("bias") and _all_zero(torch, p.name)]
    zero_grad = [p.name for p in trainable if p.grad_status != GradStatus.NONZERO]
    if zero_init:
        why = (f"the weights {', '.join(zero_init[:6])}{' ...' if len(zero_init) > 6 else ''} are "
               "zero-initialised, so no gradient passes through them to the layers before; this is expected "
               "at this state (and a graph break upstream would be invisible here: check a perturbed state)")
        why_zh = (f"权重 {', '.join(zero_init[:6])} 初始化为零，梯度无法穿过它们到达之前的层；这在该状态下是预期行为"
                  "（上游的计算图断开在此状态下也看不出来，请检查扰动后的状态）")
    else:
        why = ("the zero gradients are reachable (not a graph break) and identical in both frameworks, e.g. "
               f"{', '.join(zero_grad[:4])} (a branch with no loss contribution here, such as a detection "
               "level without positive anchors)")
        why_zh = f"这些零梯度是可达的（不是计算图断开），且两个框架完全一致，例如 {', '.join(zero_grad[:4])}"
    kind = "prediction convolutions" if any("pred" in n for n in zero_init) else \
        ("zero-initialised weights" if zero_init else "reachable zero gradients")
    if nz * 2 < total:
        head = f"only {nz} of {total} parameter tensors receive a gradient in both frameworks"
        head_zh = f"两个框架中都只有 {total} 个参数张量中的 {nz} 个得到梯度"
    else:
        head = (f"{total - nz} of {total} parameter tensors get no gradient, identically in both "
                "frameworks")
        head_zh = f"{total} 个参数张量中有 {total - nz} 个没有梯度，两个框架完全一致"
    return Finding(
        T.GRAD_SPARSITY_EXPLAINED, S.INFO, state, "",
        f"{head}: {why}",
        {"nonzero": nz, "total": total, "zero_initialised": zero_init, "zero_gradient": zero_grad[:50],
         "explained_by": kind},
        why, f"{head_zh}：{why_zh}", why_zh, 10 ** 9)


def _all_zero(trace: Trace, name: str) -> bool:
    st = trace.stat(f"param/{name}")
    return st is not None and st.zero_frac == 1.0
