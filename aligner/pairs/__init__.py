"""Registered model pairs. Names: ``small`` and ``gold_yolo-n|s|m|l``; importing this package loads
no framework (pairs import torch / jittor inside their build methods)."""
from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..rules.pair import PairRules
from .base import Pair, PairInputs

__all__ = ["Pair", "PairInputs", "PAIR_NAMES", "get_pair", "rules_for"]

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
