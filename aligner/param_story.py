"""The port's parameter story: its trainable tensors, buffers and element counts against the reference's,
with the extra and missing tensors grouped by module, in one English and one Chinese sentence.

Pure: it reads two parameter inventories (:class:`~aligner.records.ParamInfo`, as the adapters' ``inventory``
returns them) and a ``{torch_name: jittor_name}`` map (module keys rename their subtree, as in
:func:`aligner.match.rename`). Counting follows :func:`aligner.inventory.counted`: each tensor object once,
no torch-only bookkeeping, no plain tensor constants.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aligner.inventory import counted
from aligner.match import rename
from aligner.records import ModuleInfo, ParamInfo, ParamKind

__all__ = ["SideCounts", "TensorGroup", "ParamStory", "side_counts", "param_story"]


@dataclass(frozen=True)
class SideCounts:
    trainable_tensors: int
    frozen_tensors: int
    buffer_tensors: int
    trainable_numel: int
    frozen_numel: int
    buffer_numel: int


@dataclass(frozen=True)
class TensorGroup:
    """Tensors of one side without a partner, under their deepest common module."""
    module: str                      # "" for the root
    names: tuple[str, ...]
    kinds: Mapping[str, int]         # ParamKind value -> tensor count
    numel: int
    detail: str                      # e.g. "24 × bias of Conv"

    @property
    def trainable(self) -> int:
        return self.kinds.get(ParamKind.TRAINABLE.value, 0)


@dataclass(frozen=True)
class ParamStory:
    torch: SideCounts
    jittor: SideCounts
    extra: tuple[TensorGroup, ...]      # in the port only
    missing: tuple[TensorGroup, ...]    # in the reference only
    reshaped: tuple[tuple[str, str, tuple[int, ...], tuple[int, ...]], ...]  # torch, jittor, shapes
    sentence_en: str
    sentence_zh: str


def side_counts(params: Iterable[ParamInfo]) -> SideCounts:
    n: Counter[ParamKind] = Counter()
    e: Counter[ParamKind] = Counter()
    for p in params:
        if counted(p) and p.kind != ParamKind.CONSTANT:
            n[p.kind] += 1
            e[p.kind] += p.numel
    return SideCounts(n[ParamKind.TRAINABLE], n[ParamKind.FROZEN], n[ParamKind.BUFFER],
                      e[ParamKind.TRAINABLE], e[ParamKind.FROZEN], e[ParamKind.BUFFER])


def _common_module(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for segs in zip(*parts):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return ".".join(common)


def _groups(params: list[ParamInfo], types: Mapping[str, str]) -> tuple[TensorGroup, ...]:
    """Group by top-level module (model order), each named by its tensors' deepest common module."""
    by_top: dict[str, list[ParamInfo]] = {}
    for p in params:
        by_top.setdefault(p.name.split(".")[0] if "." in p.name else "", []).append(p)
    out = []
    for ps in by_top.values():
        names = tuple(p.name for p in ps)
        leaves = Counter((p.name.rpartition(".")[2], types.get(p.module, "")) for p in ps)
        detail = ", ".join(f"{c} × {leaf}" + (f" of {t}" if t else "") for (leaf, t), c in leaves.most_common(3))
        if len(leaves) > 3:
            detail += ", ..."
        out.append(TensorGroup(module=_common_module(names), names=names,
                               kinds=dict(Counter(p.kind.value for p in ps)), numel=sum(p.numel for p in ps),
                               detail=detail))
    return tuple(out)


def _numel(n: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def param_story(torch_params: Sequence[ParamInfo], jittor_params: Sequence[ParamInfo],
                mapping: Mapping[str, str] | None = None, *, torch_modules: Sequence[ModuleInfo] = (),
                jittor_modules: Sequence[ModuleInfo] = ()) -> ParamStory:
    """Counts of both sides, the port's extra and missing tensors by module, and the two sentences.

    A torch tensor has a partner when its (mapped) name is a Jittor tensor; shapes that differ are listed
    in ``reshaped``. ``*_modules`` (optional) give module types for the group details.
    """
    mapping = mapping or {}
    tp = [p for p in torch_params if counted(p) and p.kind != ParamKind.CONSTANT]
    jp = [p for p in jittor_params if counted(p) and p.kind != ParamKind.CONSTANT]
    jby = {p.name: p for p in jp}
    partner = {p.name: (rename(p.name, mapping) or p.name) for p in tp}
    missing = [p for p in tp if partner[p.name] not in jby]
    hit = {partner[p.name] for p in tp}
    extra = [p for p in jp if p.name not in hit]
    reshaped = tuple((p.name, partner[p.name], tuple(p.shape), tuple(jby[partner[p.name]].shape)) for p in tp
                     if partner[p.name] in jby and tuple(jby[partner[p.name]].shape) != tuple(p.shape))
    ct, cj = side_counts(tp), side_counts(jp)
    g_extra = _groups(extra, {m.name: m.type for m in jittor_modules})
    g_missing = _groups(missing, {m.name: m.type for m in torch_modules})
    en, zh = _sentences(ct, cj, g_extra, g_missing, reshaped)
    return ParamStory(torch=ct, jittor=cj, extra=g_extra, missing=g_missing, reshaped=reshaped,
                      sentence_en=en, sentence_zh=zh)


def _sentences(ct: SideCounts, cj: SideCounts, extra: tuple[TensorGroup, ...], missing: tuple[TensorGroup, ...],
               reshaped: tuple) -> tuple[str, str]:
    where = [(f"+{len(g.names)}", g) for g in extra] + [(f"-{len(g.names)}", g) for g in missing]
    en_parts = [f"{s} under {g.module or 'the root'} ({g.detail})" for s, g in where]
    zh_parts = [f"{g.module or '根模块'} 下{'多' if s[0] == '+' else '少'} {s[1:]} 个（{g.detail}）" for s, g in where]
    en = (f"your port has {cj.trainable_tensors} trainable tensors, the reference {ct.trainable_tensors}"
          + (": " + ", ".join(en_parts) if en_parts else "; every tensor has a partner")
          + f"; buffers {cj.buffer_tensors} vs {ct.buffer_tensors}"
          + f"; trainable elements {_numel(cj.trainable_numel)} vs {_numel(ct.trainable_numel)}")
    zh = (f"你的移植有 {cj.trainable_tensors} 个可训练张量，参考实现 {ct.trainable_tensors} 个"
          + ("：" + "，".join(zh_parts) if zh_parts else "；每个张量都有对应")
          + f"；缓冲区 {cj.buffer_tensors} 对 {ct.buffer_tensors}"
          + f"；可训练元素 {_numel(cj.trainable_numel)} 对 {_numel(ct.trainable_numel)}")
    if cj.frozen_tensors or ct.frozen_tensors:
        en += f"; frozen {cj.frozen_tensors} vs {ct.frozen_tensors}"
        zh += f"；冻结 {cj.frozen_tensors} 对 {ct.frozen_tensors}"
    if reshaped:
        name, _, a, b = reshaped[0]
        en += f"; {len(reshaped)} mapped tensors differ in shape (first: {name} {list(a)} vs {list(b)})"
        zh += f"；{len(reshaped)} 个对应张量形状不同（首个：{name} {list(a)} 对 {list(b)}）"
    return en + ".", zh + "。"
