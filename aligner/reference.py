"""The torch side of a pair run, built and captured once per configuration.

The reference does not depend on the Jittor port, so a :class:`Reference` built for one pair and run
configuration can serve every run of any port against it (the fault catalogue reuses one per
configuration instead of recapturing the torch side for every fault). Weights always flow torch ->
Jittor: the reference's model is built once, put into each state, and those states are what both
sides load.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import UsageError
from .pairs import Pair
from .records import Trace
from .runconfig import RunConfig

__all__ = ["Reference"]

Weights = dict[str, dict[str, np.ndarray]]


class Reference:
    """The torch side of ``pair`` under ``config``: the model (built once), each state's weights, and
    each state's captures (the reference, and for the noise floor the reference at the other precision).

    With ``keep`` the captures are kept for the next run against the same configuration; without, each
    is handed out once and not held (a GOLD-YOLO state at 640 holds several GB of activations).
    ``captures`` counts the torch captures made.
    """

    def __init__(self, pair: Pair, config: RunConfig, *, keep: bool = False) -> None:
        self.pair, self.config, self.keep = pair, config, keep
        self.states = config.states_of(pair)
        self.captures = 0
        self._model: Any = None
        self._init: dict[str, Any] | None = None
        self._weights: Weights | None = None
        self._kept: dict[tuple[str, str], Trace | None] = {}

    def serves(self, pair: Pair, config: RunConfig) -> bool:
        """True when this reference is the torch side of a run of ``pair`` under ``config``."""
        return pair == self.pair and config.capture_key() == self.config.capture_key()

    def check(self, pair: Pair, config: RunConfig) -> None:
        """Raise UsageError unless this reference :meth:`serves` the run."""
        if not self.serves(pair, config):
            raise UsageError(f"the reference was captured for {self.pair} with {self.config.capture_key()}, "
                             f"not for {pair} with {config.capture_key()}", slug="usage")

    # ----- built once ----------------------------------------------------------------------------
    def model(self) -> Any:
        """The torch model, built once, with its initialisation summary taken right after the build."""
        if self._model is None:
            from .capture import reference_model  # noqa: PLC0415 - lazy: imports torch
            self._model, self._init = reference_model(self.pair)
        return self._model

    def weights(self) -> Weights:
        """Parameters + buffers of the torch model in each state: what both sides load."""
        if self._weights is None:
            from .capture import reference_states  # noqa: PLC0415
            self._weights = reference_states(self.pair, self.model(), list(self.states))
        return self._weights

    # ----- captured once per state -----------------------------------------------------------------
    def trace(self, state: str) -> Trace:
        """The reference's trace of ``state`` (the init check is recorded with the first state only)."""
        return self._once(("reference", state), lambda: self._capture(state))  # type: ignore[return-value]

    def other_trace(self, state: str) -> Trace | None:
        """The reference at the other precision (None without the noise floor): float64 for a float32
        run (rounded to float32 to halve its memory), float32 for a float64 run."""
        return self._once(("other", state), lambda: self._capture_other(state))

    def _once(self, key: tuple[str, str], make: Callable[[], Trace | None]) -> Trace | None:
        if key in self._kept:
            return self._kept[key]
        trace = make()
        if self.keep:
            self._kept[key] = trace
        return trace

    def _extra(self) -> dict[str, Any]:
        return {"steps": self.config.steps} if self.config.steps else {}

    def _capture(self, state: str) -> Trace:
        from .capture import capture_in_process  # noqa: PLC0415
        model, weights = self.model(), self.weights()
        self.captures += 1
        return capture_in_process(self.pair, "torch", states=[state], full=not self.config.stats_only, model=model,
                                  weights={state: weights[state]},
                                  init=self._init if state == self.states[0] else False, **self._extra())[state]

    def _capture_other(self, state: str) -> Trace | None:
        other = self._other_pair()
        if other is None:
            return None
        from .capture import capture_in_process  # noqa: PLC0415
        self.captures += 1
        trace = capture_in_process(other, "torch", states=[state], full=not self.config.stats_only, init=False,
                                   **self._extra())[state]
        return _compact(trace) if self.pair.dtype == "float32" else trace

    def _other_pair(self) -> Pair | None:
        if not self.config.noise_floor:
            return None
        try:
            return replace(self.pair, dtype="float64" if self.pair.dtype == "float32" else "float32")
        except Exception:  # noqa: BLE001 - a pair that cannot be copied gets no noise floor, never a crash
            return None


def _compact(trace: Trace) -> Trace:
    """The float64 reference with its tensors rounded to float32 (half the memory). It only measures
    errors of float32 runs, whose bounds are >= 1e-5 relative, far above float32 rounding (6e-8)."""
    arrays = {k: (v.astype(np.float32) if v.dtype == np.float64 and not k.startswith("stage/") else v)
              for k, v in trace.arrays.items()}
    return replace(trace, arrays=arrays)
