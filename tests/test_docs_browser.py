"""Build the documentation site, serve it locally and check in headless Chromium that its pages render.

Needs Chromium and its WebDriver (Debian/Ubuntu: ``apt-get install -y chromium chromium-driver``)
and selenium (``pip install -e ".[test]"``). Without them the test fails; it never skips.
Screenshots of the checked pages are written to ``build/docs-screenshots/``.
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
    "    apt-get install -y chromium chromium-driver\n"
    '    pip install -e ".[test]"   # or: pip install selenium\n'
    "or point CHROMIUM and CHROMEDRIVER at the binaries."
)
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
    # Only the local server is reachable: external requests (the MathJax CDN) fail at once.
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
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / screenshot)), screenshot


def _own_errors(driver: Any, base: str) -> list[str]:
    """Console errors raised by the site's own scripts or resources (not by unreachable external ones)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry["message"].startswith(base)
    ]


def test_pages_render(served_site: tuple[str, list[tuple[str, int]]], browser: Any) -> None:
    base, requests = served_site

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
