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
4. ``sequence``: what is left of the two whole models, aligned as sequences of owning-module signatures
   (the kinds and shapes of a module's tensors) in registration order: independently written ports build one
   architecture in the same order however they name and group it. Only pairs every longest alignment agrees
   on are taken, then the same inside each stretch between them; each torch module is re-aligned against the one
   Jittor module its pairs went to; a pair that leaves the region its torch neighbours went to is dropped.
   Tensors still left inside half-paired modules then pair with the one leftover of their kind and shape that
   sits closest to their neighbours' partners. Look-alikes that could swap (two towers of one shape) stay
   unpaired: a null to fill in is cheaper than a wrong guess. This pass only pairs equal shapes.

Pairs found by name keep their shapes even when these differ: that is a finding (a different width), not a
reason to look elsewhere. The written map is kept at module level where a whole subtree renames uniformly
(:func:`aligner.match.rename` applies a key to everything below it), so the file stays short.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
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
    how: dict[str, str]                           # torch tensor -> "name" | "rename" | "order" | "sequence"
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
    _sequence_pass(ts, js, pairs, how)
    _neighbourhood_pass(ts, js, pairs, how)
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


# Tensor attributes whose name says what the tensor is; any other name (``proj``, ``dfl_bins``) is a plain tensor.
_KNOWN_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var"})


def _kind(name: str, shape: Shape) -> tuple[str, Shape]:
    leaf = _leaf(name)
    return (leaf if leaf in _KNOWN_LEAVES else "*", shape)


def _sequence_pass(ts: dict[str, Shape], js: dict[str, Shape], pairs: dict[str, str], how: dict[str, str]) -> None:
    """Pair the leftover tensors of the whole models by the sequences of their owning modules' signatures in
    registration order: two ports of one architecture build their layers in the same order however they name
    and group them. Then, top down, each torch module whose pairs went below one Jittor module that no other
    torch module sent pairs to is aligned again against that module alone: without the rest of the model around
    it (a port registering its stages together, the reference one at a time), runs of equal blocks can no
    longer slide one block off."""
    taken = set(pairs.values())
    t_units = _units(n for n in ts if n not in pairs)
    j_units = _units(n for n in js if n not in taken)
    found = _align(t_units, j_units, ts, js, pairs)
    for module in sorted({m for unit in t_units for m in _ancestors(unit[0])}, key=_depth):
        t_sub = [u for u in t_units if u[0].startswith(module + ".")]
        inside = {t for u in t_sub for t in u}
        region, _ = _regions({t: found[t] for t in inside if t in found})
        place = region.get(module)
        if not place:
            continue  # nothing paired below, or spread over the whole model: no smaller problem to solve
        if any(t not in inside and j.startswith(place + ".") for t, j in found.items()):
            continue  # another torch module sent pairs there too: not a module pair
        j_sub = [u for u in j_units if u[0].startswith(place + ".")]
        context = {**pairs, **{t: j for t, j in found.items() if t not in inside}}
        local = _align(t_sub, j_sub, ts, js, context)
        for t in inside:
            found.pop(t, None)
        found.update(local)
    # once more with every pair known: a late pair may contradict an early one, or stand alone in its block
    found = _supported(_consistent(found, pairs, js), pairs, _tree(ts))
    for t in ts:
        if t in found:
            pairs[t], how[t] = found[t], "sequence"


def _units(names: Iterable[str]) -> list[list[str]]:
    """Tensors grouped by owning module, in registration order: a conv or a norm is aligned as one item, so a
    norm's four tensors do not outweigh a conv's one."""
    return list(_by_module(names).values())


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")[:-1]
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def _align(t_units: list[list[str]], j_units: list[list[str]], ts: dict[str, Shape], js: dict[str, Shape],
           context: dict[str, str]) -> dict[str, str]:
    """Tensor pairs of two module lists aligned by signature (their tensors' kinds and shapes) in order: first
    the pairs every longest common subsequence agrees on (anchors), then the same within each stretch between two
    anchors, where a sibling registered in another order (a block's identity branch first on one side, last on
    the other) has fewer look-alikes. A pair is kept only where it stays inside the region its torch neighbours
    went to (:func:`_consistent`)."""
    a = [tuple(_kind(n, ts[n]) for n in u) for u in t_units]
    b = [tuple(_kind(n, js[n]) for n in u) for u in j_units]

    def tensors(matches: Iterable[tuple[int, int]], di: int = 0, dk: int = 0) -> dict[str, str]:
        return {t: j for i, k in matches for t, j in zip(t_units[di + i], j_units[dk + k])}

    anchor_units = _unique_lcs(a, b)
    anchors = _consistent(tensors(anchor_units), context, js)
    bounds = [(-1, -1), *((i, k) for i, k in anchor_units if t_units[i][0] in anchors), (len(a), len(b))]
    inside: dict[str, str] = {}
    for (i0, k0), (i1, k1) in zip(bounds, bounds[1:]):
        inside.update(tensors(_unique_lcs(a[i0 + 1:i1], b[k0 + 1:k1]), i0 + 1, k0 + 1))
    return {**anchors, **_consistent(inside, {**context, **anchors}, js)}


def _regions(pairs: Mapping[str, str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """For every torch module (and tensor) with paired tensors below it, the deepest Jittor module holding their
    partners; and the torch tree (module -> children that hold paired tensors)."""
    region: dict[str, str] = {}
    children: dict[str, set[str]] = {}
    for t, j in pairs.items():
        node, place = t, parent_of(j)
        while True:
            if node in region:
                merged = _lca(region[node], place)
                if merged == region[node]:
                    break  # already holds it, and so does every module above
                region[node] = merged
            else:
                region[node] = place
            if not node:
                break
            children.setdefault(parent_of(node), set()).add(node)
            node = parent_of(node)
    return region, children


def _consistent(found: dict[str, str], pairs: dict[str, str], js: Mapping[str, Shape]) -> dict[str, str]:
    """The found pairs that stay inside the region their torch neighbours went to. For each torch ancestor of a
    tensor whose other children (at least two, so one renamed wrapper cannot mislead) sent their tensors below
    one Jittor module, the tensor's partner must be below that module too, unless that module has no other
    tensor of its kind and shape to offer (the port groups those siblings one level deeper, ``stages``, and the
    stem beside them). This drops a block's branch that an order match put one block off (the identity branch
    registered first on one side, last on the other) while its own block's slot is still open."""
    region, children = _regions({**pairs, **found})
    fixed = set(pairs.values())

    def open_slot(place: str, j: str) -> bool:
        key = _kind(j, js[j])
        return any(n != j and n not in fixed and n.startswith(place + ".") and _kind(n, js[n]) == key for n in js)

    kept = {}
    for t, j in found.items():
        node, ok = t, True
        while node and ok:
            up = parent_of(node)
            others = [region[c] for c in children.get(up, ()) if c != node]
            if len(others) >= 2:
                around = others[0]
                for r in others[1:]:
                    around = _lca(around, r)
                ok = _lca(around, parent_of(j)) == around or not open_slot(around, j)
            node = up
        if ok:
            kept[t] = j
    return kept


def _tree(names: Iterable[str]) -> dict[str, set[str]]:
    """Module -> its children (modules and tensors) in a model given by its tensor names."""
    children: dict[str, set[str]] = {}
    for n in names:
        node = parent_of(n)
        while node:
            children.setdefault(parent_of(node), set()).add(node)
            node = parent_of(node)
        children.setdefault(parent_of(n), set()).add(n)
    return children


def _supported(found: dict[str, str], pairs: dict[str, str], children: dict[str, set[str]]) -> dict[str, str]:
    """The found pairs with a paired relative: among the other children of the two nearest torch modules above the
    tensor's own that have any, one holds a paired tensor. A lone norm matched by shape inside a block nothing
    else of was paired (its conv and its block's other layers left over) is a coincidence of shapes."""
    paired = set()
    for n in (*pairs, *found):
        node = n
        while node and node not in paired:
            paired.add(node)
            node = parent_of(node)
    kept = {}
    for t, j in found.items():
        node, branchings = parent_of(t), 0
        while node and branchings < 2:
            siblings = children.get(parent_of(node), set()) - {node}
            if siblings & paired:
                break
            branchings += bool(siblings)
            node = parent_of(node)
        if not node or branchings < 2:
            kept[t] = j
    return kept


@lru_cache(maxsize=65536)
def _lca(a: str, b: str) -> str:
    """The deepest module path both dotted paths lie under ("" for the root)."""
    sa, sb = a.split(".") if a else [], b.split(".") if b else []
    k = 0
    while k < min(len(sa), len(sb)) and sa[k] == sb[k]:
        k += 1
    return ".".join(sa[:k])


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def _neighbourhood_pass(ts: dict[str, Shape], js: dict[str, Shape], pairs: dict[str, str],
                        how: dict[str, str]) -> None:
    """Pair tensors left inside modules whose other tensors are paired. A torch module's counterpart is the
    deepest Jittor module holding its paired tensors' partners; a leftover tensor pairs with a leftover of its
    (kind, shape) below that counterpart, looked for from its own module outwards (at most four levels). Where
    several fit, the one sitting closest to where the tensor's nearest paired neighbours went wins (a norm next
    to its conv), and only when it is the single closest both ways; failing that, the one registered right after
    the partner of the module registered right before the tensor's (:func:`_after`), again only when no other
    leftover torch tensor would claim it. Otherwise the tensor stays unpaired."""
    t_below: dict[str, list[str]] = {}
    for t in ts:
        parts = t.split(".")[:-1]
        for k in range(len(parts) + 1):
            t_below.setdefault(".".join(parts[:k]), []).append(t)
    t_order, j_order, tree = list(ts), list(js), _tree(ts)
    for _ in range(4):
        before = len(pairs)
        region, _ = _regions(pairs)
        taken = set(pairs.values())

        def near(name: str) -> str | None:
            module = parent_of(name)
            while module not in region:
                if not module:
                    return None
                module = parent_of(module)
            return region[module]

        for t in ts:
            if t in pairs:
                continue
            module, key, here = parent_of(t), _kind(t, ts[t]), near(t)
            for _level in range(4):
                if module in region:
                    jm = region[module]
                    j_same = [n for n in js if n not in taken and _kind(n, js[n]) == key
                              and (not jm or n.startswith(jm + "."))]
                    if j_same:
                        rivals = [n for n in t_below[module] if n not in pairs and _kind(n, ts[n]) == key]
                        pick = _closest(j_same, here) if len(j_same) > 1 else j_same[0]
                        if (pick is not None and len(j_same) > 1
                                and _depth(_lca(parent_of(pick), here or "")) <= _depth(jm)):
                            pick = None  # no closer than the whole region: closeness says nothing
                        if pick is None or _closest_source(rivals, pick, near) != t:
                            pick = _after(t, j_same, pairs, t_order, j_order)
                            if any(_after(r, j_same, pairs, t_order, j_order) == pick for r in rivals if r != t):
                                pick = None
                        if pick is not None and _supported(_consistent({t: pick}, pairs, js), pairs, tree):
                            pairs[t], how[t] = pick, "sequence"
                            taken.add(pick)
                        break
                if not module:
                    break
                module = parent_of(module)
        if len(pairs) == before:
            return


def _closest(cands: list[str], place: str | None) -> str | None:
    """The one candidate whose module shares the deepest path with ``place``; None on a tie."""
    if place is None:
        return cands[0] if len(cands) == 1 else None
    scored = sorted(((_depth(_lca(parent_of(c), place)), c) for c in cands), reverse=True)
    return scored[0][1] if len(scored) == 1 or scored[0][0] > scored[1][0] else None


def _after(t: str, cands: list[str], pairs: Mapping[str, str], t_order: list[str], j_order: list[str]
           ) -> str | None:
    """The candidate registered right after the partner of the module registered right before ``t``'s, when
    there is one: a norm follows its conv on both sides even where the names say nothing (``conv1``, ``bn1``)."""
    first = next(i for i, n in enumerate(t_order) if parent_of(n) == parent_of(t))
    if first == 0 or t_order[first - 1] not in pairs:
        return None
    k = j_order.index(pairs[t_order[first - 1]]) + 1
    nxt = j_order[k] if k < len(j_order) else None
    follows = [c for c in cands if nxt is not None and parent_of(c) == parent_of(nxt)]
    return follows[0] if len(follows) == 1 else None


def _closest_source(rivals: list[str], target: str, near: Callable[[str], str | None]) -> str | None:
    """The one torch tensor among ``rivals`` whose neighbours went closest to ``target``; None on a tie."""
    scored = sorted(((_depth(_lca(parent_of(target), near(r) or "")), r) for r in rivals), reverse=True)
    return scored[0][1] if len(scored) == 1 or scored[0][0] > scored[1][0] else None


def _unique_lcs(a: list[Any], b: list[Any]) -> list[tuple[int, int]]:
    """The pairs of one longest common subsequence that no other longest one pairs differently: items of
    equal signature that could swap (two towers of one shape, one per branch) stay unpaired."""
    n, m = len(a), len(b)
    if not n or not m:
        return []
    pre = [[0] * (m + 1) for _ in range(n + 1)]  # pre[i][k]: LCS of a[:i], b[:k]
    for i in range(n):
        row, nxt = pre[i], pre[i + 1]
        for k in range(m):
            nxt[k + 1] = row[k] + 1 if a[i] == b[k] else max(row[k + 1], nxt[k])
    suf = [[0] * (m + 1) for _ in range(n + 1)]  # suf[i][k]: LCS of a[i:], b[k:]
    for i in range(n - 1, -1, -1):
        row, nxt = suf[i], suf[i + 1]
        for k in range(m - 1, -1, -1):
            row[k] = nxt[k + 1] + 1 if a[i] == b[k] else max(nxt[k], row[k + 1])
    best = pre[n][m]
    options_a: dict[int, set[int]] = {}
    options_b: dict[int, set[int]] = {}
    for i in range(n):
        for k in range(m):
            if a[i] == b[k] and pre[i][k] + 1 + suf[i + 1][k + 1] == best:
                options_a.setdefault(i, set()).add(k)
                options_b.setdefault(k, set()).add(i)
    return [(i, k) for i, k in _lcs(a, b) if options_a.get(i) == {k} and options_b.get(k) == {i}]


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
        "paired_by": {k: sorted(n for n, h in p.how.items() if h == k) for k in ("rename", "order", "sequence")},
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

    by_how = {k: sum(1 for h in p.how.values() if h == k) for k in ("name", "rename", "order", "sequence")}
    lines.append(f"paired by name {by_how['name']}, by known rename {by_how['rename']}, "
                 f"by order and shape {by_how['order']}, by model-wide alignment {by_how['sequence']}; "
                 f"{len(p.module_map)} map entries")
    section("mapped with different shapes",
            [f"{t} {list(a)} -> {j} {list(b)}" for t, j, a, b in p.different_shape])
    section("unmapped torch", p.unmapped_torch)
    section("unmapped jittor", p.unmapped_jittor)
    return "\n".join(lines)
