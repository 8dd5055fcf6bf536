"""docs/build.py: the side-by-side site, built and looked at in a real (headless)
browser as a reader would."""

import shutil
import subprocess
import sys
from urllib.parse import urldefrag

import pytest

from conftest import ROOT

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="needs playwright: pip install -r docs/requirements.txt",
)
CHROMIUM = shutil.which("chromium")

# Each visible section's prose and code boxes, for the layout checks.
BOXES = """() => [...document.querySelectorAll('.sec')]
  .map(s => [s.querySelector('.prose'), s.querySelector('.code')])
  .map(([p, c]) => [p.getBoundingClientRect(), c.getBoundingClientRect()])
  .filter(([p, c]) => p.height > 0 && c.height > 0)
  .map(([p, c]) => ({
    prose: [p.left, p.right, p.top, p.bottom],
    code: [c.left, c.right, c.top, c.bottom],
  }))"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, str(ROOT / "docs/build.py"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser):
    """One tab whose console errors, page errors and failed requests are collected in
    page.problems."""
    page = browser.new_page()
    page.problems = []

    def on_console(msg):
        if msg.type == "error":
            page.problems.append(f"console: {msg.text}")

    def on_page_error(err):
        page.problems.append(f"page error: {err}")

    def on_request_failed(req):
        page.problems.append(f"failed request: {req.url}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("requestfailed", on_request_failed)
    yield page
    page.close()


def pages_of(site):
    return sorted(site.rglob("*.html"))


def script_pages(site):
    return [p for p in site.glob("*.html") if p.name != "index.html"]


def test_docs_every_page_loads_cleanly(site, page):
    assert (
        (site / "index.html").exists()
        and (site / "ppo.html").exists()
        and (site / "tests/test_ppo.html").exists()
    )
    for path in pages_of(site):
        page.problems.clear()
        page.goto(path.as_uri())
        assert page.locator("pre.code, table").count() > 0, (
            f"{path.name} shows no code and no table"
        )
        assert page.problems == [], f"{path.relative_to(site)}: {page.problems}"


def test_docs_prose_beside_code_when_wide(site, page):
    page.set_viewport_size({"width": 1280, "height": 900})
    for path in script_pages(site):
        page.goto(path.as_uri())
        boxes = page.evaluate(BOXES)
        assert boxes, f"{path.name}: no section with both prose and code"
        for box in boxes:
            assert box["prose"][1] <= box["code"][0], (
                f"{path.name}: prose overlaps code {box}"
            )
            assert abs(box["prose"][2] - box["code"][2]) <= 2, (
                f"{path.name}: prose and code start apart {box}"
            )


def test_docs_no_code_scrolls_sideways_at_1280(site, page):
    """At 1280 px every code block (88-column lines) fits its column on every page."""
    page.set_viewport_size({"width": 1280, "height": 900})
    wide = "els => els.filter(e => e.scrollWidth > e.clientWidth).length"
    for path in pages_of(site):
        page.goto(path.as_uri())
        page.evaluate(
            "document.querySelectorAll('details').forEach(d => d.open = true)"
        )
        blocks = page.locator("pre").count()
        scrolling = page.eval_on_selector_all("pre", wide)
        assert scrolling == 0, (
            f"{path.relative_to(site)}: {scrolling} of {blocks} scroll"
        )


def test_docs_prose_above_code_when_narrow(site, page):
    page.set_viewport_size({"width": 400, "height": 800})
    for path in script_pages(site):
        page.goto(path.as_uri())
        for box in page.evaluate(BOXES):
            assert box["code"][2] >= box["prose"][3], (
                f"{path.name}: code does not start below the prose {box}"
            )


def test_docs_concept_links_land_on_anchors(site, page):
    page.goto((site / "index.html").as_uri())
    hrefs = page.eval_on_selector_all(
        "#concepts a[href*='#']", "links => links.map(a => a.href)"
    )
    assert len(hrefs) >= 10, "the concept table links to hardly any section"
    targets = {}
    for href in hrefs:
        url, anchor = urldefrag(href)
        targets.setdefault(url, []).append(anchor)
    for url, anchors in targets.items():
        page.goto(url)
        missing = page.evaluate(
            "ids => ids.filter(id => !document.getElementById(id))", anchors
        )
        assert missing == [], f"{url} has no element with id {missing}"


def test_docs_screenshot_of_ppo(site, page):
    """Not a check: a picture of ppo's page at 1280 px, git-ignored, for people to
    look at."""
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto((site / "ppo.html").as_uri())
    (ROOT / "site").mkdir(exist_ok=True)
    page.screenshot(path=ROOT / "site/ppo.png", full_page=True)
