"""Synthetic traces for core unit tests (pure numpy; no framework)."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from aligner.records import (CallRecord, GradStatus, ModuleInfo, ParamInfo, ParamKind, Trace,
                             act_key, gact_key, param_key, pgrad_key)

# (name, type, output shape, inputs (act keys of producers or input/0))
CALLS = [
    ("backbone.0", "Conv2d", (1, 4, 8, 8), ("input/0",)),
    ("backbone.1", "BatchNorm2d", (1, 4, 8, 8), ("act/0/",)),
    ("backbone", "Sequential", (1, 4, 8, 8), ("input/0",)),
    ("neck.conv", "Conv2d", (1, 4, 4, 4), ("act/1/",)),
    ("neck", "Neck", (1, 4, 4, 4), ("act/1/",)),
    ("head.pred", "Conv2d", (1, 2, 4, 4), ("act/3/",)),
    ("head", "Head", (1, 2, 4, 4), ("act/3/",)),
    ("", "Model", (1, 2, 4, 4), ("input/0",)),
]
ALIAS = {2: "act/1/", 4: "act/3/", 6: "act/5/", 7: "act/5/"}
PARAMS = [  # name, module, shape, kind
    ("backbone.0.weight", "backbone.0", (4, 3, 3, 3), ParamKind.TRAINABLE),
    ("backbone.1.weight", "backbone.1", (4,), ParamKind.TRAINABLE),
    ("backbone.1.bias", "backbone.1", (4,), ParamKind.TRAINABLE),
    ("backbone.1.running_mean", "backbone.1", (4,), ParamKind.BUFFER),
    ("backbone.1.running_var", "backbone.1", (4,), ParamKind.BUFFER),
    ("neck.conv.weight", "neck.conv", (4, 4, 3, 3), ParamKind.TRAINABLE),
    ("head.pred.weight", "head.pred", (2, 4, 1, 1), ParamKind.TRAINABLE),
    ("head.pred.bias", "head.pred", (2,), ParamKind.TRAINABLE),
]
MODULES = [("", "Model", 0), ("backbone", "Sequential", 1), ("backbone.0", "Conv2d", 2),
           ("backbone.1", "BatchNorm2d", 2), ("neck", "Neck", 1), ("neck.conv", "Conv2d", 2),
           ("head", "Head", 1), ("head.pred", "Conv2d", 2)]


def make_trace(framework: str = "torch", state: str = "perturbed", seed: int = 0,
               dtype: str = "float32", zero_head: bool = False) -> Trace:
    """A consistent trace; every call output and output grad is a random array."""
    rng = np.random.default_rng(seed)
    npd = np.float32 if dtype == "float32" else np.float64
    calls, arrays = [], {}
    arrays["input/0"] = rng.standard_normal((1, 3, 8, 8)).astype(npd)
    for order, (name, typ, shape, inputs) in enumerate(CALLS):
        alias = ALIAS.get(order)
        calls.append(CallRecord(order, name, typ, 0, "", shape, dtype, True, inputs, True, alias))
        if alias is None:
            arrays[act_key(order)] = rng.standard_normal(shape).astype(npd)
            arrays[gact_key(order)] = (rng.standard_normal(shape) * 0.1).astype(npd)
    params = []
    for name, module, shape, kind in PARAMS:
        val = rng.standard_normal(shape).astype(npd)
        if zero_head and name == "head.pred.weight":
            val[...] = 0
        arrays[param_key(name)] = val
        status = GradStatus.NONE
        gmax = None
        if kind == ParamKind.TRAINABLE:
            if zero_head and not name.startswith("head."):
                g = np.zeros(shape, npd)
                status = GradStatus.ZERO
            else:
                g = (rng.standard_normal(shape) * 0.01).astype(npd)
                status = GradStatus.NONZERO
            arrays[pgrad_key(name)] = g
            gmax = float(np.abs(g).max())
        params.append(ParamInfo(name, shape, dtype, kind, int(np.prod(shape)), module,
                                grad_status=status, grad_max_abs=gmax))
    if zero_head:  # nothing upstream of a zero head gets a gradient
        for o in (0, 1, 3):
            arrays[gact_key(o)][...] = 0
    modules = []
    for name, typ, depth in MODULES:
        own_t = sum(int(np.prod(s)) for n, m, s, k in PARAMS if m == name and k == ParamKind.TRAINABLE)
        own_b = sum(int(np.prod(s)) for n, m, s, k in PARAMS if m == name and k == ParamKind.BUFFER)
        flags = {"bn_eps": 1e-3, "bn_momentum": 0.03} if typ == "BatchNorm2d" else {}
        modules.append(ModuleInfo(name, typ, depth, True, flags, own_t, own_b, 0, 0))
    meta = {"framework": framework, "state": state, "dtype": dtype, "seed": 0, "pair": "synthetic",
            "config": {"img_size": 8}}
    return Trace(meta, calls, params, modules, arrays, {}, {})


def port_of(ref: Trace, noise: float = 1e-7, seed: int = 1) -> Trace:
    """A 'correct port': the same trace with relative noise on every float array."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, a in ref.arrays.items():
        if k.startswith("param/") or k.startswith("input/"):
            arrays[k] = a.copy()
        else:
            arrays[k] = (a * (1 + noise * rng.standard_normal(a.shape))).astype(a.dtype)
    return replace(ref, meta={**ref.meta, "framework": "jittor"}, arrays=arrays,
                   params=list(ref.params), modules=copy.deepcopy(ref.modules), calls=list(ref.calls))


def set_param(trace: Trace, name: str, **changes) -> Trace:
    params = [replace(p, **changes) if p.name == name else p for p in trace.params]
    return replace(trace, params=params)
