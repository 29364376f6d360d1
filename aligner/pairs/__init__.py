"""Registered model pairs. Names: ``small`` and ``gold_yolo-n|s|m|l``; importing this package loads
no framework (pairs import torch / jittor inside their build methods)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..errors import UsageError
from ..rules.pair import PairRules
from .base import Pair, PairInputs

__all__ = ["Pair", "PairInputs", "PAIR_NAMES", "get_pair", "rules_for", "parse_settings"]

PAIR_NAMES: tuple[str, ...] = ("small", "gold_yolo-n", "gold_yolo-s", "gold_yolo-m", "gold_yolo-l")


def get_pair(name: str, **options: Any) -> Pair:
    """Build the pair called ``name`` with pair options (seed, dtype, batch, img_size, ...)."""
    options = {k: v for k, v in options.items() if v is not None}
    try:
        if name == "small":
            from .small import SmallPair  # noqa: PLC0415
            return SmallPair(**options)
        if name.startswith("gold_yolo"):
            size = name.partition("-")[2] or options.pop("size", "n")
            options.pop("size", None)
            from .gold_yolo import GoldYoloPair  # noqa: PLC0415
            return GoldYoloPair(size=size, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pair {name!r}: {exc}", slug="pair-options") from exc
    raise UsageError(f"unknown pair {name!r}; registered pairs: {', '.join(PAIR_NAMES)}", slug="unknown-pair")


def rules_for(name: str | None) -> PairRules | None:
    """The finding rules of the registered pair ``name`` (a trace's ``meta["pair"]``); None for any other
    name (``custom`` models have no pair rules)."""
    if not name or not any(name == n or name.startswith(n.partition("-")[0] + "-") for n in PAIR_NAMES):
        return None
    return get_pair(name).rules()


def _pair_class(name: str) -> type[Pair]:
    if name == "small":
        from .small import SmallPair  # noqa: PLC0415
        return SmallPair
    if name in PAIR_NAMES:
        from .gold_yolo import GoldYoloPair  # noqa: PLC0415
        return GoldYoloPair
    raise UsageError(f"unknown pair {name!r}; registered pairs: {', '.join(PAIR_NAMES)}", slug="unknown-pair")


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_settings(name: str, items: Iterable[str]) -> dict[str, Any]:
    """``--set key=value`` items -> pair options of ``name`` (true/false, numbers and words are typed;
    a key the pair does not have is a one-line UsageError naming the ones it has)."""
    known = sorted(f.name for f in dataclasses.fields(_pair_class(name))
                   if f.name != "size" and f.metadata.get("setting", True))
    out: dict[str, Any] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            key, sep, text = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise UsageError(f"--set {part!r}: expected key=value", slug="pair-options")
            if key not in known:
                raise UsageError(f"--set {key}: {name} has no such option; options: {', '.join(known)}",
                                 slug="pair-options")
            out[key] = _value(text)
    return out
