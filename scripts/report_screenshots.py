"""Re-take the README screenshots of the report (docs/screenshots/): the two recorded runs in
tests/data/reports/ rendered with the project's fix log, first screen at 1440 and 390 px, headless Chromium.

    .venv/bin/python scripts/report_screenshots.py
"""
from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from aligner import fixlog
from aligner.report import write_outputs

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"n500": "gold_yolo-n-500.results.json.gz", "detach_neck": "detach_neck-128.results.json.gz"}
VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}


def main() -> None:
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        for name, src in RUNS.items():
            with gzip.open(ROOT / "tests" / "data" / "reports" / src, "rt", encoding="utf-8") as fh:
                results = json.load(fh)
            pair = results["run"]["pair"]
            entries = [e for e in fixlog.load(ROOT / "reports" / "fixlog") if e.pair in (None, pair)]
            html = write_outputs(results, Path(tmp) / name, fixlog_entries=entries).index_html
            for label, viewport in VIEWPORTS.items():
                page = browser.new_page(viewport=viewport)
                page.goto(html.resolve().as_uri())
                page.wait_for_selector("html[data-ready]", state="attached")
                dcl = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
                page.screenshot(path=str(out / f"{name}-{label}.png"))
                print(f"{name} {label}: {html.stat().st_size:,} bytes, DOMContentLoaded {dcl:.0f} ms")
                page.close()
        browser.close()


if __name__ == "__main__":
    main()
