"""Re-export for the report modules: results.json is read and validated by :mod:`aligner.results_io`."""
from __future__ import annotations

from aligner.results_io import (RESULTS_SCHEMA, SEVERITY_ORDER, ResultsFormatError, check_results, finding_key,
                                finding_metric, fmt_num, layer_key, load_results, severity_rank)

__all__ = ["RESULTS_SCHEMA", "SEVERITY_ORDER", "ResultsFormatError", "check_results", "load_results",
           "layer_key", "finding_key", "severity_rank", "fmt_num", "finding_metric"]
