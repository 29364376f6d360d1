"""Monkeypatching primitives for planting faults in the Jittor port; every one restores what it replaced.

A plant is a context manager. Class and module attributes are swapped and put back on exit (deleted again
when they were inherited); edits to a model instance only touch models built while the plant is active.
Framework modules are imported lazily, when a plant is entered.
"""
from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

__all__ = ["Probe", "FaultNotApplicable", "patch_attr", "wrap_method", "after_init", "on_model", "on_first_arg",
           "rebind_init", "submodule", "override_execute", "on_call", "jt_module", "port_module"]

_MISSING = object()


class FaultNotApplicable(RuntimeError):
    """The port no longer has what a fault patches (renamed attribute): the fault cannot be planted."""


class Probe:
    """Counts how often a planted fault actually ran, so an unexercised fault is reported, not scored."""

    def __init__(self) -> None:
        self.hits = 0

    def hit(self) -> None:
        self.hits += 1


def port_module(name: str) -> types.ModuleType:
    """``jittor_impl.<name>`` (imports Jittor)."""
    return importlib.import_module(f"jittor_impl.{name}")


@contextmanager
def patch_attr(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` for a class or module, always restored (deleted again if it was inherited)."""
    if not hasattr(owner, name):
        raise FaultNotApplicable(f"{getattr(owner, '__name__', owner)!s} has no attribute {name!r}")
    old = vars(owner).get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


def wrap_method(cls: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
                ) -> AbstractContextManager[None]:
    """Replace ``cls.name`` by ``make(original)`` (an unbound function taking ``self`` first)."""
    if not hasattr(cls, name):
        raise FaultNotApplicable(f"{cls.__name__} has no method {name!r}")
    return patch_attr(cls, name, make(getattr(cls, name)))


def after_init(cls: type, edit: Callable[[Any], None]) -> AbstractContextManager[None]:
    """Run ``edit(instance)`` at the end of every ``cls(...)`` built while the patch is active."""
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            orig(self, *args, **kwargs)
            edit(self)
        return __init__
    return wrap_method(cls, "__init__", make)


def on_model(edit: Callable[[Any], None]) -> AbstractContextManager[None]:
    """Edit every GOLD-YOLO Jittor model right after it is built (before the weights are loaded)."""
    return after_init(port_module("model").Model, edit)


def on_first_arg(cls: type, name: str, change: Callable[[Any], Any], probe: Probe) -> AbstractContextManager[None]:
    """``cls.<name>`` called with its first argument replaced by ``change(argument)``; each call is a probe hit."""
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: Any, first: Any, *args: Any, **kwargs: Any) -> Any:
            probe.hit()
            return orig(self, change(first), *args, **kwargs)
        return method
    return wrap_method(cls, name, make)


def rebind_init(cls: type, change: Callable[[dict[str, Any]], None]) -> AbstractContextManager[None]:
    """Call ``cls.__init__`` with its bound arguments edited by ``change(arguments)``."""
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(orig)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            change(bound.arguments)
            orig(*bound.args, **bound.kwargs)
        return __init__
    return wrap_method(cls, "__init__", make)


def submodule(model: Any, path: str) -> Any:
    """The module at dotted ``path`` of a Jittor model."""
    mods = dict(model.named_modules())
    if path not in mods:
        raise FaultNotApplicable(f"the model has no module {path!r}")
    return mods[path]


def override_execute(module: Any, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Give one module instance its own ``execute`` (Jittor's ``__call__`` looks it up on the instance)."""
    module.execute = make(module.execute)


def on_call(fn: Callable[..., Any], probe: Probe) -> Callable[..., Any]:
    """``fn`` that also counts its calls on ``probe``."""
    def call(*args: Any, **kwargs: Any) -> Any:
        probe.hit()
        return fn(*args, **kwargs)
    return call


def jt_module() -> Any:
    """The ``jittor`` package, imported the project way."""
    import aligner.env  # noqa: F401,PLC0415 - must precede the jittor import
    import jittor  # noqa: PLC0415
    return jittor
