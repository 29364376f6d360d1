"""Propose a ``{torch_name: jittor_name}`` map between a torch model and an independently written port.

Works on names and shapes only (no framework). Tensors are paired in three passes, each on what the
previous ones left:

1. ``name``: the same full name on both sides.
2. ``rename``: the owning modules' paths agree up to known renames: leaf-module synonyms (``bn`` <->
   ``norm``, ``conv`` <-> ``cv``, ...) and one extra wrapper level on either side (``stem.bn`` vs
   ``stem.block.bn``, ``backbone...`` vs ``model.backbone...``); tensors then pair by attribute name.
3. ``order``: within one parent module, leftover modules pair in registration order when their
   ``(attribute, shape)`` signatures are equal (longest common subsequence). A torch parent's Jittor
   counterpart is where the already paired tensors below it went (``features`` -> ``model.features``).

Pairs found by name keep their shapes even when these differ: that is a finding (a different width), not a
reason to look elsewhere. The written map is kept at module level where a whole subtree renames uniformly
(:func:`aligner.match.rename` applies a key to everything below it), so the file stays short.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligner.errors import UsageError
from aligner.match import rename
from aligner.records import ParamInfo, ParamKind, torch_only

__all__ = ["Shape", "MapProposal", "shapes_of", "propose_map", "compress_map", "mapping_document",
           "write_mapping", "format_summary", "parent_of", "MAP_KEY"]

Shape = tuple[int, ...]
MAP_KEY = "map"  # the section of a map file aligner.match.load_mapping reads; the other sections are notes
# Module-name segments ports commonly use for the same layer; the first of a group is the canonical form.
_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("bn", "norm", "batchnorm", "batch_norm", "bn2d"),
    ("conv", "cv", "conv2d", "convolution"),
    ("act", "activation", "nonlinearity"),
    ("fc", "linear", "dense"),
    ("ln", "layernorm", "layer_norm"),
    ("gn", "groupnorm", "group_norm"),
)
_CANON = {name: group[0] for group in _SYNONYMS for name in group}
_DIGITS = re.compile(r"^(.*?)(\d*)$")


@dataclass(frozen=True)
class MapProposal:
    """A proposed tensor map and what it leaves over; every list is in torch (or Jittor) model order."""
    tensor_map: dict[str, str]                    # every paired torch tensor -> its Jittor partner
    how: dict[str, str]                           # torch tensor -> "name" | "rename" | "order"
    same_shape: list[tuple[str, str]]
    different_shape: list[tuple[str, str, Shape, Shape]]  # torch, jittor, torch shape, jittor shape
    unmapped_torch: list[str]
    unmapped_jittor: list[str]
    module_map: dict[str, str]                    # the same map at module level (prefix keys), see compress_map


def parent_of(name: str) -> str:
    """The module owning a dotted tensor name ("" for a root tensor)."""
    return name.rpartition(".")[0]


def shapes_of(params: Iterable[ParamInfo]) -> dict[str, Shape]:
    """Name -> shape of an inventory's transferable tensors, in model order (no plain tensor constants,
    no torch-only bookkeeping such as ``num_batches_tracked``)."""
    return {p.name: tuple(p.shape) for p in params if p.kind != ParamKind.CONSTANT and not torch_only(p.name)}


def _canon_segment(seg: str) -> str:
    stem, digits = _DIGITS.match(seg).groups()  # type: ignore[union-attr] - the pattern always matches
    return _CANON.get(stem.lower(), stem.lower()) + digits


def _canon(path: str) -> tuple[str, ...]:
    return tuple(_canon_segment(s) for s in path.split(".")) if path else ()


def _by_module(names: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(parent_of(n), []).append(n)
    return out


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def propose_map(torch_tensors: Mapping[str, Sequence[int]], jittor_tensors: Mapping[str, Sequence[int]]
                ) -> MapProposal:
    """Pair the tensors of two models (name -> shape, in registration order), see the module docstring."""
    ts = {k: tuple(v) for k, v in torch_tensors.items() if not torch_only(k)}
    js = {k: tuple(v) for k, v in jittor_tensors.items()}
    pairs: dict[str, str] = {}
    how: dict[str, str] = {}
    for n in ts:
        if n in js:
            pairs[n], how[n] = n, "name"
    _rename_pass(ts, js, pairs, how)
    _order_pass(ts, js, pairs, how)
    tmap = {n: pairs[n] for n in ts if n in pairs}  # torch model order
    taken = set(tmap.values())
    return MapProposal(
        tensor_map=tmap, how={n: how[n] for n in tmap},
        same_shape=[(t, j) for t, j in tmap.items() if ts[t] == js[j]],
        different_shape=[(t, j, ts[t], js[j]) for t, j in tmap.items() if ts[t] != js[j]],
        unmapped_torch=[n for n in ts if n not in tmap], unmapped_jittor=[n for n in js if n not in taken],
        module_map=compress_map(tmap, ts, js))


def _rename_pass(ts: dict[str, Shape], js: dict[str, Shape], pairs: dict[str, str], how: dict[str, str]) -> None:
    """Pair leftover owning modules whose paths agree up to synonyms and one extra wrapper level. Repeated
    with each torch path also read through the module map found so far, so a wrapper that sits over a
    renamed subtree (``model.`` around everything, plus a ``block`` level inside) is found in a second round."""
    for _ in range(3):
        before = len(pairs)
        _rename_round(ts, js, pairs, how)
        if len(pairs) == before:
            return


def _rename_round(ts: dict[str, Shape], js: dict[str, Shape], pairs: dict[str, str], how: dict[str, str]) -> None:
    taken = set(pairs.values())
    t_mods = _by_module(n for n in ts if n not in pairs)
    j_mods = _by_module(n for n in js if n not in taken)
    so_far = compress_map({t: pairs[t] for t in ts if t in pairs}, ts, js)
    same: dict[tuple[str, ...], list[str]] = {}
    j_extra: dict[tuple[str, ...], list[str]] = {}  # Jittor path with one segment dropped
    for jm in j_mods:
        c = _canon(jm)
        same.setdefault(c, []).append(jm)
        for i in range(len(c)):
            j_extra.setdefault(c[:i] + c[i + 1:], []).append(jm)
    used: set[str] = set()
    for tm, tnames in t_mods.items():
        tiers: list[list[str]] = []
        for c in dict.fromkeys((_canon(tm), _canon((rename(tm, so_far) or tm) if tm else ""))):
            tiers += [same.get(c, []), j_extra.get(c, []),
                      [jm for i in range(len(c)) for jm in same.get(c[:i] + c[i + 1:], [])]]
        for cands in tiers:
            jm = _pick(tnames, [m for m in dict.fromkeys(cands) if m not in used], j_mods, ts, js)
            if jm is None:
                continue
            jleaves = {_leaf(j): j for j in j_mods[jm]}
            hits = [(t, jleaves[_leaf(t)]) for t in tnames if _leaf(t) in jleaves]
            if hits:
                used.add(jm)
                for t, j in hits:
                    pairs[t], how[t] = j, "rename"
                break


def _pick(tnames: list[str], cands: list[str], j_mods: dict[str, list[str]], ts: dict[str, Shape],
          js: dict[str, Shape]) -> str | None:
    """The one candidate module that fits best: equal (attribute, shape) signature, else shared attributes."""
    if len(cands) <= 1:
        return cands[0] if cands else None
    sig = sorted((_leaf(t), ts[t]) for t in tnames)
    exact = [m for m in cands if sorted((_leaf(j), js[j]) for j in j_mods[m]) == sig]
    if len(exact) == 1:
        return exact[0]
    leaves = {_leaf(t) for t in tnames}
    overlap = [m for m in cands if leaves & {_leaf(j) for j in j_mods[m]}]
    return overlap[0] if len(overlap) == 1 else None  # ambiguous: left to the order pass or the user


def _order_pass(ts: dict[str, Shape], js: dict[str, Shape], pairs: dict[str, str], how: dict[str, str]) -> None:
    """Within each parent module, pair leftover modules in order when their signatures are equal."""
    taken = set(pairs.values())
    t_mods = _by_module(n for n in ts if n not in pairs)
    j_mods = _by_module(n for n in js if n not in taken)
    # torch module -> Jittor module votes: ancestors of paired tensors at equal distance from the tensor
    votes: dict[str, Counter[str]] = {}
    for t in ts:
        if t in pairs:
            a, b = t.split(".")[:-1], pairs[t].split(".")[:-1]
            for k in range(min(len(a), len(b)) + 1):
                votes.setdefault(".".join(a[:len(a) - k]), Counter())[".".join(b[:len(b) - k])] += 1
    j_by_parent: dict[str, list[str]] = {}
    for jm in j_mods:
        if jm:
            j_by_parent.setdefault(parent_of(jm), []).append(jm)
    t_by_parent: dict[str, list[str]] = {}
    for tm in t_mods:
        if tm:
            t_by_parent.setdefault(parent_of(tm), []).append(tm)
    for tp, tms in t_by_parent.items():
        jp = votes[tp].most_common(1)[0][0] if tp in votes else tp
        jms = j_by_parent.get(jp, [])
        sig_t = [tuple(sorted((_leaf(n), ts[n]) for n in t_mods[m])) for m in tms]
        sig_j = [tuple(sorted((_leaf(n), js[n]) for n in j_mods[m])) for m in jms]
        for i, k in _lcs(sig_t, sig_j):
            jleaves = {_leaf(j): j for j in j_mods[jms[k]]}
            for t in t_mods[tms[i]]:
                pairs[t], how[t] = jleaves[_leaf(t)], "order"


def _lcs(a: list[Any], b: list[Any]) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of ``a`` and ``b`` (equality of items)."""
    n, m = len(a), len(b)
    if not n or not m:
        return []
    dp = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            dp[i][j] = dp[i + 1][j + 1] + 1 if a[i] == b[j] else max(dp[i + 1][j], dp[i][j + 1])
    out, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j] and dp[i][j] == dp[i + 1][j + 1] + 1:
            out.append((i, j))
            i, j = i + 1, j + 1
        elif dp[i + 1][j] >= dp[i][j + 1]:
            i += 1
        else:
            j += 1
    return out


def compress_map(tensor_map: Mapping[str, str], torch_names: Iterable[str], jittor_names: Iterable[str]
                 ) -> dict[str, str]:
    """A short prefix map under which :func:`aligner.match.rename` (identity where no key applies) sends
    every paired torch tensor to its partner: top-down, a module gets a key when most paired tensors below
    it rename the same way, and deeper keys fix the exceptions. A key is only used when no unpaired torch
    tensor below it would land on a Jittor tensor."""
    tnames = list(torch_names)
    jset = set(jittor_names)
    out: dict[str, str] = {}

    def resolved(n: str) -> str:
        return rename(n, out) or n

    def visit(module: str, names: list[str]) -> None:
        if all(resolved(n) == tensor_map[n] for n in names if n in tensor_map):
            return
        if module:
            target = _common_target(module, names, tensor_map, jset)
            if target is not None:
                out[module] = target
                if all(resolved(n) == tensor_map[n] for n in names if n in tensor_map):
                    return
        cut = len(module) + 1 if module else 0
        children: dict[str, list[str]] = {}
        for n in names:
            children.setdefault(n[:cut] + n[cut:].split(".")[0], []).append(n)
        for child, below in children.items():
            if child in tensor_map:  # a tensor directly in this module
                if resolved(child) != tensor_map[child]:
                    out[child] = tensor_map[child]
            else:
                visit(child, below)

    visit("", tnames)
    return out


def _common_target(module: str, names: list[str], tensor_map: Mapping[str, str], jset: set[str]) -> str | None:
    """The Jittor module most paired tensors below ``module`` sit under with the same relative name, when
    that is more than half of them."""
    votes: dict[str, int] = {}
    paired = 0
    for n in names:
        if n not in tensor_map:
            continue
        paired += 1
        rel, j = n[len(module):], tensor_map[n]
        if j.endswith(rel) and len(j) > len(rel):
            votes[j[: -len(rel)]] = votes.get(j[: -len(rel)], 0) + 1
    if not votes:
        return None
    target, count = max(votes.items(), key=lambda kv: kv[1])
    if 2 * count <= paired:
        return None
    for n in names:  # an unpaired torch tensor must not be sent onto some Jittor tensor by the key
        if n not in tensor_map and target + n[len(module):] in jset:
            return None
    return target


def mapping_document(p: MapProposal) -> dict[str, Any]:
    """The editable file: ``map`` (what load_mapping reads; unpaired torch tensors as ``null`` for the user
    to fill in) and notes load_mapping ignores: different shapes, unpaired Jittor tensors, how pairs were made."""
    doc_map: dict[str, str | None] = dict(p.module_map)
    for n in p.unmapped_torch:
        doc_map.setdefault(n, None)
    return {
        "about": "torch name -> Jittor name; a key also renames everything below it. Replace each null with "
                 "the Jittor name (or delete the line); the other sections are notes and are not read.",
        MAP_KEY: dict(sorted(doc_map.items())),
        "different_shape": {t: {"jittor": j, "torch_shape": list(a), "jittor_shape": list(b)}
                            for t, j, a, b in sorted(p.different_shape)},
        "unmapped_jittor": sorted(p.unmapped_jittor),
        "paired_by": {k: sorted(n for n, h in p.how.items() if h == k) for k in ("rename", "order")},
    }


def write_mapping(p: MapProposal, path: str | Path, *, force: bool = False) -> Path:
    """Write :func:`mapping_document` as sorted JSON; an existing file is kept unless ``force``."""
    from aligner.fsio import atomic_write  # noqa: PLC0415 - only the writer needs it

    target = Path(path)
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it", slug="output-exists")
    return atomic_write(target, json.dumps(mapping_document(p), indent=2, ensure_ascii=False) + "\n")


def format_summary(p: MapProposal, limit: int = 20) -> str:
    """Counts of each list, then the lists (at most ``limit`` lines each, with the count left out)."""
    lines = [f"mapped, same shape: {len(p.same_shape)} · mapped, different shape: {len(p.different_shape)} · "
             f"unmapped torch: {len(p.unmapped_torch)} · unmapped jittor: {len(p.unmapped_jittor)}"]

    def section(title: str, rows: list[str]) -> None:
        if not rows:
            return
        lines.append(f"{title} ({len(rows)}):")
        lines.extend(f"  {r}" for r in rows[:limit])
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more")

    by_how = {k: sum(1 for h in p.how.values() if h == k) for k in ("name", "rename", "order")}
    lines.append(f"paired by name {by_how['name']}, by known rename {by_how['rename']}, "
                 f"by order and shape {by_how['order']}; {len(p.module_map)} map entries")
    section("mapped with different shapes",
            [f"{t} {list(a)} -> {j} {list(b)}" for t, j, a, b in p.different_shape])
    section("unmapped torch", p.unmapped_torch)
    section("unmapped jittor", p.unmapped_jittor)
    return "\n".join(lines)
