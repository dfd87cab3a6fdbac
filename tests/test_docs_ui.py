"""/docs and /redoc render in a browser with no network: their assets come from an installed package."""

import shutil

import httpx

from tests.browser import browser_page  # noqa: F401  (fixture)
from tests.servers import api_server, make_settings


def test_swagger_ui_renders_offline(tmp_path, tiny_model_dir, inpainter, browser_page):  # noqa: F811
    page = browser_page
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        html = httpx.get(srv.url + "/docs").text
        assert "https://" not in html  # no CDN reference at all
        page.goto(srv.url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30000)
        paths = page.locator(".opblock-summary-path").all_text_contents()
        assert any("/v2/requests/{request_id}/status" in p for p in paths), paths
        assert any(p.startswith("/v1/") for p in paths) and any(p.startswith("/v2/{slug}") for p in paths), paths
        assert page.locator(".swagger-ui .info .title").text_content().startswith("inpaint")
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
        shutil.copy(tmp_path / "docs.png", "/tmp/docs.png")
        assert page.blocked == []


def test_redoc_renders_offline(tmp_path, tiny_model_dir, inpainter, browser_page):  # noqa: F811
    page = browser_page
    refused = []  # what the page's content security policy stopped before any request was made
    page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        assert "https://" not in httpx.get(srv.url + "/redoc").text
        page.goto(srv.url + "/redoc")
        page.wait_for_selector("h1", timeout=30000)  # ReDoc renders the API title as h1
        page.wait_for_function("document.body.innerText.includes('/v2/requests/{request_id}/status')",
                               timeout=30000)
        # The sidebar credit's logo (cdn.redoc.ly) is refused by the page's policy and removes itself.
        page.wait_for_function("!document.querySelector('img[alt=\"redocly logo\"]')", timeout=30000)
    assert page.blocked == []  # no request left loopback
    assert all("cdn.redoc.ly" in text for text in refused), refused  # and the policy stopped nothing else
