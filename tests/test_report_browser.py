"""The HTML report in a real browser: headless Debian Chromium driven by Playwright, fully offline.

Renders, first divergence at the top, filter / sort / search work, plots are present, the console
stays clean, no network request is made, and user data (a module named <script>…) stays text.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.make_results import XSS_NAME, make_results  # noqa: E402

from aligner.report import write_outputs  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A loaded report plus everything the page did: console messages, errors, requests, dialogs."""

    def __init__(self, browser: Any, html: Path) -> None:
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        # Anything that is not the report file itself is aborted (and recorded above).
        self.url = html.resolve().as_uri()
        self.page.route("**/*", lambda route: route.continue_() if route.request.url == self.url else route.abort())
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def shown(self) -> int:
        return int(self.page.locator("#rows-shown").inner_text())

    def visible_rows(self) -> Any:
        return self.page.locator("#layers-table tbody tr:not([hidden])")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    results = make_results("broken", xss=True, steps=4)
    out = tmp_path_factory.mktemp("broken")
    write_outputs(results, out)
    return results, out / "index.html"


@pytest.fixture()
def page(browser: Any, broken: tuple[dict[str, Any], Path]) -> Iterator[Page]:
    p = Page(browser, broken[1])
    yield p
    p.page.close()


def test_renders_offline_without_console_errors(page: Page, broken: tuple[dict[str, Any], Path]) -> None:
    assert page.page.title().startswith("Alignment report")
    assert page.errors == []
    assert [m for m in page.console if m[0] in ("error", "warning")] == []
    assert page.requests == [page.url], f"unexpected requests: {page.requests}"
    html = broken[1].read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


def test_first_divergence_is_at_the_top(page: Page) -> None:
    assert page.page.locator("#verdict").inner_text() == "FAIL"
    headline = page.page.locator("#headline")
    text = headline.inner_text()
    assert "neck.Rep_p4.conv1" in text and "forward" in text
    box = headline.bounding_box()
    assert box is not None and box["y"] < 150, box  # visible without scrolling
    first = page.page.locator("ol.findings > li").first
    assert "first" in (first.get_attribute("class") or "")
    assert "neck.Rep_p4.conv1" in first.inner_text()


def test_filters(page: Page, broken: tuple[dict[str, Any], Path]) -> None:
    layers = broken[0]["layers"]
    assert page.shown() == len(layers)
    page.page.check("#f-failing")
    assert page.shown() == sum(not r["ok"] for r in layers) == page.visible_rows().count()
    page.page.select_option("#f-kind", "backward")
    assert page.shown() == sum(not r["ok"] and r["kind"] == "backward" for r in layers)
    page.page.uncheck("#f-failing")
    page.page.select_option("#f-kind", "")
    page.page.fill("#f-search", "reduce_layer_c5")
    expected = [r for r in layers if "reduce_layer_c5" in r["torch_name"]]
    assert page.shown() == len(expected) > 0
    assert all("reduce_layer_c5" in t for t in page.visible_rows().locator("td.name").all_inner_texts()
               if t != "=")
    page.page.fill("#f-search", "")
    page.page.select_option("#f-path", "backbone")
    assert page.shown() == sum(r["torch_name"] == "backbone" or r["torch_name"].startswith("backbone.")
                               for r in layers)
    page.page.select_option("#f-path", "neck.Rep_p4")  # a prefix filter, not a substring search
    assert page.shown() == sum(r["torch_name"] == "neck.Rep_p4" or r["torch_name"].startswith("neck.Rep_p4.")
                               for r in layers)
    page.page.select_option("#f-path", "")
    page.page.select_option("#f-ftype", "unreachable_gradient")
    names = page.visible_rows().locator("td:nth-child(4)").all_inner_texts()
    assert names and all(n.startswith("neck.reduce_layer_c5") for n in names)
    states = page.visible_rows().locator("td:nth-child(1)").all_inner_texts()
    assert set(states) == {"perturbed"}


def test_sort(page: Page, broken: tuple[dict[str, Any], Path]) -> None:
    rels = sorted(r["rel"] for r in broken[0]["layers"])
    button = page.page.locator("#layers-table thead th:nth-child(10) button")
    button.click()
    first = page.page.locator("#layers-table tbody tr").first.locator("td:nth-child(10)")
    assert float(first.get_attribute("data-v")) == pytest.approx(rels[0])
    button.click()
    assert float(first.get_attribute("data-v")) == pytest.approx(rels[-1])
    assert page.page.locator("#layers-table thead th:nth-child(10)").get_attribute("aria-sort") == "descending"
    values = [float(v) for v in page.page.eval_on_selector_all(
        "#layers-table tbody td:nth-child(10)", "cells => cells.map(c => c.dataset.v)")]
    assert values == sorted(values, reverse=True)
    page.page.locator("#layers-table thead th:nth-child(4) button").click()  # text column
    names = page.page.locator("#layers-table tbody td:nth-child(4)").all_inner_texts()
    assert names == sorted(names, key=str.lower)


def test_plots_present(page: Page, broken: tuple[dict[str, Any], Path]) -> None:
    layers = broken[0]["layers"]
    fwd = page.page.locator("#chart-forward svg circle")
    assert fwd.count() == sum(r["kind"] == "forward" for r in layers)
    assert page.page.locator("#chart-forward svg circle.fail").count() == sum(
        r["kind"] == "forward" and not r["ok"] for r in layers)
    assert page.page.locator("#chart-forward polyline.tol").count() == 1
    assert page.page.locator("#chart-backward svg circle").count() == sum(r["kind"] == "backward" for r in layers)
    assert page.page.locator("figure.coverage").count() == len(broken[0]["params"]["grad_pattern"])
    assert page.page.locator("figure.coverage rect.unreachable").count() >= 1
    assert page.page.locator("#steps-loss polyline.line").count() == 2
    assert page.page.locator("#steps-drift polyline.line").count() == 2
    box = page.page.locator("#chart-forward svg").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100


def test_module_tree_collapses(page: Page) -> None:
    details = page.page.locator(".tree details")
    total = details.count()
    assert total > 3
    page.page.click("#tree-collapse")
    assert page.page.locator(".tree details[open]").count() == 0
    page.page.click("#tree-expand")
    assert page.page.locator(".tree details[open]").count() == total
    # the module where the finding points is flagged; the finding below it (a BN) lands on it too
    assert page.page.locator(".trow.flag-finding .tname[title='neck.Rep_p4.conv1']").count() == 1


def test_script_module_name_is_text(page: Page) -> None:
    assert page.dialogs == []
    assert page.page.evaluate("document.images.length") == 0
    scripts = page.page.evaluate("Array.from(document.scripts).map(s => s.textContent)")
    assert len(scripts) == 1 and "alert(" not in scripts[0]
    assert page.page.locator(f"code.loc:text-is('neck.{XSS_NAME}')").count() == 1
    assert XSS_NAME in page.page.locator("#tree").inner_text()
    assert "<img src=x onerror=alert(2)>" in page.page.locator("#findings").inner_text()


def test_passing_report_in_chinese(browser: Any, tmp_path: Path) -> None:
    write_outputs(make_results("pass"), tmp_path, lang="zh")
    p = Page(browser, tmp_path / "index.html")
    try:
        assert p.page.locator("#verdict").inner_text() == "通过"
        assert "没有错误级发现" in p.page.locator("#headline").inner_text()
        assert p.page.locator("#findings h2").inner_text().startswith("发现")
        assert p.page.locator("html").get_attribute("lang") == "zh-CN"
        assert p.errors == [] and p.requests == [p.url]
        p.page.check("#f-failing")
        assert p.shown() == 0
    finally:
        p.page.close()


def test_screenshot_renders_pixels(page: Page, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    page.page.screenshot(path=str(png), full_page=False)
    assert png.stat().st_size > 20_000  # a blank page compresses to a few KB
