"""Masks from words (mask_prompt), outpainting (extend_*), invert_mask and mask_only: the pixel rules, the real
pipeline with the tiny random CLIPSeg, and the service over HTTP with the real Segmind SDK."""

import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from segmind import SegmindClient

from inference import Inpainter
from inference.compose import FEATHER_REACH, combine_masks, extend_canvas
from inference.masks import MaskModel
from schemas import InpaintRequest
from schemas.job_errors import MaskModelMissing, MaskNotFound
from tests.images import b64_png, box_mask, data_uri, gradient_image
from tests.servers import KEY_A, KEY_B, api_server, make_settings
from weights import MASK_MODEL_FOLDER

SLUG = "sd1.5-inpainting"
IMAGE = gradient_image()
FEATHER = 4
THRESHOLD = 0.6  # the tiny CLIPSeg finds about a twentieth of the test picture from here; nothing from 0.95


def params(**kw):
    body = dict(image="unused", prompt="a red chair", seed=3) | kw
    return InpaintRequest(**body).params()


def white(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L")) >= 128


# ---- the pixel rules -------------------------------------------------------------------------

def test_union_of_drawn_and_found_masks_stretched_to_the_picture_and_inverted():
    drawn = box_mask(256, 256, (0, 0, 64, 64))  # half the picture's size: stretched to it
    found = box_mask(512, 512, (400, 400, 512, 512))
    union = white(combine_masks((512, 512), drawn, found, invert=False))
    assert union[:128, :128].all() and union[400:, 400:].all()
    assert union.sum() == 128 * 128 + 112 * 112
    inverted = white(combine_masks((512, 512), drawn, found, invert=True))
    assert (inverted == ~union).all()
    assert not white(combine_masks((512, 512), None, None, invert=False)).any()


def test_extended_canvas_mirrors_the_picture_and_paints_only_the_new_border():
    image, mask = extend_canvas(IMAGE, box_mask(), (10, 0, 700, 20))  # wider than the picture on the right
    assert image.size == mask.size == (512 + 710, 532)
    pixels, original = np.asarray(image), np.asarray(IMAGE)
    assert (pixels[:512, 10:522] == original).all()
    assert (pixels[:512, 9::-1] == original[:, :10]).all()  # left border: the picture mirrored
    assert (pixels[:512, 522:522 + 512] == original[:, ::-1]).all()  # right: mirrored, then again
    painted = white(mask)
    assert painted[:, :10].all() and painted[:, 522:].all() and painted[512:, :].all()
    assert (painted[:512, 10:522] == white(box_mask())).all()


# ---- the real pipeline, tiny models ------------------------------------------------------------

@pytest.fixture(scope="module")
def found_mask(inpainter):
    """What the tiny CLIPSeg finds for 'the sofa' on the test picture."""
    return inpainter.masks.model.find(IMAGE, "the sofa", THRESHOLD).mask


def test_the_found_mask_is_the_models_scores_above_the_threshold(inpainter, found_mask):
    scores = inpainter.masks.model.scores(IMAGE, "the sofa")
    assert scores.shape == (352, 352) and 0 <= scores.min() <= scores.max() <= 1
    small = (scores >= THRESHOLD).astype(np.uint8) * 255
    expected = Image.fromarray(small).resize((512, 512), Image.Resampling.BILINEAR)
    assert (white(found_mask) == white(expected)).all()
    assert 0 < white(found_mask).mean() < 1  # the random model finds some of the picture, not all of it
    lower = white(inpainter.masks.model.find(IMAGE, "the sofa", THRESHOLD - 0.1).mask)
    assert lower.sum() > white(found_mask).sum() and (lower | white(found_mask) == lower).all()
    assert white(inpainter.masks.model.find(IMAGE, "the sofa", 0.0).mask).all()  # 0 takes the whole picture


def test_a_small_find_on_a_small_picture_is_kept(inpainter):
    """The model's 352x352 mask scaled down to a few pixels: one passing score still marks a pixel."""
    picture = gradient_image(8, 6)
    best = float(inpainter.masks.model.scores(picture, "the sofa").max())
    assert (inpainter.masks.model.scores(picture, "the sofa") >= best).sum() < 352 * 352 / 64  # under a pixel
    found = inpainter.masks.model.find(picture, "the sofa", best)
    assert found.mask.size == (8, 6) and found.mask.getbbox() is not None


def test_mask_prompt_repaints_what_it_finds_and_keeps_the_rest(inpainter, found_mask):
    out = inpainter.run(params(mask_prompt="the sofa", mask_threshold=THRESHOLD, mask_blur=FEATHER), IMAGE, None)
    assert out.images[0].size == (512, 512) and out.mask_time > 0
    reach = ndimage.binary_dilation(white(found_mask), iterations=FEATHER_REACH * FEATHER)
    result, original = np.asarray(out.images[0]), np.asarray(IMAGE)
    assert (result[~reach] == original[~reach]).all()  # untouched beyond the found mask's feathered edge
    assert (result[white(found_mask)] != original[white(found_mask)]).any()


def test_mask_only_answers_the_union_and_its_inverse(inpainter, found_mask):
    drawn = box_mask(box=(0, 0, 100, 100))
    union = inpainter.run(params(mask="m", mask_prompt="the sofa", mask_threshold=THRESHOLD, mask_only=True), IMAGE,
                          drawn)
    assert union.images[0].mode == "L" and union.inference_time == 0 and union.mask_time > 0
    assert (white(union.images[0]) == (white(found_mask) | white(drawn))).all()
    inverted = inpainter.run(params(mask="m", invert_mask=True, mask_only=True), IMAGE, drawn)
    assert (white(inverted.images[0]) == ~white(drawn)).all() and inverted.mask_time is None


def test_a_prompt_that_finds_nothing_fails_with_what_to_do(inpainter):
    with pytest.raises(MaskNotFound, match=r"'a unicorn' found nothing .* below mask_threshold 0.95\): lower") as e:
        inpainter.run(params(mask_prompt="a unicorn", mask_threshold=0.95), IMAGE, None)
    assert e.value.mask_time > 0 and e.value.request.mask_prompt == "a unicorn"
    everything = Image.new("L", IMAGE.size, 255)  # drawn over the whole picture: with the found mask, all of it
    with pytest.raises(MaskNotFound, match="nothing is left to repaint"):
        inpainter.run(params(mask="m", mask_prompt="the sofa", invert_mask=True), IMAGE, everything)


def test_outpainting_answers_the_extended_size_and_keeps_the_picture(inpainter):
    out = inpainter.run(params(extend_left=64, extend_bottom=128, original_size=True, mask_blur=FEATHER), IMAGE,
                        None)
    assert out.images[0].size == (576, 640)
    inner = np.asarray(out.images[0])[:512 - FEATHER_REACH * FEATHER, 64 + FEATHER_REACH * FEATHER:]
    assert (inner == np.asarray(IMAGE)[:512 - FEATHER_REACH * FEATHER, FEATHER_REACH * FEATHER:]).all()
    # Only masked: the box around the painted border, the rest of the picture untouched.
    masked = inpainter.run(params(extend_right=32, original_size=True, only_masked=True, mask_blur=FEATHER), IMAGE,
                           None)
    assert masked.images[0].size == (544, 512)
    keep = 512 - FEATHER_REACH * FEATHER
    assert (np.asarray(masked.images[0])[:, :keep] == np.asarray(IMAGE)[:, :keep]).all()


@pytest.mark.parametrize("state", ["missing", "cut short", "damaged"])
def test_without_the_mask_model_drawn_masks_still_work(tiny_model_dir, tmp_path, state):
    folder = tmp_path / "clipseg"
    if state != "missing":  # a download cut short has the small files; a damaged one has weights that fail to load
        shutil.copytree(tiny_model_dir / MASK_MODEL_FOLDER, folder)
        if state == "cut short":
            (folder / "model.safetensors").unlink()
        else:
            (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    model = Inpainter(tiny_model_dir, mask_model_dir=folder)
    assert model.masks.model is None
    with pytest.raises(MaskModelMissing, match="send a drawn mask instead"):
        model.run(params(mask_prompt="the sofa"), IMAGE, None)
    assert model.run(params(mask="m"), IMAGE, box_mask()).images[0].size == (512, 512)


def test_mask_model_loads_from_the_weights_folder(tiny_model_dir):
    model = MaskModel(tiny_model_dir / MASK_MODEL_FOLDER)
    assert model.side == 352 and model.find(IMAGE, "x" * 400, 0.5).mask.size == IMAGE.size  # long: cut at 77


# ---- over HTTP ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path_factory.mktemp("state"), tiny_model_dir, input_max_pixels=1024 * 1024,
                             key_credits={KEY_B: 100})
    with api_server(settings, lambda: inpainter) as srv:
        yield srv


def client(server, key=KEY_A) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=120)


def test_sdk_mask_prompt_without_a_mask(server):
    sdk = SegmindClient(api_key=KEY_A, base_url=f"{server.url}/v1", timeout=120)
    response = sdk.run_sync(SLUG, image=b64_png(IMAGE), prompt="a blue sofa", mask_prompt="the sofa",
                            output_format="png")
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)


def test_v2_reports_the_mask_models_time(server):
    with client(server) as http:
        submitted = http.post(f"/v2/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "mask_prompt": "sky",
                                                   "mask": data_uri(box_mask())})
        assert submitted.status_code == 200, submitted.text
        status_url = f"/v2/requests/{submitted.json()['request_id']}/status"
        while http.get(status_url, params={"wait": 10}).json()["status"] not in ("COMPLETED", "FAILED"):
            pass
        body = http.get(f"/v2/requests/{submitted.json()['request_id']}").json()
    assert body["status"] == "COMPLETED", body
    assert body["metrics"]["mask_time"] > 0 and "warnings" not in body


def test_v1_prompt_that_finds_nothing_is_422_and_costs_nothing(server):
    with client(server, KEY_B) as http:
        first = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "mask": data_uri(box_mask())})
        left = int(first.headers["x-remaining-credits"])
        failed = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "mask_prompt": "a unicorn",
                                                "mask_threshold": 0.95})
        assert failed.status_code == 422
        assert "mask_prompt 'a unicorn' found nothing" in failed.json()["error"]
        after = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "mask_only": True,
                                               "extend_top": 8})
        assert int(after.headers["x-remaining-credits"]) == left - 1  # the failed job's credit came back


def test_mask_only_over_v1_is_the_mask_at_the_answers_size(server):
    with client(server) as http:
        response = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "mask_only": True,
                                                  "extend_right": 256, "original_size": True, "output_format": "png"})
    assert response.status_code == 200, response.text
    mask = Image.open(io.BytesIO(response.content))
    assert mask.size == (768, 512) and mask.mode == "L"
    assert white(mask)[:, 512:].all() and not white(mask)[:, :512].any()


@pytest.mark.parametrize("extra, field, words", [
    ({}, "mask", "required unless mask_prompt or an extend_*"),
    ({"invert_mask": True}, "invert_mask", "no mask to invert"),
    ({"mask_prompt": "sofa", "mask_only": True, "samples": 2}, "samples", "mask_only answers one mask"),
    ({"extend_left": 1025}, "extend_left", "less than or equal to 1024"),
    ({"extend_left": 1024, "extend_right": 1024}, "extend_left", "extended canvas would be 2560x512"),
    ({"mask_prompt": " "}, "mask_prompt", "must not be empty"),
    ({"mask_prompt": "sofa", "mask_threshold": 1.5}, "mask_threshold", "less than or equal to 1"),
])
def test_bad_mask_options_are_400_naming_the_parameter(server, extra, field, words):
    with client(server) as http:
        response = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p"} | extra)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"] and f"'{field}'" in response.json()["error"]


def test_a_request_without_a_mask_is_stored_with_an_empty_one():
    """Every store keeps two non-empty inputs per job: a mask-less request stores a black pixel, which the worker
    stretches over the image like any mask (nothing drawn)."""
    from service.http.intake import NO_MASK_PNG

    blank = Image.open(io.BytesIO(NO_MASK_PNG))
    assert blank.size == (1, 1) and not white(combine_masks(IMAGE.size, blank, None, invert=False)).any()


def test_metrics_count_the_mask_models_seconds(server):
    from prometheus_client.parser import text_string_to_metric_families

    def mask_jobs() -> float:
        text = httpx.get(f"{server.url}/metrics", headers={"x-api-key": KEY_A}, timeout=30).text
        return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                     if sample.name == "inpaint_mask_seconds_count"), 0.0)

    before = mask_jobs()
    with client(server) as http:
        done = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "mask_prompt": "the sofa"})
        assert done.status_code == 200, done.text
    assert mask_jobs() == before + 1


def test_outpainting_squashed_to_the_model_size_says_so(server):
    with client(server) as http:
        squashed = http.post(f"/v2/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "extend_right": 256})
        kept = http.post(f"/v2/{SLUG}", json={"image": b64_png(IMAGE), "prompt": "p", "extend_right": 256,
                                              "original_size": True})
    assert "extended canvas is 768x512 but the answer is 512x512" in squashed.headers["x-inpaint-warning"]
    assert "original_size: true" in squashed.headers["x-inpaint-warning"]
    assert "x-inpaint-warning" not in kept.headers


def test_a_mask_preview_needs_no_prompt_a_painting_does(server):
    with client(server) as http:
        preview = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "mask_prompt": "the sofa",
                                                 "mask_only": True})
        painting = http.post(f"/v1/{SLUG}", json={"image": b64_png(IMAGE), "mask_prompt": "the sofa"})
    assert preview.status_code == 200, preview.text
    assert painting.status_code == 400 and painting.json()["field"] == "prompt"
    assert "parameter 'prompt' is required" in painting.json()["error"]
