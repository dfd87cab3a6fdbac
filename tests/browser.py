"""Headless Chromium (Debian's package, driven by Playwright) for the page tests, with every
request that leaves loopback blocked and recorded."""

import shutil
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@contextmanager
def chromium():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does this)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def open_page(browser, width: int, height: int, touch: bool = False):
    """A page of width x height CSS pixels (a phone's or tablet's touch screen with `touch`: mobile viewport,
    touch events); `page.blocked` lists (resource type, URL) of what it tried to fetch off loopback, all refused."""
    context = browser.new_context(viewport={"width": width, "height": height}, has_touch=touch, is_mobile=touch)
    page = context.new_page()
    page.blocked = []

    def guard(route):
        parts = urlsplit(route.request.url)
        if parts.scheme in ("data", "blob") or parts.hostname in LOOPBACK:
            route.continue_()
        else:
            page.blocked.append((route.request.resource_type, route.request.url))
            route.abort()

    context.route("**/*", guard)
    return page


@pytest.fixture
def browser():
    """Chromium, for pages of any size: open_page(browser, width, height, touch)."""
    with chromium() as browser:
        yield browser


@pytest.fixture
def browser_page():
    """A 1280x900 desktop page (see open_page)."""
    with chromium() as browser:
        yield open_page(browser, 1280, 900)
