"""aligner: a layer-by-layer PyTorch <-> Jittor alignment debugger.

Public API (imported lazily, so ``import aligner`` loads neither torch nor jittor)::

    result = aligner.run_pair("gold_yolo-n", img_size=500)        # registered pair
    result = aligner.align(torch_model, jittor_model, [x])        # any pair of models
    result = aligner.diff("traces/torch", "traces/jittor")        # traces captured elsewhere
    result.verdict, result.findings, result.first_divergence
    aligner.write_results(result, "reports/run1")                 # results.json (schema 1)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); resolved on first access (PEP 562)
_LAZY: dict[str, tuple[str, str]] = {
    "align": ("aligner.api", "align"),
    "run_pair": ("aligner.api", "run_pair"),
    "diff": ("aligner.api", "diff"),
    "analyze": ("aligner.api", "analyze"),
    "write_results": ("aligner.api", "write_results"),
    "AlignmentResult": ("aligner.api", "AlignmentResult"),
    "StateTraces": ("aligner.analysis_records", "StateTraces"),
    "Tolerances": ("aligner.tolerances", "Tolerances"),
    "Finding": ("aligner.analysis_records", "Finding"),
    "FindingType": ("aligner.records", "FindingType"),
    "Severity": ("aligner.records", "Severity"),
    "Trace": ("aligner.records", "Trace"),
    "compare_arrays": ("aligner.metrics", "compare_arrays"),
    "capture_pair": ("aligner.capture", "capture_pair"),
    "capture_models": ("aligner.capture", "capture_models"),
    "load_trace": ("aligner.trace_io", "read_trace_set"),
    "write_outputs": ("aligner.report", "write_outputs"),
    "load_results": ("aligner.report", "load_results"),
    "AlignerError": ("aligner.errors", "AlignerError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'aligner' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
