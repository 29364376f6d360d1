"""Report rendering: one offline HTML page plus results.json, layers.csv and summary.md per run."""
from __future__ import annotations

from aligner.report.html import build_page, render_html
from aligner.report.outputs import OutputPaths, render_summary, write_outputs

# results.json itself is read and written by aligner.results_io
__all__ = ["OutputPaths", "build_page", "render_html", "render_summary", "write_outputs"]
