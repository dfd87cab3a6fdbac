"""Headless Chromium (Debian's package, driven by Playwright) for the page tests, with every
request that leaves loopback blocked and recorded."""

import shutil
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture
def browser_page():
    """A 1280x900 page; `page.blocked` lists (resource type, URL) of what it tried to fetch off loopback,
    all refused."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does this)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.blocked = []

        def guard(route):
            parts = urlsplit(route.request.url)
            if parts.scheme in ("data", "blob") or parts.hostname in LOOPBACK:
                route.continue_()
            else:
                page.blocked.append((route.request.resource_type, route.request.url))
                route.abort()

        page.route("**/*", guard)
        yield page
        browser.close()
