"""Module isolation, the framework half: replay every matched call on the reference's own inputs.

What PaDiff calls single-step mode. The torch model runs its forward once more; when a matched module is
about to be called, its actual arguments (snapshotted before the call, so an in-place op inside cannot hide
them) are fed, as fresh leaves, into that torch module and into the port's module alone, and one seeded probe
gradient per output goes back through each. The outputs, the gradients w.r.t. the inputs and the module's
parameter gradients are handed to a sink (:func:`aligner.isolation.judge_isolated` judges them), with the
float64 replays of the reference module and of the port's module as functions the judge calls only when a
tensor needs them (most agree to well within their bound on the float32 reference alone). Only then does the torch module run its own call, so the replays never change what later modules
receive. Buffers (BatchNorm running statistics) updated by the replays are restored at the end.

A call the port's module cannot take (another signature, an exception in its code, outputs of another
structure) is handed over as skipped, with the reason in one line. The root module (the whole model, which
the end-to-end comparison already covers) is never replayed.
"""
from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..analysis_records import Kind
from ..isolation import CallPair, IsolatedCall, IsolatedTensor
from ..match import rename
from ..port_loader import first_line
from .recording import flatten

__all__ = ["isolate_models"]


def _tree_map(obj: Any, is_leaf: Callable[[Any], bool], fn: Callable[[Any], Any]) -> Any:
    if is_leaf(obj):
        return fn(obj)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_tree_map(v, is_leaf, fn) for v in obj)
    if isinstance(obj, list):
        return [_tree_map(v, is_leaf, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: _tree_map(v, is_leaf, fn) for k, v in obj.items()}
    return obj


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _probe(seed: int, order: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The probe gradient of one output leaf: the same numbers for every run of this call."""
    return np.random.default_rng([seed, order, index]).standard_normal(shape)


class _Run:
    """One framework's replay of one call: output leaves, input gradients, parameter gradients (numpy)."""

    def __init__(self, outs: list[tuple[str, np.ndarray]], in_grads: list[np.ndarray | None],
                 pgrads: dict[str, np.ndarray]) -> None:
        self.outs, self.in_grads, self.pgrads = outs, in_grads, pgrads


def _torch_run(torch: Any, mod: Any, args: Any, f64: bool,
               probes: Callable[[list[tuple[str, tuple[int, ...]]]], list[np.ndarray]]) -> _Run:
    leaves: list[Any] = []

    def make(a: np.ndarray) -> Any:
        if a.dtype.kind == "f":
            leaf = torch.from_numpy(a.astype(np.float64) if f64 else a.copy()).requires_grad_(True)
            leaves.append(leaf)
            return leaf.clone()  # a non-leaf: in-place ops inside the module stay legal
        return torch.from_numpy(a.copy())
    with torch.enable_grad():  # the live pass runs under no_grad: the clones must be recorded too
        a, kw = _tree_map(args, _is_array, make)
        out = mod(*a, **kw)
    outs = [(s, t) for s, t in flatten(out, lambda x: isinstance(x, torch.Tensor)) if t.is_floating_point()]
    params = [(n, p) for n, p in mod.named_parameters() if p.requires_grad]
    gs = probes([(s, tuple(int(d) for d in t.shape)) for s, t in outs])
    diff = [(t, torch.from_numpy(g.astype(np.float64 if f64 else np.float32)).to(t.dtype))
            for (_, t), g in zip(outs, gs) if t.requires_grad]
    targets = leaves + [p for _, p in params]
    grads: Sequence[Any] = [None] * len(targets)
    if diff and targets:
        grads = torch.autograd.grad([t for t, _ in diff], targets, grad_outputs=[g for _, g in diff],
                                    allow_unused=True)
    arr = [None if g is None else g.detach().numpy().copy() for g in grads]
    in_grads = [g if g is not None else np.zeros(tuple(x.shape), dtype=x.detach().numpy().dtype)
                for g, x in zip(arr[:len(leaves)], leaves)]
    pgrads = {n: (g if g is not None else np.zeros(tuple(p.shape), dtype=p.detach().numpy().dtype))
              for (n, p), g in zip(params, arr[len(leaves):])}
    return _Run([(s, t.detach().numpy().copy()) for s, t in outs], in_grads, pgrads)


def _jittor_run(jt: Any, ja: Any, mod: Any, args: Any, f64: bool,
                probes: Callable[[list[tuple[str, tuple[int, ...]]]], list[np.ndarray] | str],
                pnames: Mapping[str, str]) -> _Run | str:
    """The port module's replay; ``probes`` gets its output leaves and gives their probe gradients (or the
    reason they cannot be paired with the reference's, which is returned instead)."""
    leaves: list[Any] = []

    def make(a: np.ndarray) -> Any:
        if a.dtype.kind == "f":
            v = ja._from_numpy(a.astype(np.float64) if f64 else a, requires_grad=True)
            leaves.append(v)
            return v
        return ja._from_numpy(a, requires_grad=False)
    a, kw = _tree_map(args, _is_array, make)
    out = mod(*a, **kw)
    outs = [(s, v) for s, v in flatten(out, lambda x: isinstance(x, jt.Var)) if str(v.dtype).startswith("float")]
    gs = probes([(s, tuple(int(d) for d in v.shape)) for s, v in outs])
    if isinstance(gs, str):
        return gs
    own = {nt.name: nt.tensor for nt in ja._named_tensors(mod) if not nt.tensor.is_stop_grad()}
    params = [(tn, own[jn]) for tn, jn in pnames.items() if jn in own]
    targets = leaves + [p for _, p in params]
    grads: list[Any] = []
    if outs and targets:
        loss = None
        for (_, v), g in zip(outs, gs):
            term = (v * ja._from_numpy(g.astype(str(v.dtype)), requires_grad=False)).sum()
            loss = term if loss is None else loss + term
        with jt.log_capture_scope(log_v=0):  # unreachable targets get zeros and a warning: silence it
            grads = jt.grad(loss, targets)
            jt.sync(grads + [v for _, v in outs])
    elif outs:
        jt.sync([v for _, v in outs])
    arr = [g.numpy() for g in grads] if grads else [np.zeros(tuple(t.shape)) for t in targets]
    return _Run([(s, v.numpy()) for s, v in outs], arr[:len(leaves)],
                {tn: g for (tn, _), g in zip(params, arr[len(leaves):])})


def _pair_outputs(t: list[tuple[str, tuple[int, ...]]], j: list[tuple[str, tuple[int, ...]]]
                  ) -> list[tuple[int, int]] | str:
    """Index pairs (reference leaf, port leaf) by sub-path, else by shape in order; or why they cannot pair."""
    if {s for s, _ in t} == {s for s, _ in j}:
        pos = {s: i for i, (s, _) in enumerate(j)}
        return [(i, pos[s]) for i, (s, _) in enumerate(t)]
    if [shp for _, shp in t] == [shp for _, shp in j]:
        return [(i, i) for i in range(len(t))]
    return (f"outputs of another structure (reference {[list(shp) for _, shp in t]}, "
            f"port {[list(shp) for _, shp in j]})")


def _keyed(r: _Run, pairing: list[tuple[int, int]], t_subs: list[str]) -> dict[tuple[Kind, str], np.ndarray]:
    """A run's tensors under the names the reference's float32 run gave them."""
    out: dict[tuple[Kind, str], np.ndarray] = {}
    for ti, ji in pairing:
        out[(Kind.FORWARD, t_subs[ti] or "out")] = r.outs[ji][1]
    for i, g in enumerate(r.in_grads):
        out[(Kind.BACKWARD, f"input {i}")] = g
    for n, g in r.pgrads.items():
        out[(Kind.PARAM_GRAD, n)] = g
    return out


def isolate_models(torch_model: Any, jittor_model: Any, inputs: Sequence[np.ndarray], calls: list[CallPair],
                   sink: Callable[[IsolatedCall], None], *, name_map: Mapping[str, str] | None = None,
                   seed: int = 0, jittor64: Callable[[], Any] | None = None,
                   progress: Callable[[str], None] | None = None) -> None:
    """Replay ``calls`` (matched module calls, by name on each side) on the reference's own inputs; hand each
    result to ``sink`` as soon as it exists. ``jittor64`` builds the port's float64 copy holding the same
    weights (called at most once, when a tensor first needs it)."""
    from . import get_adapter  # noqa: PLC0415 - imports the frameworks

    ta, ja = get_adapter("torch"), get_adapter("jittor")
    torch, jt = ta.torch, ja.jt  # type: ignore[attr-defined]
    name_map = name_map or {}
    want = {(c.torch_name, c.torch_call): c for c in calls if c.torch_name}
    if not want:
        return
    t_mods = dict(torch_model.named_modules())
    j_mods = dict(jittor_model.named_modules())
    t64_mods: dict[str, Any] = {}  # the reference's float64 copy, made when a tensor first needs it
    j64_mods: dict[str, Any] = {}
    t_named, j_named = ta._named_tensors(torch_model), ja._named_tensors(jittor_model)
    t_saved, j_saved = ta._save_state(torch_model, t_named), ja._save_state(jittor_model, j_named)
    counts: Counter[str] = Counter()
    busy = [False]
    done = [0]

    def port64_of(cp: CallPair, args: Any, pnames: Mapping[str, str], probes: Callable[..., list[Any]],
                  pairing: list[tuple[int, int]], t_subs: list[str]) -> Callable[[], dict[tuple[Kind, str], np.ndarray]]:
        def run() -> dict[tuple[Kind, str], np.ndarray]:
            if not j64_mods:
                j64_mods.update(dict(jittor64().named_modules()))  # type: ignore[misc]
            r = _jittor_run(jt, ja, j64_mods[cp.jittor_name], args, True, probes, pnames)
            return {} if isinstance(r, str) else _keyed(r, pairing, t_subs)
        return run

    def replay(cp: CallPair, args: Any) -> IsolatedCall:
        jm = j_mods.get(cp.jittor_name)
        if jm is None:
            return IsolatedCall(cp, skipped=f"the port has no module named {cp.jittor_name!r}")
        tm = t_mods[cp.torch_name]
        # the port's name of each torch parameter under this module (the map renames whole subtrees)
        pnames = {}
        for n, _ in tm.named_parameters():
            full = f"{cp.torch_name}.{n}"
            jfull = rename(full, name_map) or full
            pnames[n] = jfull[len(cp.jittor_name) + 1:] if jfull.startswith(cp.jittor_name + ".") else n

        def t_probes(outs: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
            return [_probe(seed, cp.order, i, shp) for i, (_, shp) in enumerate(outs)]
        t32 = _torch_run(torch, tm, args, False, t_probes)

        def ref64() -> dict[tuple[Kind, str], np.ndarray]:
            if not t64_mods:
                t64_mods.update(copy.deepcopy(torch_model).double().named_modules())
            return _keyed(_torch_run(torch, t64_mods[cp.torch_name], args, True, t_probes), [(i, i) for i in range(len(t32.outs))],
                          [s for s, _ in t32.outs])
        t_leaves = [(s, tuple(a.shape)) for s, a in t32.outs]
        g_ref = t_probes(t_leaves)
        pairing: list[tuple[int, int]] = []

        def j_probes(outs: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray] | str:
            pr = _pair_outputs(t_leaves, outs)
            if isinstance(pr, str):
                return pr
            pairing[:] = pr
            by_port = {ji: ti for ti, ji in pr}
            return [g_ref[by_port[i]] if i in by_port else np.zeros(shp) for i, (_, shp) in enumerate(outs)]
        try:
            j32 = _jittor_run(jt, ja, jm, args, False, j_probes, pnames)
        except Exception as exc:  # noqa: BLE001 - the port's code: its error is the reason, in one line
            return IsolatedCall(cp, skipped=f"the port's module raised {first_line(exc)}")
        if isinstance(j32, str):
            return IsolatedCall(cp, skipped=j32)
        t_subs = [s for s, _ in t32.outs]
        tensors = [IsolatedTensor(Kind.FORWARD, t_subs[ti] or "out", t32.outs[ti][1], None, j32.outs[ji][1])
                   for ti, ji in pairing]
        for i, g in enumerate(t32.in_grads):
            if i < len(j32.in_grads):
                tensors.append(IsolatedTensor(Kind.BACKWARD, f"input {i}", g, None, j32.in_grads[i]))
        for n, g in t32.pgrads.items():
            if n in j32.pgrads:
                tensors.append(IsolatedTensor(Kind.PARAM_GRAD, n, g, None, j32.pgrads[n]))
        p64 = port64_of(cp, args, pnames, j_probes, pairing, t_subs) if jittor64 is not None else None
        return IsolatedCall(cp, tensors, port64=p64, ref64=ref64)

    def pre(name: str) -> Callable[..., None]:
        def hook(mod: Any, args: Any, kwargs: Any) -> None:
            if busy[0]:
                return  # a sub-module called by a replay
            k = counts[name]
            counts[name] += 1
            cp = want.get((name, k))
            if cp is None:
                return
            busy[0] = True
            try:
                snap = _tree_map((args, kwargs or {}), lambda x: isinstance(x, torch.Tensor),
                                 lambda t: t.detach().numpy().copy())
                try:
                    res = replay(cp, snap)
                except Exception as exc:  # noqa: BLE001 - one call that cannot be replayed is not the end
                    res = IsolatedCall(cp, skipped=first_line(exc))
                sink(res)
                done[0] += 1
                if progress and done[0] % 50 == 0:
                    progress(f"isolated {done[0]}/{len(want)} module calls")
            finally:
                busy[0] = False
        return hook

    names = {c.torch_name for c in want.values()}
    handles = [m.register_forward_pre_hook(pre(n), with_kwargs=True) for n, m in t_mods.items() if n in names]
    try:
        x = [torch.from_numpy(np.array(a, copy=True)) for a in inputs]
        with torch.no_grad():
            torch_model(*x)
    finally:
        for h in handles:
            h.remove()
        ta._restore_state(torch_model, t_named, t_saved)
        ja._restore_state(jittor_model, j_named, j_saved)
