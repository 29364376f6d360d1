"""The cache key of :func:`aligner.api.align`'s torch side: any torch model on given inputs.

A registered pair names everything that determines its reference (:class:`aligner.reference.Reference`); a model
handed to ``align`` does not, so the key is read off the objects: the source of every module class the model is
made of (outside torch itself) and of the loss, the exact values of every parameter and buffer, each module's
train/eval mode and settings (its public non-tensor attributes), the inputs and targets, the capture options, the
aligner's own reference-side code and the library versions. What cannot be read off is not guessed: a loss that
is not a plain function, or one whose closure or defaults hold anything but numbers, strings and arrays, a module
holding a function or another object as an attribute, targets that are not numpy: no key, and the run captures as
before.
"""
from __future__ import annotations

import platform
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .reference import _ROOT, REFERENCE_SOURCES, _module_files, _source_paths, sources_unchanged
from .reference_cache import digest_arrays, digest_files, digest_tree

__all__ = ["model_reference_key", "ALIGN_CACHE_FORMAT"]

# Bumped when what an align trace holds changes without any source file changing.
ALIGN_CACHE_FORMAT = 1
_PLAIN = (int, float, complex, str, bytes, bool, type(None), np.ndarray, np.generic)


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, _PLAIN)


def _loss_identity(loss: Callable[..., Any] | None, seed: int) -> tuple[dict[str, Any], list[str]] | None:
    """(what identifies the torch loss, the modules defining it); None when it cannot be identified."""
    if loss is None:
        return {"probe": seed}, []
    fn = loss
    if not isinstance(fn, types.FunctionType):
        return None
    cells = [c.cell_contents for c in (fn.__closure__ or ())]
    extra = [*cells, list(fn.__defaults__ or ()), dict(fn.__kwdefaults__ or {})]
    if not _plain(extra):
        return None
    return {"function": f"{fn.__module__}.{fn.__qualname__}", "bound": digest_tree(extra)}, [fn.__module__]


def _module_config(adapter: Any, module: Any) -> dict[str, Any] | None:
    """A module's own settings (eps, momentum, stride, inplace, ...: its public attributes that are not tensors
    or sub-modules); None when one cannot be pinned down (a function or an object set on the instance)."""
    out: dict[str, Any] = {}
    for k, v in vars(module).items():
        if k.startswith("_") or adapter._is_tensor(v) or hasattr(v, "named_modules"):
            continue
        if _plain(v):
            out[k] = v
        elif type(v).__module__.partition(".")[0] == "torch" and not callable(v):
            out[k] = repr(v)  # a dtype or a device
        else:
            return None
    return out


def model_reference_key(adapter: Any, model: Any, inputs: Sequence[np.ndarray], targets: Any,
                        loss: Callable[..., Any] | None, *, dtype: str, seed: int, full: bool,
                        versions: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any] | None:
    """Everything that determines the torch trace of ``align`` (``adapter``: the torch adapter); None when the
    loss cannot be identified or the reference-side code changed on disk since this process loaded it."""
    ident = _loss_identity(loss, seed)
    if ident is None or not _plain(targets):
        return None
    loss_id, loss_modules = ident
    named = adapter._named_modules(model)
    configs = [_module_config(adapter, m) for _, m in named]
    if any(c is None for c in configs):
        return None
    names = {type(m).__module__ for _, m in named} | set(loss_modules)
    names = {n for n in names if n and n.partition(".")[0] != "torch"}  # torch's own code: its version
    files = _source_paths(REFERENCE_SOURCES) + [f for n in sorted(names) for f in _module_files(n)]
    files.append(Path(__file__))
    if not sources_unchanged(files):
        return None
    return {
        "cache_format": ALIGN_CACHE_FORMAT, "kind": "align",
        "model": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "modules": [[n, f"{type(m).__module__}.{type(m).__qualname__}", adapter._module_training(m)]
                              for n, m in named],
                  "config": digest_tree(configs), "state": digest_arrays(adapter.state_arrays(model))},
        "loss": loss_id,
        "inputs": digest_tree({"inputs": list(inputs), "targets": targets}),
        "capture": {"dtype": dtype, "seed": seed, "full": full},
        "code": digest_files(files, _ROOT),
        "versions": {**versions, "numpy": np.__version__, "python": platform.python_version()},
        "environment": environment,
    }
