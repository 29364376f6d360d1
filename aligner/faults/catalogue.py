"""Realistic PyTorch-to-Jittor porting faults of GOLD-YOLO, as data (``catalogue.toml``).

Each :class:`Fault` names one small variant of the correct port (``jittor_impl``), the finding type and
the location the aligner should report, and the plant (:mod:`aligner.faults.plants`) that makes it: a
monkeypatch of a ``jittor_impl`` class or module attribute, or an edit of the freshly built model, always
undone on exit, so the correct port stays untouched. The Jittor model must be built inside the plant (the
pair does that during a run). Nothing here imports a framework at import time.

Locations: a module path (the fault lives in that module or below it), ``"loss"``, ``"assigner"``,
``"anchors"`` or ``""`` (the whole model). :func:`location_matches` is the rule the benchmark uses.
"""
from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from aligner.records import FindingType

from . import plants as P
from .patching import FaultNotApplicable, Probe

__all__ = ["Fault", "Probe", "FaultNotApplicable", "catalogue", "get_fault", "location_matches", "FAST_SUBSET"]


@dataclass(frozen=True)
class Fault:
    """One catalogued porting fault and what the aligner should say about it."""
    name: str
    category: str                      # graph | numerics | structure | init | loss
    expected_type: FindingType
    expected_location: str
    description: str
    description_zh: str
    plant: str                         # plants.PLANTS key: plant_<name>(probe, **plant_args)
    plant_args: tuple[tuple[str, Any], ...] = ()
    also_types: tuple[FindingType, ...] = ()   # other types that name the same fault correctly
    also_locations: tuple[str, ...] = ()       # other locations that are the same place
    steps: int = 0                     # > 0: only visible after optimizer steps (multi-step mode)
    odd_size: bool = False             # needs an input size that is not a multiple of 32
    options: tuple[tuple[str, Any], ...] = ()  # pair options the fault needs (both sides)
    note: str = ""

    @property
    def types(self) -> tuple[FindingType, ...]:
        return (self.expected_type, *self.also_types)

    @property
    def locations(self) -> tuple[str, ...]:
        return (self.expected_location, *self.also_locations)

    def accepts(self, ftype: str, location: str) -> bool:
        """True when a finding of ``ftype`` at ``location`` names this fault."""
        return ftype in {t.value for t in self.types} and any(location_matches(p, location) for p in self.locations)

    @contextmanager
    def planted(self) -> Iterator[Probe]:
        """Plant the fault; yields a :class:`Probe` whose ``hits`` tell whether the fault code ran."""
        probe = Probe()
        with P.PLANTS[self.plant](probe, **dict(self.plant_args)):
            yield probe


def location_matches(pattern: str, location: str) -> bool:
    """``""`` is the whole model (exact); a glob matches by fnmatch; a path matches itself and below it."""
    if pattern == "":
        return location == ""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(location, pattern)
    return location == pattern or location.startswith(pattern + ".")


# ---------------------------------------------------------------------------------------------
# the catalogue


def _fault(row: dict[str, Any]) -> Fault:
    return Fault(row["name"], row["category"], FindingType(row["type"]), row["location"], row["description"],
                 row["description_zh"], row["plant"], tuple(row.get("plant_args", {}).items()),
                 tuple(FindingType(t) for t in row.get("also_types", ())), tuple(row.get("also_locations", ())),
                 row.get("steps", 0), row.get("odd_size", False), tuple(row.get("options", {}).items()),
                 row.get("note", ""))


@cache
def catalogue() -> tuple[Fault, ...]:
    """Every catalogued fault, in table order (read once from ``catalogue.toml``)."""
    doc = tomllib.loads(files(__package__).joinpath("catalogue.toml").read_text(encoding="utf-8"))
    return tuple(_fault(row) for row in doc["fault"])


# the fast subset (test_faults_fast): one or two faults per layer of a port, cheap at a small input
FAST_SUBSET: tuple[str, ...] = ("detach_neck", "eval_before_grad", "jittor_adaptive_pool", "bn_family_isinstance",
                                "neck_width_scaled", "proj_trainable", "double_sigmoid")


def get_fault(name: str) -> Fault:
    """The catalogued fault called ``name``."""
    for f in catalogue():
        if f.name == name:
            return f
    raise KeyError(f"unknown fault {name!r}; known: {', '.join(f.name for f in catalogue())}")

