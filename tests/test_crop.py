"""Original-size output and inpaint-only-masked: the box geometry, input reading, and the stitch on the tiny model."""

import io
import random

import httpx
import numpy as np
import pytest
from PIL import Image

from inference.compose import prepare, read_image, read_mask, stitch_weight
from inference.crop import box_size, context_box, fit_box, model_scale
from schemas import InpaintRequest
from tests.images import b64_png, box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, api_server, make_settings


def request(**kw) -> InpaintRequest:
    return InpaintRequest(image="unused", mask="unused", prompt="a red chair", seed=kw.pop("seed", 1), **kw)


def contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def outside(size, box, margin) -> np.ndarray:
    """True for pixels farther than `margin` (per axis) from `box`."""
    far = np.ones((size[1], size[0]), bool)
    left, top, right, bottom = box
    far[max(top - margin, 0):bottom + margin, max(left - margin, 0):right + margin] = False
    return far


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


# ---- geometry --------------------------------------------------------------------------------

def test_box_in_the_middle_is_padded_and_squared():
    box = context_box((1800, 1400, 2200, 1700), (4032, 3024), (512, 512), 32)
    assert box_size(box) == (464, 464)  # 400+64 wide; 300+64 high grown to the square target
    assert contains(box, (1768, 1368, 2232, 1732))
    assert box == (1768, 1318, 2232, 1782)  # centred on the mask


def test_box_grows_to_a_non_square_target():
    box = context_box((100, 100, 200, 150), (1000, 1000), (512, 768), 10)
    width, height = box_size(box)
    assert (width, height) == (120, 180) and width * 768 == height * 512
    assert contains(box, (90, 90, 210, 160))


def test_mask_in_the_corner_slides_the_box_inside():
    box = context_box((0, 0, 10, 10), (640, 480), (512, 512), 32)
    assert box == (0, 0, 74, 74)
    box = context_box((630, 470, 640, 480), (640, 480), (512, 512), 32)
    assert box == (566, 406, 640, 480)


def test_mask_touching_one_border():
    box = context_box((0, 200, 50, 300), (800, 600), (768, 512), 16)
    assert box[0] == 0 and contains(box, (0, 184, 66, 316))
    width, height = box_size(box)
    assert abs(width * 512 - height * 768) < 768  # aspect within one pixel


def test_tiny_mask():
    assert context_box((50, 50, 51, 51), (100, 100), (512, 512), 0) == (50, 50, 51, 51)
    assert context_box((50, 50, 51, 51), (100, 100), (512, 512), 8) == (42, 42, 59, 59)


def test_mask_covering_all_gives_the_whole_image():
    assert context_box((0, 0, 700, 500), (700, 500), (512, 512), 32) == (0, 0, 700, 500)


def test_box_wider_than_the_image_is_cut_to_it():
    # A wide mask in a tall, narrow image: the square grown box cannot fit the width.
    box = context_box((0, 500, 300, 600), (300, 2000), (512, 512), 10)
    assert box[0] == 0 and box[2] == 300 and contains(box, (0, 490, 300, 610))


def test_empty_or_outside_mask_box_is_refused():
    with pytest.raises(ValueError):
        context_box((10, 10, 10, 20), (100, 100), (512, 512), 8)
    with pytest.raises(ValueError):
        context_box((200, 200, 300, 300), (100, 100), (512, 512), 8)


def test_box_invariants_on_random_masks():
    rng = random.Random(14)
    for _ in range(2000):
        image = (rng.randint(1, 5000), rng.randint(1, 5000))
        left, top = rng.randrange(image[0]), rng.randrange(image[1])
        mask = (left, top, rng.randint(left + 1, image[0]), rng.randint(top + 1, image[1]))
        target = rng.choice([(512, 512), (512, 768), (768, 512), (768, 768)])
        padding = rng.randint(0, 300)
        box = context_box(mask, image, target, padding)
        assert contains((0, 0, *image), box) and contains(box, mask), (image, mask, target, padding, box)
        width, height = box_size(box)
        wanted = (max(mask[0] - padding, 0), max(mask[1] - padding, 0),
                  min(mask[2] + padding, image[0]), min(mask[3] + padding, image[1]))
        assert contains(box, wanted), (image, mask, target, padding, box)
        if width < image[0] and height < image[1]:  # not cut by the image: the target's aspect, to a pixel
            assert abs(width * target[1] - height * target[0]) < max(target), (image, mask, target, box)


def test_fit_box():
    assert fit_box((464, 464), (512, 512)) == (0, 0, 512, 512)
    assert fit_box((4032, 3024), (512, 512)) == (0, 64, 512, 448)  # letterboxed, centred
    assert fit_box((3024, 4032), (512, 768)) == (0, 42, 512, 725)
    assert fit_box((100, 1000), (512, 512)) == (230, 0, 281, 512)
    assert fit_box((121, 181), (512, 768)) == (0, 0, 512, 768)  # under one source pixel off: fills
    assert fit_box((121, 180), (512, 768)) == (0, 3, 512, 765)  # one whole pixel off: bars
    assert fit_box((1, 16000), (512, 512))[2] - fit_box((1, 16000), (512, 512))[0] == 1


# ---- reading the inputs ----------------------------------------------------------------------

def test_rgba_mask_reads_alpha():
    rgba = Image.new("RGBA", (64, 64), (255, 255, 255, 0))  # transparent white: keep
    rgba.paste((255, 255, 255, 255), (10, 10, 30, 30))  # opaque white: repaint
    rgba.paste((255, 255, 255, 128), (40, 40, 50, 50))  # half: grey
    mask = read_mask(Image.open(io.BytesIO(png_bytes(rgba))))
    assert mask.mode == "L"
    assert mask.getpixel((0, 0)) == 0 and mask.getpixel((20, 20)) == 255 and mask.getpixel((45, 45)) == 128
    opaque = Image.new("RGBA", (8, 8), (0, 0, 0, 255))  # a plain black/white mask saved with alpha
    opaque.paste((255, 255, 255, 255), (0, 0, 4, 8))
    assert read_mask(opaque).getpixel((1, 1)) == 255 and read_mask(opaque).getpixel((6, 1)) == 0


def test_palette_mask_with_transparency():
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 255, 255] * 256)  # every index is white ...
    palette.paste(1, (0, 0, 8, 16))
    palette.info["transparency"] = 0  # ... but index 0 is transparent
    mask = read_mask(Image.open(io.BytesIO(png_bytes(palette))))
    assert mask.getpixel((2, 2)) == 255 and mask.getpixel((12, 2)) == 0


def sixteen_bit_png(value: int, size=(40, 30)) -> Image.Image:
    image = Image.fromarray(np.full((size[1], size[0]), value, np.uint16))
    return Image.open(io.BytesIO(png_bytes(image)))


def test_sixteen_bit_png_is_scaled_not_clipped():
    dark = sixteen_bit_png(0x2020)  # 8224 of 65535: dark grey
    assert dark.mode.startswith("I")
    assert read_image(dark).getpixel((0, 0)) == (32, 32, 32)
    assert read_mask(sixteen_bit_png(0x0101)).getpixel((0, 0)) == 1  # near-black mask keeps
    assert read_mask(sixteen_bit_png(0xFFFF)).getpixel((0, 0)) == 255


def jpeg_with_orientation(image: Image.Image, orientation: int) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95, exif=exif)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_exif_orientation_is_applied():
    stored = jpeg_with_orientation(gradient_image(60, 40), 6)  # stored landscape, shown portrait
    assert stored.size == (60, 40)
    assert read_image(stored).size == (40, 60)
    assert read_mask(jpeg_with_orientation(box_mask(60, 40, (0, 0, 10, 10)), 6)).size == (40, 60)


def test_stitch_weight_reach_is_under_three_blurs():
    mask = box_mask(400, 400, (150, 150, 250, 250))
    for blur in (1, 2, 4, 8, 16, 32, 64):
        weight = arr(stitch_weight(mask, blur))
        assert not weight[outside((400, 400), (150, 150, 250, 250), 3 * blur)].any(), blur
        assert (weight[150:250, 150:250] == 255).all()


# ---- prepare: what the model sees -------------------------------------------------------------

def test_effective_resolution_crop_vs_whole_image():
    image, mask = gradient_image(4032, 3024), box_mask(4032, 3024, (1800, 1400, 2200, 1700))
    crop = prepare(image, mask, (512, 512), original_size=True, only_masked=True, padding=32)
    whole = prepare(image, mask, (512, 512), original_size=True)
    assert crop.box == (1768, 1318, 2232, 1782) and crop.placed == (0, 0, 512, 512)
    assert whole.box == (0, 0, 4032, 3024) and whole.placed == (0, 64, 512, 448)
    assert model_scale(crop.box, crop.placed) > 1.1 > 0.127 > model_scale(whole.box, whole.placed) > 0.126
    for job in (crop, whole):
        assert job.model_image.size == job.model_mask.size == (512, 512)


def test_letterbox_bars_are_kept_context():
    job = prepare(gradient_image(400, 200), box_mask(400, 200, (0, 0, 400, 200)), (512, 512), original_size=True)
    mask = arr(job.model_mask)
    assert job.placed == (0, 128, 512, 384)
    assert not mask[:128].any() and not mask[384:].any() and (mask[128:384] == 255).all()
    top_row = arr(job.model_image)[128]
    assert (arr(job.model_image)[:128] == top_row).all()  # bars repeat the edge


def test_feather_fits_inside_the_box():
    job = prepare(gradient_image(2000, 2000), box_mask(2000, 2000, (900, 900, 1000, 1000)), (512, 512),
                  only_masked=True, original_size=True, padding=0, feather_px=20)
    assert contains(job.box, (820, 820, 1080, 1080))
    weight = arr(job.weight)
    assert not weight[0].any() and not weight[-1].any() and not weight[:, 0].any() and not weight[:, -1].any()


# ---- the tiny model, end to end ---------------------------------------------------------------

@pytest.mark.parametrize("target", [(512, 512), (768, 512), (512, 768)])
def test_only_masked_keeps_every_pixel_outside_the_feather(inpainter, target):
    size, hole = (1201, 907), (700, 300, 850, 420)  # odd sizes
    image = gradient_image(*size)
    out = inpainter.run(request(only_masked=True, original_size=True, img_width=target[0], img_height=target[1],
                                mask_blur=3), image, box_mask(*size, hole))
    result = out.images[0]
    assert result.size == size
    far = outside(size, hole, 3 * 3)
    assert np.array_equal(arr(result)[far], arr(image)[far])
    assert np.abs(arr(result)[hole[1]:hole[3], hole[0]:hole[2]] - arr(image)[hole[1]:hole[3], hole[0]:hole[2]]
                  ).mean() > 5  # repainted


def test_whole_image_at_original_size_keeps_unmasked_pixels(inpainter):
    size, hole = (333, 251), (100, 80, 200, 160)
    image = gradient_image(*size)
    out = inpainter.run(request(original_size=True, mask_blur=0, samples=2), image, box_mask(*size, hole))
    outside_mask = np.asarray(box_mask(*size, hole)) == 0
    for result in out.images:
        assert result.size == size
        assert np.array_equal(arr(result)[outside_mask], arr(image)[outside_mask])
        assert (arr(result)[~outside_mask] != arr(image)[~outside_mask]).any()


def test_mask_grow_repaints_the_ring_and_no_further(inpainter):
    size, hole = (640, 480), (300, 200, 340, 240)
    image = gradient_image(*size)
    out = inpainter.run(request(only_masked=True, original_size=True, mask_grow=20, mask_blur=0),
                        image, box_mask(*size, hole)).images[0]
    assert np.array_equal(arr(out)[outside(size, hole, 20)], arr(image)[outside(size, hole, 20)])
    ring = ~outside(size, hole, 20) & outside(size, hole, 0)
    assert (arr(out)[ring] != arr(image)[ring]).mean() > 0.5


def test_mask_at_the_corner_and_mask_covering_all(inpainter):
    size = (500, 300)
    image = gradient_image(*size)
    corner = inpainter.run(request(only_masked=True, original_size=True, mask_blur=0), image,
                           box_mask(*size, (0, 0, 20, 20))).images[0]
    keep = np.asarray(box_mask(*size, (0, 0, 20, 20))) == 0
    assert corner.size == size and np.array_equal(arr(corner)[keep], arr(image)[keep])
    everything = inpainter.run(request(only_masked=True, original_size=True), image,
                               box_mask(*size, (0, 0, *size))).images[0]
    assert everything.size == size and (arr(everything) != arr(image)).mean() > 0.5


def test_empty_mask_returns_the_input_at_its_size(inpainter):
    image = gradient_image(321, 123)
    for flags in ({"original_size": True}, {"original_size": True, "only_masked": True}):
        out = inpainter.run(request(**flags), image, box_mask(321, 123, (0, 0, 0, 0))).images[0]
        assert np.array_equal(arr(out), arr(image))


def test_only_masked_without_original_size_answers_at_the_model_size(inpainter):
    out = inpainter.run(request(only_masked=True, img_width=768), gradient_image(1000, 700),
                        box_mask(1000, 700, (400, 300, 500, 400))).images[0]
    assert out.size == (768, 512)


def test_mask_of_another_size_is_scaled_to_the_image(inpainter):
    size = (800, 600)
    image = gradient_image(*size)
    out = inpainter.run(request(only_masked=True, original_size=True, mask_blur=0), image,
                        box_mask(400, 300, (100, 100, 150, 150))).images[0]
    keep = outside(size, (200, 200, 300, 300), 2)
    assert out.size == size and np.array_equal(arr(out)[keep], arr(image)[keep])


def test_exif_rotated_photo_lines_up_with_its_mask(inpainter):
    stored = jpeg_with_orientation(gradient_image(300, 200), 6)  # shown as 200x300
    shown = read_image(stored)
    hole = (20, 200, 80, 260)  # drawn on the shown (portrait) picture, near its bottom
    out = inpainter.run(request(only_masked=True, original_size=True, mask_blur=0), stored,
                        box_mask(200, 300, hole)).images[0]
    keep = np.asarray(box_mask(200, 300, hole)) == 0
    assert out.size == (200, 300)
    assert np.array_equal(arr(out)[keep], arr(shown)[keep])
    assert (arr(out)[~keep] != arr(shown)[~keep]).mean() > 0.5


def test_sixteen_bit_image_and_rgba_mask_end_to_end(inpainter):
    image = sixteen_bit_png(0x2020, (300, 200))
    mask = Image.new("RGBA", (300, 200), (255, 255, 255, 0))  # transparent white must be kept
    mask.paste((255, 255, 255, 255), (100, 50, 150, 100))
    mask = Image.open(io.BytesIO(png_bytes(mask)))
    out = arr(inpainter.run(request(original_size=True, mask_blur=0), image, mask).images[0])
    keep = outside((300, 200), (100, 50, 150, 100), 0)
    assert (out[keep] == 32).all()  # dark grey stays dark grey, not white
    assert (out[~keep] != 32).any()


# ---- over HTTP, v1 and v2 ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path_factory.mktemp("state"), tiny_model_dir)
    with api_server(settings, lambda: inpainter) as srv:
        yield srv


def test_v1_and_v2_answer_at_the_original_size(server):
    size, hole = (701, 503), (300, 200, 380, 260)
    image = gradient_image(*size)
    body = {"image": b64_png(image), "mask": b64_png(box_mask(*size, hole)), "prompt": "a red chair", "seed": 3,
            "original_size": True, "only_masked": True, "mask_padding": 16, "mask_blur": 2, "output_format": "png"}
    far = outside(size, hole, 6)
    with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        v1 = http.post("/v1/sd1.5-inpainting", json=body)
        assert v1.status_code == 200, v1.text
        request_id = http.post("/v2/sd1.5-inpainting", json=body).json()["request_id"]
        status = {"status": "QUEUED"}
        while status["status"] not in ("COMPLETED", "FAILED"):
            status = http.get(f"/v2/requests/{request_id}/status", params={"wait": 20}).json()
        assert status["status"] == "COMPLETED", status
        v2 = httpx.get(http.get(f"/v2/requests/{request_id}").json()["output"])
        bad = http.post("/v1/sd1.5-inpainting", json={**body, "mask_padding": -1})
        wrong_type = http.post("/v2/sd1.5-inpainting", json={**body, "only_masked": "yes"})
    for response in (v1, v2):
        result = Image.open(io.BytesIO(response.content))
        assert result.format == "PNG" and result.size == size
        assert np.array_equal(arr(result)[far], arr(image)[far])
    assert v1.content == v2.content  # same seed, same bytes
    assert bad.status_code == 400 and "parameter 'mask_padding'" in bad.json()["error"]
    assert wrong_type.status_code == 400 and "parameter 'only_masked'" in wrong_type.json()["error"]


def test_each_side_is_capped_not_only_the_pixel_count():
    from service.http.inputs import check_image
    from service.jobs.errors import BadInput

    strip = png_bytes(Image.new("L", (1, 9000), 0))  # 9000 pixels: far under the pixel cap
    with pytest.raises(BadInput, match="8192 pixels per side"):
        check_image(strip, "image", max_pixels=4096 * 4096)
    assert check_image(png_bytes(Image.new("L", (1, 8192), 0)), "image", max_pixels=4096 * 4096).size == (1, 8192)
