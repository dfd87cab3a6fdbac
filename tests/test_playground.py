"""The playground page in headless Chromium (Debian's package) against a demo server: what a user sees, on a
desktop (mouse) and on a phone's and a tablet's touch screen.

Every request that leaves loopback is blocked (tests/browser.py)."""

import base64
import io
import json
import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser import browser, browser_page, open_page  # noqa: F401  (fixtures)
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


@contextmanager
def page_on_server(browser, viewport, touch, tmp_path, model_dir, inpainter):  # noqa: F811
    """The playground of a demo server open in a page of `viewport`; yields the page, the server and the bodies of
    the POSTs the page sends, as they are sent."""
    page = open_page(browser, *viewport, touch=touch)
    posts = []
    page.on("request", lambda r: posts.append(r.post_data) if r.method == "POST" else None)
    with api_server(make_settings(tmp_path / "state", model_dir), lambda: inpainter) as srv:
        page.goto(srv.url + "/")
        yield page, srv, posts


def load_photo(page, tmp_path, size=(640, 480)):
    photo = tmp_path / "photo.png"
    gradient_image(*size).save(photo)
    page.fill("#key", KEY_A)
    page.set_input_files("#file", str(photo))
    page.wait_for_function("!document.getElementById('submit').disabled")
    box = page.locator("#paint").bounding_box()
    assert abs(box["width"] / box["height"] - size[0] / size[1]) < 0.01  # scaled to fit, aspect kept
    return box


def load_and_paint(page, tmp_path, paint=True, size=(640, 480)):
    box = load_photo(page, tmp_path, size)
    if paint:
        page.mouse.move(box["x"] + 100, box["y"] + 100)
        page.mouse.down()
        for step in range(20):
            page.mouse.move(box["x"] + 100 + step * 8, box["y"] + 100 + step * 4)
        page.mouse.up()
    page.fill("#prompt", "a red armchair")
    return box


def inside_its_panel(page, selector):
    return page.evaluate(f"""(() => {{ const el = document.querySelector({selector!r});
        return el.getBoundingClientRect().right <= el.closest('.panel, header').getBoundingClientRect().right; }})()""")


# The controls for the mask from words and for outpainting: each must be labelled and fit its panel.
MASK_CONTROLS = ("#mask_prompt", "#mask_threshold", "#invert_mask", "#preview_mask",
                 "#extend_left", "#extend_top", "#extend_right", "#extend_bottom")


def labelled(page, selector):
    """The control's accessible name comes from a <label> (inputs) or its own text (buttons)."""
    return page.evaluate(f"""(() => {{ const el = document.querySelector({selector!r});
        return el.tagName === 'BUTTON' ? el.textContent.trim() : [...el.labels].map((l) => l.textContent.trim()).join(' '); }})()""")


def no_sideways_scroll(page, width):
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]") == [width, width]


def touch_stroke(page, points):
    """One finger down at the first point, along the others, lifted: Chromium's own touch input (CDP), which the
    page gets as touch events and pointer events of pointerType "touch", and would take as a scroll gesture
    (pointercancel) on an element without touch-action: none."""
    cdp = page.context.new_cdp_session(page)
    (x, y), *rest = points
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for x, y in rest:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def mouse_stroke(page, points):
    (x, y), *rest = points
    page.mouse.move(x, y)
    page.mouse.down()
    for x, y in rest:
        page.mouse.move(x, y)
    page.mouse.up()


def sent_mask(post_data):
    data_url = json.loads(post_data)["mask"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L"))


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
        # 4:3 has no model size: the nearest shape (768x512) is painted and the answer comes at the photo's size.
        assert size == [640, 480]
        # The seed was sent and is shown digit for digit.
        body = json.loads(submitted[-1])
        assert f'"seed":{BIG_SEED}' in submitted[-1] and "only_masked" not in body
        assert (body["img_width"], body["img_height"], body["original_size"]) == (768, 512, True)
        assert f"seed {BIG_SEED}" in page.text_content("#status")
        assert page.text_content("#seedline") == f"seed {BIG_SEED}"

        # At 1280 px: the result sits beside the input, nothing overflows, no empty placeholder left.
        stage = page.locator("#stage").bounding_box()
        result = page.locator("#compare").bounding_box()
        assert result["x"] >= stage["x"] + stage["width"] and abs(result["y"] - stage["y"]) < 40
        assert result["x"] + result["width"] <= 1280
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        for selector in ("#key", "#file", "#prompt", "#negative", "#scheduler", "#seed", "#height", "#mask_padding",
                         *MASK_CONTROLS):
            assert inside_its_panel(page, selector), selector
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
        # 3:2 is a model size: 768x512, not original size, unless the user asks for it.
        load_and_paint(page, tmp_path, paint=False, size=(600, 400))
        assert (page.input_value("#width"), page.input_value("#height")) == ("768", "512")
        assert not page.is_checked("#original_size")
        assert page.text_content("#output_size").startswith("Output: 768x512, the photo's shape")
        page.click("#submit")
        page.wait_for_function("document.getElementById('status').textContent.includes('Paint a mask first')",
                               timeout=WAIT)
        assert page.get_attribute("#status", "class") == "error"
        assert posts == []  # refused in the page: nothing was submitted

        # Painting clears the error; ask for the crop options: they are sent.
        box = page.locator("#paint").bounding_box()
        page.mouse.click(box["x"] + 50, box["y"] + 50)
        page.wait_for_function("!document.getElementById('status').textContent.includes('Paint a mask first')",
                               timeout=WAIT)
        assert page.get_attribute("#status", "class") != "error"
        page.check("#only_masked")
        page.check("#original_size")
        page.fill("#mask_padding", "64")
        page.click("#submit")
        page.wait_for_function("document.getElementById('status').textContent !== 'Submitting...' && "
                               "!document.getElementById('submit').disabled", timeout=WAIT)
        body = json.loads(posts[0].post_data)
        assert body["only_masked"] is True and body["mask_padding"] == 64 and body["original_size"] is True
    assert page.blocked == []


# name, viewport, touch screen, photo size, expected (img_width, img_height, original_size), result size
WIDTHS = [
    ("phone", (390, 844), True, (512, 600), (512, 512, True), (512, 600)),
    ("tablet", (768, 1024), True, (400, 600), (512, 768, False), (512, 768)),
    ("desktop", (1280, 800), False, (640, 480), (768, 512, True), (640, 480)),
]


@pytest.mark.parametrize("name, viewport, touch, photo_size, model_request, result_size", WIDTHS,
                         ids=[w[0] for w in WIDTHS])
def test_load_paint_and_get_a_result_at_every_width(name, viewport, touch, photo_size, model_request, result_size,
                                                     tmp_path, tiny_model_dir, inpainter, browser):  # noqa: F811
    width, height = viewport
    with page_on_server(browser, viewport, touch, tmp_path, tiny_model_dir, inpainter) as (page, srv, posts):
        assert no_sideways_scroll(page, width)
        box = load_photo(page, tmp_path, photo_size)
        assert no_sideways_scroll(page, width)

        # The drawing area: on screen, not a sliver (most of a phone's width), and no taller than the window.
        assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["height"] <= height
        assert box["width"] >= {"phone": 0.85, "tablet": 0.4, "desktop": 0.3}[name] * width, box

        # The mask-from-words and outpainting controls: labelled, inside their panel and the window, not slivers.
        for selector in MASK_CONTROLS:
            r = page.locator(selector).bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= width and inside_its_panel(page, selector), (selector, r)
            assert labelled(page, selector), selector
            if selector not in ("#invert_mask",):
                assert r["width"] >= 60 and r["height"] >= 16, (selector, r)
        assert page.locator("#mask_prompt").bounding_box()["width"] >= 0.5 * page.locator("#input").bounding_box()["width"]
        page.fill("#mask_prompt", "the sofa by the window, " * 12)  # 300 characters: the field scrolls, not the page
        page.fill("#extend_left", "1024")
        assert no_sideways_scroll(page, width)
        page.fill("#mask_prompt", "")
        page.fill("#extend_left", "0")
        page.evaluate("window.scrollTo(0, 0)")  # filling scrolled the fields into view
        page.wait_for_function("window.scrollY === 0", timeout=WAIT)

        # The size sent keeps the photo's shape, and the page says what comes back.
        w, h, original = model_request
        assert (page.input_value("#width"), page.input_value("#height")) == (str(w), str(h))
        assert page.is_checked("#original_size") is original
        assert page.text_content("#output_size").startswith(f"Output: {result_size[0]}x{result_size[1]}")

        stage = page.locator("#stage").bounding_box()
        controls = {s: page.locator(s).bounding_box() for s in ("#prompt", "#submit", "#progress", "#status")}
        if name == "phone":
            # One column: image, mask painting, prompt, the button, progress, result.
            tops = [stage["y"] + stage["height"]] + [controls[s]["y"] for s in controls]
            tops.append(page.locator("#result").bounding_box()["y"])
            assert tops == sorted(tops), tops
        else:
            # Beside the image and above the fold, without scrolling: the button, progress and status.
            assert page.evaluate("window.scrollY") == 0
            for selector, c in controls.items():
                assert c["x"] >= stage["x"] + stage["width"], selector
                assert c["y"] >= 0 and c["y"] + c["height"] <= height, (selector, c)

        # A stroke from the lower left up to the upper right of the photo.
        page.locator("#paint").scroll_into_view_if_needed()
        box = page.locator("#paint").bounding_box()
        stroke = [(box["x"] + box["width"] * (0.25 + 0.05 * i), box["y"] + box["height"] * (0.75 - 0.05 * i))
                  for i in range(11)]
        page.evaluate("""window.seen = [];
            for (const type of ['pointerdown', 'pointerup', 'pointercancel'])
              document.getElementById('paint').addEventListener(type,
                (e) => window.seen.push(`${type} ${e.pointerType}`));""")
        scrolled = page.evaluate("window.scrollY")
        if touch:
            # A finger moving up would scroll the page down, but the canvas keeps it for painting.
            touch_stroke(page, stroke)
            page.wait_for_function("window.seen.some((e) => /^pointer(up|cancel)/.test(e))", timeout=WAIT)
            assert page.evaluate("window.seen") == ["pointerdown touch", "pointerup touch"]
            assert page.evaluate("window.scrollY") == scrolled
        else:
            mouse_stroke(page, stroke)
            assert page.evaluate("window.seen") == ["pointerdown mouse", "pointerup mouse"]

        page.fill("#prompt", "a red armchair")
        page.click("#submit")
        page.wait_for_function("document.getElementById('after').complete && "
                               "document.getElementById('after').naturalWidth > 0 && "
                               "!document.getElementById('submit').disabled", timeout=WAIT)
        assert page.evaluate("[document.getElementById('after').naturalWidth,"
                             " document.getElementById('after').naturalHeight]") == list(result_size)
        assert re.fullmatch(r"Done in (\d+\.\d|0\.\d\d) s \(inference (\d+\.\d|0\.\d\d) s\), seed \d+\.",
                            page.text_content("#status")), page.text_content("#status")

        # What was sent: the size chosen, and the mask white along the whole stroke, black away from it.
        body = json.loads(posts[-1])
        assert (body["img_width"], body["img_height"], body.get("original_size", False)) == model_request
        mask = sent_mask(posts[-1])
        assert mask.shape == (photo_size[1], photo_size[0])
        for x, y in stroke[::5]:
            nx = int((x - box["x"]) / box["width"] * photo_size[0])
            ny = int((y - box["y"]) / box["height"] * photo_size[1])
            assert mask[ny, nx] == 255, (x, y)
        assert mask[0, 0] == 0 and mask[-1, -1] == 0

        # The result is on screen (brought into view on a phone), and nothing scrolls sideways.
        result = page.locator("#compare").bounding_box()
        assert result["y"] < height and result["y"] + result["height"] > 0 and result["width"] > 0.3 * width
        assert result["x"] >= 0 and result["x"] + result["width"] <= width
        assert no_sideways_scroll(page, width)
        if name == "desktop":  # the result did not push the button down
            assert page.evaluate("window.scrollY") == 0
            submit = page.locator("#submit").bounding_box()
            assert submit["y"] + submit["height"] <= height
        Path("/tmp/playground-shots").mkdir(exist_ok=True)
        page.screenshot(path=f"/tmp/playground-shots/{name}.png", full_page=True)
    assert page.blocked == []


def test_a_photo_dropped_anywhere_is_loaded_and_its_size_shown(tmp_path, tiny_model_dir, inpainter,
                                                                browser_page):  # noqa: F811
    page = browser_page
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        page.goto(srv.url + "/")
        # Dropped on the result panel's heading, far from the file picker.
        files = page.evaluate_handle("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], 'portrait.png', { type: 'image/png' }));
            return files; }""", b64_png(gradient_image(512, 600)))
        page.dispatch_event("#result h2", "dragenter", {"dataTransfer": files})
        assert page.evaluate("document.body.classList.contains('dragging')")
        page.dispatch_event("#result h2", "drop", {"dataTransfer": files})
        page.wait_for_function("!document.getElementById('submit').disabled", timeout=WAIT)
        assert not page.evaluate("document.body.classList.contains('dragging')")
        assert "Image 512x600 loaded; the result will be 512x600" in page.text_content("#status")

        # No model size is 512x600: the nearest (512x512) is painted, the answer comes at the photo's size.
        assert (page.input_value("#width"), page.input_value("#height")) == ("512", "512")
        assert page.is_checked("#original_size")
        assert page.text_content("#output_size").startswith("Output: 512x600, the photo's own size")
        # Without original size the photo would be stretched: the line says so.
        page.uncheck("#original_size")
        assert page.text_content("#output_size").startswith("Output: 512x512: the photo (512x600) is stretched")
        assert page.get_attribute("#output_size", "class") == "warn"
        page.select_option("#height", "768")
        assert page.text_content("#output_size").startswith("Output: 512x768: the photo (512x600) is stretched")
    assert page.blocked == []


def test_playground_is_served_without_a_key(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        r = httpx.get(srv.url + "/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "<canvas" in r.text and "https://" not in r.text.split("<script>")[1]  # no CDN
        assert "STATE_DIR/api_key" in r.text and "API_KEYS" in r.text  # says where the key comes from
        assert '<link rel="icon" type="image/svg+xml" href="favicon.svg">' in r.text
        for path in ("/favicon.svg", "/favicon.ico"):  # the page's icon, and where browsers look by default
            icon = httpx.get(srv.url + path)
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml", path
            assert icon.text.startswith("<svg") and "https://" not in icon.text


def wait_until(page, condition):
    """wait_for_function, failing with what the status line says (the page's own account of what went wrong)."""
    try:
        page.wait_for_function(condition, timeout=WAIT)
    except Exception as error:  # playwright's TimeoutError
        raise AssertionError(f"{condition!r} not met; status: {page.text_content('#status')!r}") from error


def status_is(page, text):
    page.wait_for_function("(text) => document.getElementById('status').textContent.includes(text)", arg=text,
                           timeout=WAIT)


def test_mask_from_words_and_extend_without_painting(tmp_path, tiny_model_dir, inpainter, browser_page):  # noqa: F811
    """No painted mask: words or an extension are enough, and the page sends them (and no mask). The server is
    stood in for (page.route) so that the test reads the page's own side: what it sends, how it shows a refusal
    and a FAILED job."""
    page = browser_page
    posts, answers = [], []

    def submit_route(route):
        posts.append(route.request.post_data)
        route.fulfill(**answers.pop(0))

    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        page.goto(srv.url + "/")
        page.route("**/v2/sd1.5-inpainting", submit_route)
        load_and_paint(page, tmp_path, paint=False)  # 640x480: painted at 768x512, answered at its own size
        assert page.is_checked("#original_size")

        # Nothing to repaint: refused in the page, and the message names the three ways to say what to repaint.
        page.click("#submit")
        status_is(page, "Paint a mask first")
        status = page.text_content("#status")
        assert "Mask from words" in status and "extend" in status, status
        assert page.get_attribute("#status", "class") == "error" and posts == []

        # Words instead of a mask: the error goes; an extension grows the output size shown.
        page.fill("#mask_prompt", "  the sofa ")
        assert page.get_attribute("#status", "class") != "error"
        page.fill("#extend_right", "64")
        page.fill("#extend_top", "32")
        assert page.text_content("#output_size").startswith("Output: 704x512, the extended picture's own size")
        page.uncheck("#original_size")
        assert page.text_content("#output_size").startswith(
            "Output: 768x512: the extended picture (640x480 grown to 704x512) is stretched")
        page.check("#original_size")
        assert page.text_content("#threshold_value") == "0.40"
        page.fill("#mask_threshold", "0.25")
        assert page.text_content("#threshold_value") == "0.25"

        # A refusal from the server (400, naming the parameter) is shown as the error.
        answers.append({"status": 400, "json": {"error": "parameter 'mask_prompt': refused by the test"}})
        page.click("#submit")
        status_is(page, "parameter 'mask_prompt': refused by the test")
        assert page.get_attribute("#status", "class") == "error"
        page.wait_for_function("!document.getElementById('submit').disabled", timeout=WAIT)
        body = json.loads(posts[-1])
        assert "mask" not in body and body["mask_prompt"] == "the sofa" and body["mask_threshold"] == 0.25
        assert (body["extend_right"], body["extend_top"]) == (64, 32)
        assert "extend_left" not in body and "extend_bottom" not in body
        assert "invert_mask" not in body and "mask_only" not in body
        assert body["prompt"] == "a red armchair" and body["original_size"] is True

        # Preview mask: the same request as mask_only with one sample; a job that FAILED (the words found
        # nothing) shows the job's error.
        page.check("#invert_mask")
        page.fill("#samples", "3")
        job = f"{srv.url}/v2/requests/fake-job"
        answers.append({"status": 200, "json": {"request_id": "fake-job", "status": "QUEUED",
                                                "status_url": f"{job}/status", "response_url": job,
                                                "cancel_url": f"{job}/cancel"}})
        failed = {"request_id": "fake-job", "status": "FAILED",
                  "error": "mask_prompt 'the sofa' found nothing on the image; try a lower mask_threshold"}
        page.route(f"{job}/status/stream", lambda route: route.fulfill(
            status=200, content_type="text/event-stream", body=f"event: status\ndata: {json.dumps(failed)}\n\n"))
        page.click("#preview_mask")
        status_is(page, "Mask preview failed: mask_prompt 'the sofa' found nothing on the image")
        assert page.get_attribute("#status", "class") == "error"
        page.wait_for_function("!document.getElementById('preview_mask').disabled && "
                               "!document.getElementById('submit').disabled", timeout=WAIT)
        body = json.loads(posts[-1])
        assert body["mask_only"] is True and body["samples"] == 1 and body["invert_mask"] is True
        assert body["mask_prompt"] == "the sofa" and "mask" not in body and body["extend_right"] == 64
        assert not page.is_visible("#preview_tag") and not page.is_visible("#mask_figure")

        # An extension alone is enough too: no words, no mask sent.
        page.uncheck("#invert_mask")
        page.fill("#mask_prompt", "   ")
        answers.append({"status": 400, "json": {"error": "refused by the test"}})
        page.click("#submit")
        status_is(page, "refused by the test")
        body = json.loads(posts[-1])
        assert not {"mask", "mask_prompt", "mask_threshold", "invert_mask", "mask_only"} & body.keys(), body.keys()
        assert (body["extend_right"], body["extend_top"], body["samples"]) == (64, 32, 3)
        assert len(posts) == 3
    assert page.blocked == []


@pytest.mark.parametrize("name, viewport, touch", [(w[0], w[1], w[2]) for w in WIDTHS], ids=[w[0] for w in WIDTHS])
def test_preview_mask_shows_the_mask_over_the_photo(name, viewport, touch, tmp_path, tiny_model_dir, inpainter,
                                                     browser):  # noqa: F811
    """Needs the server's mask_prompt / mask_only. A stroke and an extension on the right: the previewed mask is
    white on the stroke and on the extension, black elsewhere; it shows in the result panel and, tinted, over
    the photo, under the strokes, which stay as they were and can still be painted on.

    Buttons are clicked, as in the tests above, even on a touch screen: in headless Chromium the first tap
    after a CDP touch drag on the canvas (touch-action: none) gets no click, the page before these controls
    included."""
    width, height = viewport
    with page_on_server(browser, viewport, touch, tmp_path, tiny_model_dir, inpainter) as (page, srv, posts):
        box = load_photo(page, tmp_path, (640, 480))
        page.locator("#paint").scroll_into_view_if_needed()
        box = page.locator("#paint").bounding_box()
        stroke = [(box["x"] + box["width"] * (0.2 + 0.02 * i), box["y"] + box["height"] * 0.5) for i in range(11)]
        (touch_stroke if touch else mouse_stroke)(page, stroke)
        page.wait_for_function("maskPainted", timeout=WAIT)
        page.fill("#extend_right", "128")  # 640x480 grows to 768x480; Original size is on (4:3)
        assert page.text_content("#output_size").startswith("Output: 768x480")
        page.click("#preview_mask")
        wait_until(page, "!document.getElementById('mask_figure').hidden && "
                         "document.getElementById('mask_image').naturalWidth > 0 && "
                         "!document.getElementById('preview_mask').disabled")
        status = page.text_content("#status")
        assert "Mask preview" in status and "nothing painted" in status and page.get_attribute("#status", "class") != "error"
        body = json.loads(posts[-1])
        assert body["mask_only"] is True and body["samples"] == 1 and body["extend_right"] == 128 and "mask" in body
        assert "Mask preview, 768x480" in page.text_content("#mask_caption")

        # The mask answered: at the output size, white on the stroke and the extension, black far from both.
        mask = page.evaluate("""(() => { const img = document.getElementById('mask_image');
            const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            const at = (x, y) => ctx.getImageData(x, y, 1, 1).data[0];
            return [img.naturalWidth, img.naturalHeight, at(0.3 * 640, 240), at(700, 240), at(600, 40), at(5, 470)];
        })()""")
        assert mask[:2] == [768, 480]
        assert mask[2] > 200 and mask[3] > 200, mask  # the stroke, the extension
        assert mask[4] < 50 and mask[5] < 50, mask  # away from both

        # On the stage: the preview (the part over the photo), labelled, under the strokes, which are unchanged.
        assert page.is_visible("#preview") and page.is_visible("#preview_tag")
        assert page.text_content("#preview_tag") == "Mask preview"
        page.locator("#paint").scroll_into_view_if_needed()
        on_stage = page.evaluate("""(() => {
            const at = (id, fx, fy) => { const c = document.getElementById(id);
              return c.getContext('2d').getImageData(Math.round(fx * c.width), Math.round(fy * c.height), 1, 1).data; };
            const order = [...document.getElementById('stage').children].map((e) => e.id);
            return { stroke: at('preview', 0.3, 0.5)[0], corner: at('preview', 0.95, 0.05)[0],
                     paint: at('paint', 0.3, 0.5)[3], order,
                     top: document.elementFromPoint(...(() => { const r = document.getElementById('paint')
                       .getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()).id };
        })()""")
        assert on_stage["stroke"] > 200 and on_stage["corner"] < 50, on_stage
        assert on_stage["paint"] > 0, on_stage  # the stroke is still drawn
        assert on_stage["order"].index("preview") < on_stage["order"].index("paint") and on_stage["top"] == "paint"
        assert no_sideways_scroll(page, width)
        for selector in ("#preview_tag", "#mask_figure"):
            r = page.locator(selector).bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= width, (selector, r)
        page.screenshot(path=f"/tmp/playground_{width}.png", full_page=True)

        # Words too (threshold 0: the tiny random CLIPSeg finds everything): the preview is the whole picture.
        page.fill("#mask_prompt", "the sofa")
        page.fill("#mask_threshold", "0")
        page.click("#preview_mask")
        wait_until(page, "document.getElementById('status').textContent.startsWith('Mask preview') && "
                         "!document.getElementById('preview_mask').disabled")
        assert page.get_attribute("#status", "class") != "error", page.text_content("#status")
        body = json.loads(posts[-1])
        assert body["mask_prompt"] == "the sofa" and body["mask_threshold"] == 0 and body["mask_only"] is True
        page.screenshot(path=f"/tmp/playground_{width}_words.png", full_page=True)

        # Painting goes on over the preview, and Inpaint paints: the result replaces the mask in the result panel.
        page.locator("#paint").scroll_into_view_if_needed()
        box = page.locator("#paint").bounding_box()
        (touch_stroke if touch else mouse_stroke)(page, [(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.8),
                                                         (box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8)])
        assert page.evaluate("""(() => { const c = document.getElementById('paint');
            return c.getContext('2d').getImageData(Math.round(0.75 * c.width), Math.round(0.8 * c.height), 1, 1).data[3]; })()""") > 0
        page.fill("#mask_prompt", "")
        page.fill("#prompt", "a red armchair")
        page.click("#submit")
        wait_until(page, "document.getElementById('status').textContent.startsWith('Done') && "
                         "document.getElementById('after').naturalWidth > 0")
        assert page.evaluate("[document.getElementById('after').naturalWidth,"
                             " document.getElementById('after').naturalHeight]") == [768, 480]
        assert page.is_hidden("#mask_figure") and page.is_visible("#compare")
        assert page.is_visible("#preview")  # the preview stays on the stage until hidden or the mask is cleared
        page.click("#hide_preview")
        assert page.is_hidden("#preview") and page.is_hidden("#preview_tag") and page.is_hidden("#hide_preview")
    assert page.blocked == []
