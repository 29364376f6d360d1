"""The torch side of a pair run, built and captured once per configuration.

The reference does not depend on the Jittor port, so a :class:`Reference` built for one pair and run
configuration can serve every run of any port against it (the fault catalogue reuses one per
configuration instead of recapturing the torch side for every fault). Weights always flow torch ->
Jittor: the reference's model is built once, put into each state, and those states are what both
sides load. With a :class:`~aligner.reference_cache.ReferenceCache` the traces also outlive the process:
they are looked up under a key of everything that determines them (:meth:`Reference.cache_key`) and
stored after a capture, so a rerun after an edit of the port captures only the port.
"""
from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .pairs import Pair
from .records import Trace
from .reference_cache import ReferenceCache, digest_arrays, digest_files, digest_tree
from .runconfig import RunConfig

__all__ = ["Reference", "compact", "CACHE_FORMAT", "REFERENCE_SOURCES", "reference_sources", "sources_unchanged"]

Weights = dict[str, dict[str, np.ndarray]]

# Bumped when what a cached trace holds changes without any source file below changing.
CACHE_FORMAT = 1
_ROOT = Path(__file__).resolve().parent.parent
# The code a torch capture runs through, besides the model's and the pair's own (see reference_sources).
REFERENCE_SOURCES: tuple[str, ...] = (
    "reference_torch", "aligner/adapters/torch_adapter.py", "aligner/adapters/base.py",
    "aligner/adapters/recording.py", "aligner/capture.py", "aligner/records.py", "aligner/trace_io.py",
    "aligner/reductions.py", "aligner/fused_kernel.py", "aligner/weights.py", "aligner/initcheck.py",
    "aligner/comparability.py", "aligner/adapters/__init__.py", "aligner/pairs/base.py", "aligner/reference.py",
    "aligner/reference_cache.py",
)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _source_paths(rels: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for rel in rels:
        p = _ROOT / rel
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return files


# Each source file as this process first saw it (the shared ones from import time on). The key hashes
# the files on disk, but the code that runs is what was imported: a file changed since then could
# store a trace of the old code under the new code's key, so such a process does not use the cache.
_SEEN: dict[Path, tuple[int, int] | None] = {p: _stamp(p) for p in _source_paths(REFERENCE_SOURCES)}


def sources_unchanged(files: list[Path]) -> bool:
    """Whether none of ``files`` changed on disk since this process first saw it."""
    same = True
    for f in files:
        now = _stamp(f)
        if _SEEN.setdefault(f, now) != now:
            same = False
    return same


def _module_files(module_name: str) -> list[Path]:
    """The source of a module; for one outside the aligner, its whole top-level package (a model's
    layers live in sibling files of the module that defines the model class)."""
    mod = sys.modules.get(module_name)
    path = Path(getattr(mod, "__file__", "") or "")
    if not path.is_file():
        return []
    top = sys.modules.get(module_name.partition(".")[0])
    top_file = Path(getattr(top, "__file__", "") or "")
    if module_name.partition(".")[0] != "aligner" and top_file.name == "__init__.py":
        return sorted(top_file.parent.rglob("*.py"))
    return [path]


def _sibling_imports(module_name: str) -> set[str]:
    """Modules of the same package whose functions or classes ``module_name`` imported (a pair's stage
    summaries may use its helper module's constants and functions)."""
    mod = sys.modules.get(module_name)
    package = module_name.rpartition(".")[0] + "."
    found = {getattr(v, "__module__", None) for v in vars(mod).values()} if mod is not None else set()
    return {n for n in found if isinstance(n, str) and n.startswith(package)}


def reference_sources(pair: Pair, model: Any = None) -> list[Path]:
    """Source files whose code determines the reference's traces: :data:`REFERENCE_SOURCES`, the pair's
    module and the modules of its package it imports from, and the modules defining the torch model's
    class and the torch loss."""
    files = _source_paths(REFERENCE_SOURCES)
    names = {type(pair).__module__, *_sibling_imports(type(pair).__module__)}
    if model is not None:
        names.add(type(model).__module__)
    names.add(getattr(pair.torch_loss(), "__module__", None) or type(pair).__module__)
    for name in sorted(names):
        files += _module_files(name)
    return files


class Reference:
    """The torch side of ``pair`` under ``config``: the model (built once), each state's weights, and
    each state's captures (the reference, and for the noise floor the reference at the other precision).

    With ``keep`` the captures are kept for the next run against the same configuration; without, each
    is handed out once and not held (a GOLD-YOLO state at 640 holds several GB of activations).
    ``captures`` counts the torch captures made. With a ``cache`` each trace is looked up there before
    it is captured and stored after (the model is still built: its states are what the port loads).
    """

    def __init__(self, pair: Pair, config: RunConfig, *, keep: bool = False,
                 cache: ReferenceCache | None = None) -> None:
        self.pair, self.config, self.keep, self.cache = pair, config, keep, cache
        self.states = config.states_of(pair)
        self.captures = 0
        self._model: Any = None
        self._init: dict[str, Any] | None = None
        self._weights: Weights | None = None
        self._kept: dict[tuple[str, str], Trace | None] = {}
        self._key_base: dict[str, Any] | None = None
        self._sources: list[Path] = []

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
        if self._other_pair() is None:
            return None
        return self._once(("other", state), lambda: self._capture_other(state))

    def _once(self, key: tuple[str, str], make: Callable[[], Trace | None]) -> Trace | None:
        if key in self._kept:
            return self._kept[key]
        trace = self._cached(key, make)
        if self.keep:
            self._kept[key] = trace
        return trace

    def _cached(self, key: tuple[str, str], make: Callable[[], Trace | None]) -> Trace | None:
        if self.cache is None:
            return make()
        which, state = key
        ckey = self.cache_key(state, which)
        if ckey is None:  # the reference's code changed under this process: neither trust nor store
            return make()
        trace = self.cache.load(ckey)
        if trace is None:
            trace = make()
            if trace is not None:
                self.cache.store(ckey, trace)
        return trace

    # ----- the cache key ---------------------------------------------------------------------------
    def cache_key(self, state: str, which: str = "reference") -> dict[str, Any] | None:
        """Everything that determines the trace ``which`` ("reference" or "other") of ``state``: the pair
        and its options, the capture options, this state's weights, the inputs, the code of the torch
        side and the library versions. None when that code changed on disk since this process loaded it."""
        if self._key_base is None:
            self._key_base = self._make_key_base()
        if not sources_unchanged(self._sources):
            return None
        return {**self._key_base, "state": state, "which": which, "records_init": state == self.states[0],
                "weights": digest_arrays(self.weights()[state])}

    def _make_key_base(self) -> dict[str, Any]:
        from .adapters import get_adapter  # noqa: PLC0415 - lazy: imports torch
        from .capture import environment  # noqa: PLC0415

        pair = self.pair
        data = pair.make_inputs()
        self._sources = reference_sources(pair, self.model())
        return {
            "cache_format": CACHE_FORMAT,
            "pair": {"label": pair.label, "class": f"{type(pair).__module__}.{type(pair).__qualname__}",
                     "config": pair.config(), "seed": pair.seed, "dtype": pair.dtype, "options": repr(pair)},
            "capture": {"capture_key": self.config.capture_key(), "states": self.states},
            "inputs": digest_tree({"inputs": data.inputs, "targets": data.targets, "meta": data.meta}),
            "code": digest_files(self._sources, _ROOT),
            "versions": {**get_adapter("torch").versions(), "numpy": np.__version__,
                         "python": platform.python_version()},
            "environment": environment(),
        }

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
        return compact(trace) if self.pair.dtype == "float32" else trace

    def _other_pair(self) -> Pair | None:
        if not self.config.noise_floor:
            return None
        try:
            return replace(self.pair, dtype="float64" if self.pair.dtype == "float32" else "float32")
        except Exception:  # noqa: BLE001 - a pair that cannot be copied gets no noise floor, never a crash
            return None


def compact(trace: Trace) -> Trace:
    """The float64 reference with its tensors rounded to float32 (half the memory). It only measures
    errors of float32 runs, whose bounds are >= 1e-5 relative, far above float32 rounding (6e-8)."""
    arrays = {k: (v.astype(np.float32) if v.dtype == np.float64 and not k.startswith("stage/") else v)
              for k, v in trace.arrays.items()}
    return replace(trace, arrays=arrays)
