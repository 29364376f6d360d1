"""What one run of a registered pair checks and how (:class:`RunConfig`), and which Jittor model it checks
(:class:`Port`): frozen values, changed with ``dataclasses.replace``."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .tolerances import Tolerances

__all__ = ["RunConfig", "Port", "ISOLATE_MODES"]

ISOLATE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class RunConfig:
    """Options of :func:`aligner.api.run` that are not options of the pair itself.

    ``states``: the model states to check (empty: all of the pair's). ``noise_floor``: also capture the
    torch reference at the other precision and judge each tensor against its own rounding error.
    ``stats_only``: keep statistics, not tensors. ``steps`` > 0: also run that many optimizer steps.
    ``tolerances`` / ``mapping``: how tensors are judged and which modules are paired. ``cache``: where
    the torch reference's traces are reused from (:mod:`aligner.reference_cache`): True the default
    directory (``$ALIGNER_CACHE_DIR`` or ``~/.cache/aligner/reference``), a path that directory, False
    capture them every run; it changes no result, only whether the reference is captured again.
    ``isolate``: replay every matched module on the reference's own inputs (module isolation,
    :mod:`aligner.isolation`), so each module's own deviation is found even behind an earlier one:
    ``"auto"`` in the states whose end-to-end comparison finds a difference (a matching port pays nothing),
    ``"always"`` (or True) in every state, ``"never"`` (or False) not at all.
    """
    states: tuple[str, ...] = ()
    noise_floor: bool = True
    stats_only: bool = False
    steps: int = 0
    tolerances: Tolerances | Mapping[str, Any] | None = None
    mapping: Mapping[str, str] | str | Path | None = None
    cache: bool | str | Path = True
    isolate: bool | str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", tuple(self.states or ()))  # a list or None given by a caller
        mode = {True: "always", False: "never"}.get(self.isolate, self.isolate)  # type: ignore[call-overload]
        if mode not in ISOLATE_MODES:
            raise ValueError(f"isolate must be one of {', '.join(ISOLATE_MODES)} (or True/False), not {self.isolate!r}")
        object.__setattr__(self, "isolate", mode)

    def states_of(self, pair: Any) -> tuple[str, ...]:
        """The states a run of ``pair`` checks, in order."""
        return self.states or tuple(pair.states)

    def capture_key(self) -> tuple[Any, ...]:
        """What the torch side's captures depend on (the judging options do not change them)."""
        return self.states, self.noise_floor, self.stats_only, self.steps

    @classmethod
    def split(cls, base: RunConfig | None, options: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
        """``options`` split into a config (``base`` with the config fields among them replaced) and the
        rest, the pair's own options (seed, dtype, num_classes, img_size, batch, ...)."""
        names = {f.name for f in fields(cls)}
        mine = {k: (tuple(v or ()) if k == "states" else v) for k, v in options.items() if k in names}
        return replace(base or cls(), **mine), {k: v for k, v in options.items() if k not in names}



@dataclass(frozen=True)
class Port:
    """The Jittor side of a run: the pair's own build with ``options`` (e.g. a deliberate fault of the
    small pair); ``factory``, a function building the user's own port (called seeded, like the pair's
    build; its fresh values are checked against the reference's init, and it builds the float64 twin);
    or ``model``, a model the caller built (its initial values are then not checked: it may already
    hold trained or loaded weights). ``loss``: a function building the user's own loss object (``--port-loss``,
    :meth:`aligner.pairs.base.Pair.port_loss_fn`), used for the port's capture and checked alone on the
    reference's head outputs (:mod:`aligner.adapters.loss_check`); None: the pair's own Jittor loss."""
    options: Mapping[str, Any] = field(default_factory=dict)
    model: Any = None
    factory: Callable[[], Any] | None = None
    loss: Callable[[], Any] | None = None
