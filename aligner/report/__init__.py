"""Report rendering: one offline HTML page plus results.json, layers.csv and summary.md per run."""
from __future__ import annotations

from aligner.report.html import build_page, render_html
from aligner.report.outputs import OutputPaths, render_summary, write_outputs
from aligner.report.results import RESULTS_SCHEMA, ResultsFormatError, check_results, load_results

__all__ = ["RESULTS_SCHEMA", "ResultsFormatError", "OutputPaths", "build_page", "check_results", "load_results",
           "render_html", "render_summary", "write_outputs"]
