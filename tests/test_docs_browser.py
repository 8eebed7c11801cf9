"""Build the documentation site, serve it locally and check in headless Chromium that its pages render.

The browser reaches only the local server, as on a machine without a network. Needs Chromium and
its WebDriver and selenium: ``scripts/install.sh`` installs them all. Without them the tests fail;
they never skip. Screenshots (the ELBO page and the ``module`` API page at a desktop and a phone
width, among others) are written to ``build/docs-screenshots/``.
"""

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "docs-screenshots"
INSTALL_HINT = (
    "The docs browser test needs Chromium, its WebDriver and selenium. Install them with\n"
    "    scripts/install.sh   # or: apt-get install -y chromium chromium-driver && pip install selenium\n"
    "or point CHROMIUM and CHROMEDRIVER at the binaries."
)
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    # Only the local server is reachable: any request to another host fails at once, as offline.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def _binary(variable: str, *names: str) -> str:
    for candidate in (os.environ.get(variable), *names):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail(f"{names[0]} not found.\n{INSTALL_HINT}")


class _LoggingHandler(SimpleHTTPRequestHandler):
    """Serve the site and record ``(path, status)`` of every request."""

    requests: list[tuple[str, int]]

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        self.requests.append((self.path, int(getattr(code, "value", code))))

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served_site(site: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    requests: list[tuple[str, int]] = []
    handler = type("Handler", (_LoggingHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = _binary("CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    chromedriver = _binary("CHROMEDRIVER", "chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed.\n{INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, url: str, screenshot: str) -> None:
    driver.get(url)
    _screenshot(driver, screenshot)


def _screenshot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path)), name
    return path


def _png_width(path: Path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(header[16:20], "big")


def _own_errors(driver: Any, base: str) -> list[str]:
    """Console errors raised by the site's own scripts or resources (not by unreachable external ones)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry["message"].startswith(base)
    ]


def test_pages_render(served_site: tuple[str, list[tuple[str, int]]], browser: Any) -> None:
    base, requests = served_site
    browser.set_window_size(*WIDTHS["desktop"])

    _open(browser, f"{base}/", "home.png")
    assert browser.title.startswith("torchbayesian")
    header = browser.execute_script(
        "const h = document.querySelector('.md-header');"
        "return h && {position: getComputedStyle(h).position, height: h.getBoundingClientRect().height};"
    )
    assert header and header["position"] == "sticky" and header["height"] > 20, f"theme CSS not applied: {header}"
    assert browser.execute_script("return document.querySelectorAll('.md-content pre code').length") >= 1
    assert not _own_errors(browser, base)

    _open(browser, f"{base}/quickstart/", "quickstart.png")
    assert browser.title.startswith("Quickstart")
    headings = browser.execute_script("return [...document.querySelectorAll('.md-content h2')].map(h => h.textContent)")
    assert any("A Bayesian MLP" in heading for heading in headings), headings
    assert not _own_errors(browser, base)

    _open(browser, f"{base}/api/module/", "api-module.png")
    signatures = browser.execute_script("return [...document.querySelectorAll('.doc-signature')].map(s => s.innerText)")
    assert any(signature.startswith("BayesianModule(") for signature in signatures), signatures
    assert browser.execute_script("return document.getElementById('torchbayesian.module.BayesianModule') !== null")
    assert not _own_errors(browser, base)

    search = browser.find_element("css selector", "input.md-search__input")
    search.click()
    search.send_keys("reuse_samples")
    from selenium.webdriver.support.ui import WebDriverWait

    results = WebDriverWait(browser, 30).until(
        lambda driver: driver.find_elements("css selector", ".md-search-result__item")
    )
    assert results, "the search returned nothing for 'reuse_samples'"
    assert browser.save_screenshot(str(SCREENSHOTS / "search.png"))

    assert requests, "the server saw no request"
    failed = [(path, status) for path, status in requests if status >= 400]
    assert not failed, f"the site requested missing files of its own: {failed}"
    for asset in ("/assets/stylesheets/", "/assets/javascripts/", "/search/search_index.json"):
        assert any(path.startswith(asset) and status == 200 for path, status in requests), asset


# What each formula became: MathML laid out by the browser, or TeX left as text.
_FORMULAS = """
const content = document.querySelector('.md-content');
const maths = [...content.querySelectorAll('math')];
return {
    text: content.innerText,
    count: maths.length,
    displays: [...new Set(maths.map(m => getComputedStyle(m).display))],
    empty: maths.filter(m => m.getBoundingClientRect().width < 1 || m.getBoundingClientRect().height < 1).length,
    stacked: [...content.querySelectorAll('mfrac')].map(f =>
        f.children[0].getBoundingClientRect().bottom <= f.children[1].getBoundingClientRect().top + 1),
    blockHeights: maths.filter(m => m.getAttribute('display') === 'block')
        .map(m => m.getBoundingClientRect().height),
    lineHeight: parseFloat(getComputedStyle(content.querySelector('p')).lineHeight),
    resources: performance.getEntriesByType('resource').map(e => e.name),
};
"""


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_formulas_render_offline(served_site: tuple[str, list[tuple[str, int]]], browser: Any, width: str) -> None:
    base, _ = served_site
    browser.set_window_size(*WIDTHS[width])
    browser.get(f"{base}/guide/elbo/")
    found = browser.execute_script(_FORMULAS)
    raw = [tex for tex in ("\\[", "\\(", "$$", "\\frac", "\\mathrm", "\\sum") if tex in found["text"]]
    assert not raw, f"TeX shown as text on the ELBO page: {raw}"
    assert found["count"] >= 20, found["count"]
    # Chromium computes "block math" for display formulas and "math" (inline math) for inline ones.
    assert set(found["displays"]) <= {"block math", "inline math", "math"}, found["displays"]
    assert found["empty"] == 0
    assert found["stacked"] and all(found["stacked"]), "a fraction's numerator is not above its denominator"
    # A display formula with a fraction or a sum with limits is taller than a line of text.
    assert max(found["blockHeights"]) > found["lineHeight"], (found["blockHeights"], found["lineHeight"])
    assert all(url.startswith(base) for url in found["resources"]), [
        url for url in found["resources"] if not url.startswith(base)
    ]
    path = _screenshot(browser, f"elbo-{WIDTHS[width][0]}.png")
    assert _png_width(path) == WIDTHS[width][0]


# Code, tables and formulas whose content is cut off: overflowing their own box (hidden or behind a
# scrollbar), the table wrapper that scrolls, the screen (code, tables) or the text column (formulas).
_CLIPPED = """
const column = document.querySelector('.md-content__inner').getBoundingClientRect();
const screen = document.documentElement.clientWidth;
const clipped = [];
for (const element of document.querySelectorAll('.md-content__inner :is(pre > code, table, math)')) {
    const box = element.getBoundingClientRect();
    const [left, right] = element.tagName === 'math' ? [column.left, column.right] : [0, screen];
    const wrapper = element.closest('.md-typeset__scrollwrap');
    if (element.scrollWidth > element.clientWidth + 1 || box.left < left - 1 || box.right > right + 1
        || (wrapper && wrapper.scrollWidth > wrapper.clientWidth + 1)) {
        clipped.push(`${element.tagName} ${Math.round(box.left)}-${Math.round(box.right)} `
            + `(content ${element.scrollWidth} px in ${element.clientWidth} px): `
            + element.textContent.trim().slice(0, 60));
    }
}
return clipped;
"""


def _pages(site: Path) -> list[str]:
    """Every page of the built site, as its path below the root (``""`` for the home page)."""
    folders = (page.parent.relative_to(site) for page in site.rglob("index.html"))
    return sorted("" if folder == Path(".") else folder.as_posix() for folder in folders)


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_no_code_table_or_formula_is_clipped(
    site: Path, served_site: tuple[str, list[tuple[str, int]]], browser: Any, width: str
) -> None:
    base, _ = served_site
    browser.set_window_size(*WIDTHS[width])
    pages = _pages(site)
    assert {"", "guide/elbo", "api/module"} <= set(pages)
    clipped = {}
    for page in pages:
        browser.get(f"{base}/{page}/" if page else f"{base}/")
        if found := browser.execute_script(_CLIPPED):
            clipped[page] = found
    assert not clipped, f"clipped at {WIDTHS[width][0]} px: {clipped}"

    browser.get(f"{base}/api/module/")
    browser.execute_script("document.querySelector('.doc-section-title').scrollIntoView()")
    path = _screenshot(browser, f"api-module-{WIDTHS[width][0]}.png")
    assert _png_width(path) == WIDTHS[width][0]
