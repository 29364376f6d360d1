"""Load a user's own model port from the command line: ``path/to/file.py:factory`` or ``package.module:factory``.

A file's directory goes first on ``sys.path`` (its sibling modules import as in the user's own scripts) and
the file is registered in ``sys.modules`` under its stem, so code that looks its module up by name works; a
dotted module is imported with the current directory on the path. Every failure is a one-line UsageError
naming what to fix. Nothing here imports a framework: the caller imports Jittor (through aligner.env) first.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from aligner.errors import UsageError

__all__ = ["load_factory", "parse_port_args", "build_port", "build_port_loss", "is_jittor_module", "first_line"]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _split(spec: str, option: str = "--port") -> tuple[str, str]:
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr or not attr.replace(".", "_").isidentifier():
        raise UsageError(f"{option} expects PATH.py:FACTORY or package.module:FACTORY, got {spec!r}", slug="port")
    return where, attr


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"port file not found: {path}", slug="port")
    path = path.resolve()
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path} as a Python module", slug="port")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: name its error in one line
        sys.modules.pop(name, None)
        raise UsageError(f"importing port file {path} failed: {first_line(exc)}", slug="port") from exc
    return module


def _import_dotted(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):  # the module itself, not one of its imports
            raise UsageError(f"port module {name!r} not found (from {cwd})", slug="port") from exc
        raise UsageError(f"importing port module {name} failed: {first_line(exc)}", slug="port") from exc
    except Exception as exc:  # noqa: BLE001 - the user's code: name its error in one line
        raise UsageError(f"importing port module {name} failed: {first_line(exc)}", slug="port") from exc


def load_factory(spec: str, option: str = "--port") -> Callable[..., Any]:
    """The callable named by ``spec`` (``file.py:factory`` or ``package.module:factory``; ``attr.sub``
    reaches into a class or object); ``option`` names the command-line option in errors."""
    where, attr = _split(spec, option)
    module = _import_file(Path(where)) if _is_file_spec(where) else _import_dotted(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{where} has no attribute {attr!r}", slug="port")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{where}:{attr} is a {type(obj).__name__}, not a callable factory", slug="port")
    return obj


def parse_port_args(text: str | None, option: str = "--port-args") -> dict[str, Any]:
    """``--port-args`` (or ``option``): a JSON object of keyword arguments for the factory (None -> none)."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}", slug="port") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{option} must be a JSON object of keyword arguments, got {type(data).__name__}",
                         slug="port")
    return data


def is_jittor_module(obj: Any) -> bool:
    """``obj`` is a Jittor ``Module`` (checked by class, without importing Jittor)."""
    return any(c.__name__ == "Module" and c.__module__.split(".")[0] == "jittor" for c in type(obj).__mro__)


def build_port(spec: str, kwargs: dict[str, Any] | None = None, *,
               accepts: Callable[[Any], bool] = is_jittor_module) -> Any:
    """Call the factory of ``spec`` with ``kwargs``; the model it returns must pass ``accepts``."""
    return _built(spec, kwargs, "--port", "port factory", accepts, "a Jittor Module")


def _built(spec: str, kwargs: dict[str, Any] | None, option: str, what: str, accepts: Callable[[Any], bool],
           expected: str) -> Any:
    """What the factory of ``spec`` returns for ``kwargs``; its error, or a value ``accepts`` refuses, is one line."""
    factory = load_factory(spec, option)
    try:
        obj = factory(**(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - the user's code: name its error in one line
        raise UsageError(f"{what} {spec} raised {first_line(exc)}", slug="port") from exc
    if not accepts(obj):
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        raise UsageError(f"{what} {spec} returned {kind}, not {expected}", slug="port")
    return obj


def build_port_loss(spec: str, kwargs: dict[str, Any] | None = None) -> Any:
    """``--port-loss``: the user's loss object ``L`` from the factory of ``spec`` called with ``kwargs``; it must be
    callable as ``L(head, targets) -> (total, items)`` (:meth:`aligner.pairs.base.Pair.port_loss_fn`)."""
    return _built(spec, kwargs, "--port-loss", "port loss factory", callable,
                  "a callable L(head, targets) -> (total, items)")
