"""State-independent structure checks: parameter inventory, per-module counts, modes, anchors.

Counts come from the parameter inventory, summed from the root down with each tensor object counted
once (tied weights), never from per-module totals; ``num_batches_tracked`` is left out on both sides
(Jittor has none). Jittor's ``parameters()`` also returns buffers; the capture adapters classify them,
so counts here compare like with like: trainable, frozen, buffers.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aligner.compare import Comparison
from aligner.findings import Finding, common_module, frozen_finding, place
from aligner.initcheck import init_findings
from aligner.match import MatchResult, rename
from aligner.records import FindingType, ModuleInfo, ParamInfo, ParamKind, Severity, Trace
from aligner.tolerances import Kind

__all__ = ["param_counts", "params_block", "modules_block", "inventory_findings",
           "count_drift_findings", "mode_findings", "anchors_block", "anchor_findings",
           "expected_anchors", "transfer_findings", "unmatched_findings"]

T, S = FindingType, Severity
_SKIP_SUFFIX = ".num_batches_tracked"


def _counted(p: ParamInfo) -> bool:
    return not p.shared_with and not p.name.endswith(_SKIP_SUFFIX) and p.name != "num_batches_tracked"


def _ancestors(module: str) -> list[str]:
    parts = module.split(".") if module else []
    return [""] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def param_counts(trace: Trace) -> dict[str, dict[str, int]]:
    """module name -> {"trainable", "frozen", "buffers", "constants"} numel over its subtree."""
    out: dict[str, dict[str, int]] = {m.name: {"trainable": 0, "frozen": 0, "buffers": 0, "constants": 0}
                                      for m in trace.modules}
    key = {ParamKind.TRAINABLE: "trainable", ParamKind.FROZEN: "frozen", ParamKind.BUFFER: "buffers",
           ParamKind.CONSTANT: "constants"}
    for p in trace.params:
        if not _counted(p):
            continue
        for a in _ancestors(p.module):
            out.setdefault(a, {"trainable": 0, "frozen": 0, "buffers": 0, "constants": 0})[key[p.kind]] += p.numel
    return out


def _side_block(trace: Trace) -> dict[str, Any]:
    counts = param_counts(trace)
    root = counts.get("", {"trainable": 0, "frozen": 0, "buffers": 0, "constants": 0})
    tops = sorted({p.module.split(".")[0] for p in trace.params if p.module} |
                  {m.name for m in trace.modules if m.depth == 1})
    return {"trainable": root["trainable"],
            "trainable_tensors": sum(1 for p in trace.params if _counted(p) and p.kind == ParamKind.TRAINABLE),
            "buffers": root["buffers"], "frozen": root["frozen"], "constants": root["constants"],
            "modules": {t: {"trainable": counts.get(t, {}).get("trainable", 0),
                            "buffers": counts.get(t, {}).get("buffers", 0)} for t in tops}}


def params_block(torch: Trace, jittor: Trace, grad_patterns: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params`` section of results.json."""
    return {"torch": _side_block(torch), "jittor": _side_block(jittor), "grad_pattern": dict(grad_patterns)}


def modules_block(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``modules`` section: every module with both sides' subtree counts."""
    ct, cj = param_counts(torch), param_counts(jittor)
    jnames = {m.name for m in jittor.modules}
    out = []
    for m in torch.modules:
        jn = rename(m.name, mapping) or m.name
        a = ct.get(m.name)
        b = cj.get(jn) if jn in jnames else None
        row_t = {"trainable": a["trainable"], "buffers": a["buffers"]} if a else None
        row_j = {"trainable": b["trainable"], "buffers": b["buffers"]} if b else None
        out.append({"name": m.name, "type": m.type, "depth": m.depth, "torch": row_t, "jittor": row_j,
                    "ok": row_t == row_j})
    tmapped = {rename(m.name, mapping) or m.name for m in torch.modules}
    for m in jittor.modules:
        if m.name not in tmapped:
            b = cj.get(m.name, {})
            out.append({"name": m.name, "type": m.type, "depth": m.depth, "torch": None,
                        "jittor": {"trainable": b.get("trainable", 0), "buffers": b.get("buffers", 0)},
                        "ok": False})
    return out


def _group(names: list[str]) -> dict[str, list[str]]:
    """Group dotted names by top-level module."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(n.split(".")[0] if "." in n else "", []).append(n)
    return out


def _listed(names: list[str], k: int = 20) -> list[str]:
    return names if len(names) <= k else names[:k] + [f"... {len(names) - k} more"]


def inventory_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[Finding]:
    """Missing, extra, shape-mismatched and kind-mismatched parameters/buffers, and tensors whose fresh
    initial values differ from the reference's deterministic init (:mod:`aligner.initcheck`)."""
    jp = {p.name: p for p in jittor.params if _counted(p)}
    seen: set[str] = set()
    missing, shape, kind = [], [], []
    for idx, p in enumerate(torch.params):
        if not _counted(p) or p.kind == ParamKind.CONSTANT:
            continue
        jn = rename(p.name, mapping) or p.name
        q = jp.get(jn)
        if q is None:
            missing.append(p)
            continue
        seen.add(jn)
        if tuple(p.shape) != tuple(q.shape):
            shape.append((p, q))
        elif p.kind != q.kind and not (p.kind == ParamKind.BUFFER and q.kind == ParamKind.FROZEN):
            kind.append((p, q))
    extra = [q for q in jittor.params if _counted(q) and q.name not in seen and q.kind != ParamKind.CONSTANT
             and not (q.kind == ParamKind.BUFFER and any(rename(p.name, mapping) == q.name for p in torch.params))]
    out = []
    for top, group in _group([p.name for p in missing]).items():
        ps = [p for p in missing if p.name in set(group)]
        loc = place((p.module for p in ps), torch)
        n = sum(p.numel for p in ps)
        out.append(Finding(T.MISSING_PARAMETER, S.ERROR, None, loc,
                           f"{len(ps)} tensors ({n} elements) of the reference are missing in the port under "
                           f"{loc or 'the model'}, e.g. {', '.join(p.name for p in ps[:3])}",
                           {"count": len(ps), "numel": n, "names": _listed([p.name for p in ps])},
                           "a module or parameter not ported, renamed, or hidden from Jittor's parameter walk "
                           "(Python list/dict, attribute of an nn.Sequential, '_'-prefixed name)",
                           f"参考实现中 {len(ps)} 个张量（{n} 个元素）在移植版中缺失，位置 {loc or '模型'}",
                           "模块或参数未移植、被重命名，或未被 Jittor 的参数遍历发现（Python list/dict、nn.Sequential 的属性、以 '_' 开头的名字）",
                           torch.params.index(ps[0])))
    for top, group in _group([q.name for q in extra]).items():
        qs = [q for q in extra if q.name in set(group)]
        loc = place((q.module for q in qs), jittor)
        n = sum(q.numel for q in qs)
        trainable = sum(1 for q in qs if q.kind == ParamKind.TRAINABLE)
        out.append(Finding(T.EXTRA_PARAMETER, S.ERROR if trainable else S.WARNING, None, loc,
                           f"{len(qs)} tensors ({n} elements, {trainable} trainable) exist only in the port under "
                           f"{loc or 'the model'}, e.g. {', '.join(q.name for q in qs[:3])}",
                           {"count": len(qs), "numel": n, "trainable": trainable,
                            "names": _listed([q.name for q in qs])},
                           "an extra module, or a plain tensor attribute that Jittor treats as a trainable "
                           "parameter (call stop_grad() or prefix the name with '_')",
                           f"{len(qs)} 个张量（{n} 个元素，{trainable} 个可训练）只存在于移植版，位置 {loc or '模型'}",
                           "多余的模块，或被 Jittor 当作可训练参数的普通张量属性（调用 stop_grad() 或以 '_' 开头命名）",
                           10 ** 6))
    if shape:
        loc = place((p.module for p, _ in shape), torch)
        out.append(Finding(T.SHAPE_MISMATCH, S.ERROR, None, loc,
                           f"{len(shape)} parameter tensors have different shapes under {loc or 'the model'}, e.g. "
                           f"{shape[0][0].name}: torch {list(shape[0][0].shape)}, jittor {list(shape[0][1].shape)}",
                           {"count": len(shape), "params": _listed([p.name for p, _ in shape]),
                            "first": {"name": shape[0][0].name, "torch": list(shape[0][0].shape),
                                      "jittor": list(shape[0][1].shape)}},
                           "channel widths or kernel sizes differ (e.g. widths scaled twice by the width "
                           "multiplier, or an absolute extra_cfg dim treated as relative)",
                           f"{len(shape)} 个参数张量形状不同，位置 {loc or '模型'}",
                           "通道数或卷积核尺寸不同（例如通道数被宽度系数重复缩放，或把 extra_cfg 中的绝对维度当成相对值）",
                           torch.params.index(shape[0][0])))
    groups: dict[tuple[str, str, str], list[tuple[ParamInfo, ParamInfo]]] = {}
    for p, q in kind:
        by = q.frozen_by.value if (q.kind == ParamKind.FROZEN and q.frozen_by) else ""
        groups.setdefault((p.kind.value, q.kind.value, by), []).append((p, q))
    for (tk, jk, by), pairs in groups.items():
        loc = place((p.module for p, _ in pairs), torch) if len(pairs) > 1 else pairs[0][0].name
        order = torch.params.index(pairs[0][0])
        if tk == ParamKind.TRAINABLE and jk == ParamKind.FROZEN:
            f = frozen_finding(None, loc, pairs, {"count": len(pairs), "params": _listed([p.name for p, _ in pairs]),
                                                   "torch_kind": tk, "jittor_kind": jk}, by or "stop_grad")
            out.append(replace(f, order=order))
            continue
        sev = S.ERROR if ParamKind.TRAINABLE in (tk, jk) else S.WARNING
        ftype = T.EXTRA_PARAMETER if jk == ParamKind.TRAINABLE else T.FROZEN_PARAMETER
        names = [p.name for p, _ in pairs]
        out.append(Finding(ftype, sev, None, loc,
                           f"{len(pairs)} tensors are {tk} in the reference but {jk} in the port, e.g. {', '.join(names[:3])}",
                           {"torch_kind": tk, "jittor_kind": jk, "count": len(pairs), "params": _listed(names),
                            "numel": sum(p.numel for p, _ in pairs)},
                           "Jittor makes every public Var attribute a trainable parameter; buffers and constants "
                           "need stop_grad() (or a '_' name); a trainable constant is changed by the optimizer",
                           f"{len(pairs)} 个张量在参考实现中为 {tk}，在移植版中为 {jk}，例如 {', '.join(names[:3])}",
                           "Jittor 把所有公开 Var 属性当作可训练参数；buffer 和常量需要 stop_grad()（或以 '_' 命名），否则会被优化器修改",
                           order))
    # the port's own initial values (before the transfer overwrote them) belong to its inventory too
    return out + init_findings(torch, jittor, mapping)


_ZERO = {"trainable": 0, "frozen": 0, "buffers": 0, "constants": 0}


def _params(c: Mapping[str, int]) -> int:
    """Parameter elements, trainable or frozen: freezing is a mode problem (frozen_parameter), not a
    count drift."""
    return c.get("trainable", 0) + c.get("frozen", 0)


def count_drift_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[Finding]:
    """Per-module trainable/buffer count drift, reported where it originates (grouped per top module)."""
    ct, cj = param_counts(torch), param_counts(jittor)
    jnames = {m.name for m in jittor.modules} | set(cj)
    children: dict[str, list[str]] = {}
    for name in ct:
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            children.setdefault(parent, []).append(name)

    def drift(name: str) -> tuple[int, int] | None:
        jn = rename(name, mapping) or name
        if jn not in jnames:
            return None
        a, b = ct[name], cj.get(jn, _ZERO)
        return _params(b) - _params(a), b["buffers"] - a["buffers"]

    origins = []
    for name in ct:
        d = drift(name)
        if d is None or d == (0, 0):
            continue
        kids = [drift(c) for c in children.get(name, [])]
        explained = tuple(sum(k[i] for k in kids if k is not None) for i in range(2))
        if explained != d or any(k is None for k in kids):
            origins.append(name)
    out = []
    order = {m.name: i for i, m in enumerate(torch.modules)}
    for top, names in _group(origins).items():
        scope = common_module(names)
        loc = place(names, torch)
        d = drift(scope) or (0, 0)
        a = ct.get(scope, _ZERO)
        b = cj.get(rename(scope, mapping) or scope, _ZERO)
        out.append(Finding(
            T.PARAM_COUNT_DRIFT, S.ERROR, None, loc,
            f"{scope or 'the model'} has {_params(b):,} parameter / {b['buffers']:,} buffer elements in the port "
            f"vs {_params(a):,} / {a['buffers']:,} in the reference (drift {d[0]:+,} / {d[1]:+,}), "
            f"originating in {len(names)} module(s), first {loc or 'the model'}",
            {"torch": {"params": _params(a), "trainable": a["trainable"], "buffers": a["buffers"]},
             "jittor": {"params": _params(b), "trainable": b["trainable"], "buffers": b["buffers"]},
             "drift_params": d[0], "drift_trainable": b["trainable"] - a["trainable"], "drift_buffers": d[1],
             "scope": scope, "origins": _listed(sorted(names, key=lambda n: order.get(n, 0)))},
            "different channel widths, depths (repeats) or extra/missing layers; buffers drift when BN layers "
            "are added/removed or running stats are registered differently",
            f"{loc or '模型'} 在移植版中有 {_params(b):,} 个参数 / {b['buffers']:,} 个 buffer 元素，"
            f"参考实现为 {_params(a):,} / {a['buffers']:,}（差 {d[0]:+,} / {d[1]:+,}）",
            "通道数、深度（重复次数）不同或层多余/缺失；BN 层增减或 running stats 注册方式不同会导致 buffer 数量变化",
            order.get(loc, 0)))
    return out


def _first_call_order(trace: Trace) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in trace.calls:
        out.setdefault(c.module, c.order)
    return out


def mode_findings(torch: Trace, jittor: Trace, mapping: Mapping[str, str]) -> list[Finding]:
    """Training flags, BN eps/momentum, dropout/drop-path rates that differ, one finding per flag."""
    jm = {m.name: m for m in jittor.modules}
    diffs: dict[str, list[tuple[ModuleInfo, Any, Any]]] = {}
    for m in torch.modules:
        q = jm.get(rename(m.name, mapping) or m.name)
        if q is None:
            continue
        if m.training != q.training:
            diffs.setdefault("training", []).append((m, m.training, q.training))
        for key in sorted(set(m.flags) | set(q.flags)):
            a, b = m.flags.get(key), q.flags.get(key)
            if not _same_flag(a, b):
                diffs.setdefault(key, []).append((m, a, b))
    first = _first_call_order(torch)
    out = []
    for key, items in diffs.items():
        names = [m.name for m, _, _ in items]
        lca = common_module(names)
        with_key = [m.name for m in torch.modules
                    if (m.name == lca or lca == "" or m.name.startswith(lca + "."))
                    and (key == "training" or key in m.flags)]
        items.sort(key=lambda it: first.get(it[0].name, 10 ** 9))
        loc = lca if set(names) >= set(with_key) else items[0][0].name
        m0, a0, b0 = items[0]
        out.append(Finding(
            T.MODE_MISMATCH, S.ERROR, None, loc,
            f"{key} differs in {len(items)} module(s) at {loc or 'the whole model'}: torch {a0!r}, jittor {b0!r}"
            f" (first: {m0.name or 'root'})",
            {"flag": key, "count": len(items), "first": m0.name, "torch": _plain(a0), "jittor": _plain(b0),
             "modules": _listed(names)},
            _MODE_CAUSE.get(key, _MODE_CAUSE["_"])[0],
            f"{len(items)} 个模块的 {key} 不同（位置 {loc or '整个模型'}）：torch {a0!r}，jittor {b0!r}",
            _MODE_CAUSE.get(key, _MODE_CAUSE["_"])[1], first.get(m0.name, -1)))
    return out


_MODE_CAUSE = {
    "training": ("a model/submodule left in eval mode (in Jittor, eval() also stop_grads every parameter) "
                 "or train() not called", "模型或子模块处于 eval 模式（Jittor 的 eval() 还会对所有参数 stop_grad），或未调用 train()"),
    "bn_eps": ("BatchNorm eps of the wrong family: GOLD-YOLO uses 1e-3 (nn.BatchNorm2d after initialize_weights) "
               "and 1e-5 (SyncBN in Conv2d_BN / Inject ConvModule); Jittor's default is 1e-5",
               "BatchNorm eps 用错：GOLD-YOLO 中 nn.BatchNorm2d 为 1e-3（initialize_weights 之后），SyncBN 为 1e-5；Jittor 默认 1e-5"),
    "bn_momentum": ("BatchNorm momentum of the wrong family (0.03 vs 0.1)", "BatchNorm momentum 用错（0.03 与 0.1）"),
    "_": ("dropout / drop-path rate or another mode flag differs; compare in a deterministic mode",
          "dropout / drop-path 比例或其他模式参数不同；请在确定性模式下比较"),
}


def _same_flag(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def expected_anchors(img_size: int | Iterable[int], strides: Iterable[int]) -> list[dict[str, int]]:
    """Per level h = ceil(H/s), w = ceil(W/s) (3x3/s2/p1 convs: out = ceil(in/2) at every halving)."""
    hw = [int(img_size)] * 2 if isinstance(img_size, (int, float)) else [int(x) for x in img_size]
    return [{"stride": int(s), "h": math.ceil(hw[0] / s), "w": math.ceil(hw[1] / s),
             "expected": math.ceil(hw[0] / s) * math.ceil(hw[1] / s)} for s in strides]


def anchors_block(torch: Trace, jittor: Trace) -> dict[str, Any] | None:
    """The ``anchors`` section, from each side's ``anchors`` stage summary."""
    at, aj = torch.stages.get("anchors"), jittor.stages.get("anchors")
    if not at and not aj:
        return None
    at, aj = at or {}, aj or {}
    cfg = torch.meta.get("config") or {}
    img = at.get("img_size") or cfg.get("img_size")
    strides = at.get("strides") or aj.get("strides") or cfg.get("strides") or [8, 16, 32]
    levels = expected_anchors(img, strides) if img else []
    got_t = [lv.get("count") for lv in at.get("levels") or []] or list(at.get("n_per_level") or [])
    got_j = [lv.get("count") for lv in aj.get("levels") or []] or list(aj.get("n_per_level") or [])
    for i, lv in enumerate(levels):
        lv["count"] = got_t[i] if i < len(got_t) else None
        lv["count_jittor"] = got_j[i] if i < len(got_j) else None
    return {"img_size": img, "strides": list(strides), "levels": levels,
            "expected": sum(lv["expected"] for lv in levels) if levels else None,
            "torch": at.get("count"), "jittor": aj.get("count")}


def anchor_findings(block: dict[str, Any] | None) -> list[Finding]:
    """Each side's anchor count against sum(ceil(S/stride)^2), with the explanation of the number."""
    if not block or block.get("expected") is None:
        return []
    exp, img = block["expected"], block["img_size"]
    terms = " + ".join(f"{lv['h']}x{lv['w']}" for lv in block["levels"])
    nums = " + ".join(str(lv["expected"]) for lv in block["levels"])
    explain = (f"at {img}x{img} with strides {block['strides']} the grid per level is ceil(S/stride) "
               f"(each 3x3 stride-2 conv gives ceil(in/2)), so {terms} = {nums} = {exp} anchors "
               "(320 -> 2100, 500 -> 5249, 640 -> 8400)")
    out = []
    for side in ("jittor", "torch"):
        n = block.get(side)
        if n is None or n == exp:
            continue
        hint = ""
        for size in (320, 416, 512, 640):
            if sum(lv["expected"] for lv in expected_anchors(size, block["strides"])) == n:
                hint = f"; {n} is the count for {size}x{size}, so that side used another input size or feature maps"
        sev = S.ERROR if side == "jittor" or block.get("jittor") != n else S.WARNING
        out.append(Finding(
            T.ANCHOR_COUNT_DRIFT, sev, None, "anchors",
            f"{side} generates {n} anchors, expected {exp}: {explain}{hint}",
            {"side": side, "count": n, "expected": exp, "torch": block.get("torch"), "jittor": block.get("jittor"),
             "levels": block["levels"]},
            "anchors generated from the wrong feature-map sizes or strides, a hard-coded input size, floor "
            "instead of ceil in the stride-2 output size, or ori_img_size not equal to the real input size",
            f"{side} 生成了 {n} 个 anchor，应为 {exp}：每层网格为 ceil(S/stride)，{terms} = {nums} = {exp}",
            "anchor 由错误的特征图尺寸或步长生成、输入尺寸写死、步长 2 卷积的输出尺寸用 floor 而非 ceil，或 ori_img_size 与实际输入不符",
            0))
    return out


def transfer_findings(rows: list[Comparison], torch: Trace, jittor: Trace) -> list[Finding]:
    """Weights whose values differ between the frameworks after the transfer: failing parameter value
    rows, plus the value/dtype problems the capture recorded in ``meta["weight_transfer"]`` (its
    missing/extra/shape problems are reported more precisely by :func:`inventory_findings`)."""
    # buffer rows (``buf/``: values after the forward) are forward-side findings, not transfer problems
    bad = [r for r in rows if r.kind == Kind.PARAM and not r.ok and r.metrics.shape_ok
           and not r.torch_key.startswith("buf/")]
    problems = [w for w in list(jittor.meta.get("weight_transfer") or []) + list(torch.meta.get("weight_transfer") or [])
                if isinstance(w, Mapping) and str(w.get("kind")) in ("value", "dtype")]
    names = list(dict.fromkeys([r.torch_name for r in bad] + [str(w.get("name")) for w in problems]))
    if not names:
        return []
    pmod = {p.name: p.module for p in torch.params}
    loc = place((pmod.get(n, n) for n in names), torch)
    worst = max((r.metrics.rel for r in bad), default=0.0)
    first = problems[0].get("message") if problems else None
    return [Finding(
        T.WEIGHT_TRANSFER, S.ERROR, rows[0].state if rows else None, loc,
        f"{len(names)} tensors differ between the frameworks after the weight transfer (worst rel {worst:.3g})"
        + (f"; capture reported: {first}" if first else ""),
        {"count": len(names), "params": _listed(names), "worst_rel": worst, "capture_problems": problems[:20]},
        "Jittor's load_state_dict/load_parameters does not raise: missing keys keep their random init, shape "
        "mismatches are skipped with a log line; a dtype conversion on load; or a parameter object was "
        "replaced (re-initialised) after loading",
        f"权重迁移后 {len(names)} 个张量在两个框架间不同（最大相对误差 {worst:.3g}）",
        "Jittor 的 load_state_dict/load_parameters 不会报错：缺失的键保留随机初始化，形状不符的被跳过；加载时发生类型转换；或加载后参数对象被替换（重新初始化）",
        -1)]


def unmatched_findings(result: MatchResult) -> list[Finding]:
    out = []
    for side, calls in (("torch", result.unmatched_torch), ("jittor", result.unmatched_jittor)):
        if not calls:
            continue
        labels = [c.label for c in calls]
        out.append(Finding(
            T.UNMATCHED_MODULE, S.WARNING, None, common_module(c.module for c in calls),
            f"{len(calls)} {side} module calls have no partner in the other framework, e.g. {', '.join(labels[:3])}",
            {"side": side, "count": len(calls), "modules": _listed(labels)},
            "a module renamed, added or removed, or a functional op in one framework that is a module in the "
            "other; pass a mapping {torch_name: jittor_name} to pair renamed modules",
            f"{len(calls)} 个 {side} 模块调用在另一框架中找不到对应，例如 {', '.join(labels[:3])}",
            "模块被重命名、增加或删除，或一方用函数式操作而另一方用模块；可传入映射 {torch_name: jittor_name}",
            10 ** 7))
    return out
