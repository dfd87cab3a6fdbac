"""The playground page in headless Chromium (Debian's package) at 1280 px against a demo server: what a user sees.

Every request that leaves loopback is blocked (tests/browser.py)."""

import json
import shutil
import threading

import httpx

from tests.browser import browser_page  # noqa: F401  (fixture)
from tests.images import b64_png, box_mask, gradient_image
from tests.servers import KEY_A, api_server, make_settings

BIG_SEED = "6519008997297764655"  # past 2^53: a JavaScript number would print 6519008997297764000
WAIT = 60000  # ms; a bound for the browser to catch up, never a pacing device


class HeldInpainter:
    """Wraps the real Inpainter. A job prompted 'blocker' waits for `start` before it runs; any other job
    pauses after step `pause_at` (telling `paused`) until `resume` is set, so the test sees it mid-run."""

    def __init__(self, inner, pause_at: int = 10):
        self.inner, self.device, self.pause_at = inner, inner.device, pause_at
        self.start, self.paused, self.resume = threading.Event(), threading.Event(), threading.Event()

    def run(self, request, image, mask, on_step=None):
        if request.prompt == "blocker":
            self.start.wait(120)
            return self.inner.run(request, image, mask, on_step=on_step)

        def step(done: int, total: int) -> None:
            on_step(done, total)
            if done == self.pause_at:
                self.paused.set()
                self.resume.wait(120)

        return self.inner.run(request, image, mask, on_step=step)


def load_and_paint(page, tmp_path, paint=True):
    photo = tmp_path / "photo.png"
    gradient_image(640, 480).save(photo)
    page.fill("#key", KEY_A)
    page.set_input_files("#file", str(photo))
    page.wait_for_function("!document.getElementById('submit').disabled")
    box = page.locator("#paint").bounding_box()
    assert abs(box["width"] / box["height"] - 640 / 480) < 0.01  # scaled to fit, aspect kept
    if paint:
        page.mouse.move(box["x"] + 100, box["y"] + 100)
        page.mouse.down()
        for step in range(20):
            page.mouse.move(box["x"] + 100 + step * 8, box["y"] + 100 + step * 4)
        page.mouse.up()
    page.fill("#prompt", "a red armchair")
    return box


def right_edge(page, selector):
    return page.evaluate(f"document.querySelector({selector!r}).getBoundingClientRect().right")


def test_queue_progress_exact_seed_and_result_beside_input(tmp_path, tiny_model_dir, inpainter, browser_page):  # noqa: F811
    page = browser_page
    held = HeldInpainter(inpainter)
    submitted = []
    page.on("request", lambda r: submitted.append(r.post_data) if r.method == "POST" else None)
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: held) as srv:
        blocker = httpx.post(f"{srv.url}/v2/sd1.5-inpainting", headers={"x-api-key": KEY_A},
                             json={"image": b64_png(gradient_image()), "mask": b64_png(box_mask()),
                                   "prompt": "blocker"})
        assert blocker.status_code == 200
        page.goto(srv.url + "/")
        load_and_paint(page, tmp_path)
        page.fill("#seed", BIG_SEED)
        page.click("#submit")

        # Behind the blocker: queued, and told it runs next (queue_position 0).
        page.wait_for_function("document.getElementById('status').textContent.includes('Queued: next to run')",
                               timeout=WAIT)
        held.start.set()

        # Mid-run: the bar shows a step strictly between 0 and the total before the job ends.
        assert held.paused.wait(120)
        page.wait_for_function("(() => { const p = document.getElementById('progress');"
                               " return p.value > 0 && p.value < p.max; })()", timeout=WAIT)
        assert "Painting: step" in page.text_content("#status")
        assert page.evaluate("document.getElementById('progress').max") == 20
        page.screenshot(path=str(tmp_path / "progress.png"))
        shutil.copy(tmp_path / "progress.png", "/tmp/playground-progress.png")
        held.resume.set()

        page.wait_for_function("document.getElementById('after').complete && "
                               "document.getElementById('after').naturalWidth > 0", timeout=WAIT)
        size = page.evaluate("[document.getElementById('after').naturalWidth,"
                             " document.getElementById('after').naturalHeight]")
        assert size == [512, 512]
        # The seed was sent and is shown digit for digit.
        body = json.loads(submitted[-1])
        assert f'"seed":{BIG_SEED}' in submitted[-1] and "only_masked" not in body and "original_size" not in body
        assert f"seed {BIG_SEED}" in page.text_content("#status")
        assert page.text_content("#seedline") == f"seed {BIG_SEED}"

        # At 1280 px: the result sits beside the input, nothing overflows, no empty placeholder left.
        stage = page.locator("#stage").bounding_box()
        result = page.locator("#compare").bounding_box()
        assert result["x"] >= stage["x"] + stage["width"] and abs(result["y"] - stage["y"]) < 40
        assert result["x"] + result["width"] <= 1280
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        panel_right = right_edge(page, ".controls")
        for selector in ("#key", "#file", "#prompt", "#negative", "#scheduler", "#seed", "#height", "#mask_padding"):
            assert right_edge(page, selector) <= panel_right, selector
        assert not page.is_visible("#placeholder")

        # Before/after: the slider uncovers the input under the result.
        page.fill("#split", "90")
        assert page.evaluate("document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 90%)"
        assert page.evaluate("localStorage.getItem('inpaint-key')") == KEY_A
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        shutil.copy(tmp_path / "playground.png", "/tmp/playground.png")
    assert page.blocked == []


def test_refuses_without_mask_and_sends_crop_options(tmp_path, tiny_model_dir, inpainter, browser_page):  # noqa: F811
    page = browser_page
    posts = []
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        page.goto(srv.url + "/")
        page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
        load_and_paint(page, tmp_path, paint=False)
        page.click("#submit")
        page.wait_for_function("document.getElementById('status').textContent.includes('Paint a mask first')",
                               timeout=WAIT)
        assert posts == []  # refused in the page: nothing was submitted

        # Paint, ask for the crop options: they are sent (the server decides whether it knows them).
        box = page.locator("#paint").bounding_box()
        page.mouse.click(box["x"] + 50, box["y"] + 50)
        page.check("#only_masked")
        page.check("#original_size")
        page.fill("#mask_padding", "64")
        page.click("#submit")
        page.wait_for_function("document.getElementById('status').textContent !== 'Submitting...' && "
                               "!document.getElementById('submit').disabled", timeout=WAIT)
        body = json.loads(posts[0].post_data)
        assert body["only_masked"] is True and body["mask_padding"] == 64 and body["original_size"] is True
    assert page.blocked == []


def test_playground_is_served_without_a_key(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        r = httpx.get(srv.url + "/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "<canvas" in r.text and "https://" not in r.text.split("<script>")[1]  # no CDN
        assert "STATE_DIR/api_key" in r.text and "API_KEYS" in r.text  # says where the key comes from
