"""The playground page in headless Chromium (Debian's package) against a demo server: paint, submit, see the result."""

import shutil
import time

import pytest

from tests.images import gradient_image
from tests.servers import KEY_A, api_server, make_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does this)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        yield page
        browser.close()


def test_paint_submit_and_see_result(tmp_path, tiny_model_dir, inpainter, browser_page):
    page = browser_page
    photo = tmp_path / "photo.png"
    gradient_image(640, 480).save(photo)
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        page.goto(srv.url + "/")
        page.fill("#key", KEY_A)
        page.set_input_files("#file", str(photo))
        page.wait_for_function("!document.getElementById('submit').disabled")
        box = page.locator("#paint").bounding_box()
        assert round(box["width"]) == 512 and round(box["height"]) == 384  # 640x480 scaled to fit
        page.mouse.move(box["x"] + 150, box["y"] + 150)
        page.mouse.down()
        for step in range(20):
            page.mouse.move(box["x"] + 150 + step * 10, box["y"] + 150 + step * 5)
        page.mouse.up()
        painted = page.evaluate("""() => {
            const c = document.createElement('canvas');
            return document.getElementById('paint').getContext('2d').getImageData(0, 0, 512, 384).data
                .filter((v, i) => i % 4 === 3 && v > 0).length; }""")
        assert painted > 1000  # the brush left a stroke
        page.fill("#prompt", "a red armchair")
        page.fill("#seed", "7")
        page.click("#submit")
        page.wait_for_selector("#results img", timeout=60000)
        page.wait_for_function("document.querySelector('#results img').complete && "
                               "document.querySelector('#results img').naturalWidth > 0", timeout=30000)
        size = page.evaluate("[document.querySelector('#results img').naturalWidth,"
                             " document.querySelector('#results img').naturalHeight]")
        assert size == [512, 512]
        assert "seed 7" in page.text_content("#status")
        assert page.evaluate("localStorage.getItem('inpaint-key')") == KEY_A
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        shutil.copy(tmp_path / "playground.png", "/tmp/playground.png")


def test_playground_is_served_without_a_key(tmp_path, tiny_model_dir, inpainter):
    import httpx

    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        r = httpx.get(srv.url + "/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "<canvas" in r.text and "https://" not in r.text.split("<script>")[1]  # no CDN
