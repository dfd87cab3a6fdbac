"""Taking a submission in: each input decoded once and handed to the worker, one thread hop per submit,
and the service's own time (`metrics.overhead_time`)."""

import base64
import io
import threading

import httpx
import pytest
from PIL import Image

import service.http.intake
from service.http.app import create_app
from service.http.inputs import mask_warnings
from service.embedded import build_embedded
from service.jobs.handover import MAX_WIRE_PIXELS, DecodedInputs, from_wire, to_wire
from service.jobs.failures import Failure
from service.jobs.worker import run_jobs
from schemas import InpaintParams
from tests.images import b64_png, box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, ApiServer, SlowInpainter, StaticHost, free_port, make_settings
from tests.test_service import BODY, SLUG, sdk, wait_terminal


class RecordingInpainter:
    """The real tiny-model inpainter, remembering the image objects each run was given."""

    def __init__(self, inner, gate: threading.Event | None = None):
        self.inner, self.gate, self.device = inner, gate, inner.device
        self.given: list[tuple[Image.Image, Image.Image]] = []

    def run(self, params, image, mask, on_step=None):
        if self.gate is not None:
            self.gate.wait(60)
        self.given.append((image, mask))
        return self.inner.run(params, image, mask, on_step=on_step)


@pytest.fixture
def decodes(monkeypatch):
    """Counts Pillow's decodes of image files (each asks Image._getdecoder for its decoder: "zip" for PNG, "jpeg",
    ...; "raw" only unpacks pixels already in memory, e.g. the model's output array, and is not counted)."""
    calls = []
    real = Image._getdecoder

    def counting(mode, decoder_name, *args, **kwargs):
        if decoder_name != "raw":
            calls.append(decoder_name)
        return real(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", counting)
    return calls


@pytest.fixture
def decoded_at_submit(monkeypatch):
    """The images validation decoded at submit, in order (image, mask, image, mask, ...)."""
    seen = []
    real = service.http.intake.read_input

    def recording(*args, **kwargs):
        data, image = real(*args, **kwargs)
        seen.append(image)
        return data, image

    monkeypatch.setattr(service.http.intake, "read_input", recording)
    return seen


@pytest.fixture
def hops(monkeypatch):
    """Counts the thread hops `accept` makes."""
    calls = []
    real = service.http.intake.run_blocking

    async def counting(function, *args):
        calls.append(getattr(function, "__name__", repr(function)))
        return await real(function, *args)

    monkeypatch.setattr(service.http.intake, "run_blocking", counting)
    return calls


def serve(tmp_path, tiny_model_dir, inpainter, **overrides):
    backend = build_embedded(make_settings(tmp_path, tiny_model_dir, **overrides), lambda: inpainter)
    return backend.jobs, ApiServer(create_app(backend), free_port()).start()


def client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=120)


def test_a_job_runs_on_the_images_decoded_at_submit(tmp_path, tiny_model_dir, inpainter, decodes,
                                                    decoded_at_submit, hops):
    recording = RecordingInpainter(inpainter)
    jobs, server = serve(tmp_path, tiny_model_dir, recording)
    try:
        with client(server) as http:
            decodes.clear()
            request_id = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert wait_terminal(http, request_id)["status"] == "COMPLETED"
            assert len(decodes) == 2  # the image and the mask, once each: at submit, and never again
            assert hops == ["take_in"]  # inline inputs: all the blocking work of the submit in one hop
            image, mask = recording.given[-1]
            assert image is decoded_at_submit[0] and mask is decoded_at_submit[1]
            assert image.size == (512, 512) and mask.mode == "L"
            assert len(jobs.lifecycle.decoded) == 0 and jobs.lifecycle.decoded.pixels == 0  # taken by the worker

            decodes.clear()  # v1 takes the same path
            assert http.post(f"/v1/{SLUG}", json=BODY).status_code == 200
            assert len(decodes) == 2 and recording.given[-1][0] is decoded_at_submit[2]
    finally:
        server.stop()


def test_without_the_hand_over_the_worker_decodes_the_stored_bytes(tmp_path, tiny_model_dir, inpainter, decodes,
                                                                   decoded_at_submit):
    recording = RecordingInpainter(inpainter)
    jobs, server = serve(tmp_path, tiny_model_dir, recording)
    jobs.lifecycle.decoded = DecodedInputs(max_jobs=0)  # nothing fits: as after a restart, or on Modal
    try:
        with client(server) as http:
            decodes.clear()
            request_id = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert wait_terminal(http, request_id)["status"] == "COMPLETED"
            assert len(decodes) == 4  # validated at submit, then decoded again from the stored bytes
            image, _ = recording.given[-1]
            assert image is not decoded_at_submit[0]
            assert image.tobytes() == decoded_at_submit[0].tobytes()
    finally:
        server.stop()


def test_handed_over_images_go_when_the_job_ends_before_running(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    jobs, server = serve(tmp_path, tiny_model_dir, RecordingInpainter(inpainter, gate=gate))
    try:
        with client(server) as http:
            running = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            queued = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert http.get(f"/v2/requests/{queued}/status").json()["status"] == "QUEUED"
            assert len(jobs.lifecycle.decoded) == 1  # the queued job's; the running one's was taken by the worker
            stored = jobs.inputs.get(jobs.records.get(queued).inputs_at)
            assert stored is not None  # its bytes are stored all the same (it survives a restart)
            assert http.post(f"/v2/requests/{queued}/cancel").json()["status"] == "CANCELLED"
            assert len(jobs.lifecycle.decoded) == 0 and jobs.lifecycle.decoded.pixels == 0
            gate.set()
            assert wait_terminal(http, running)["status"] == "COMPLETED"
    finally:
        gate.set()
        server.stop()


def test_the_hand_over_is_bounded_by_jobs_and_pixels():
    small, big = Image.new("RGB", (10, 10)), Image.new("RGB", (100, 100))
    decoded = DecodedInputs(max_jobs=2, max_pixels=10_200)
    assert decoded.put("a", small, small) and decoded.pixels == 200
    assert not decoded.put("b", big, small)  # over the pixel cap: left out, decoded from the bytes instead
    assert decoded.put("c", small, small)
    assert not decoded.put("d", small, small)  # over the job cap
    assert len(decoded) == 2 and decoded.pixels == 400
    assert decoded.take("a") == (small, small) and decoded.take("a") is None
    assert decoded.take("b") is None and decoded.pixels == 200


def test_url_inputs_fetch_between_two_hops(tmp_path, tiny_model_dir, inpainter, hops, decodes):
    host = StaticHost({"/image.png": (png_bytes(gradient_image(300, 200)), "image/png"),
                       "/mask.png": (png_bytes(box_mask(300, 200, (50, 50, 150, 150))), "image/png")})
    jobs, server = serve(tmp_path, tiny_model_dir, inpainter, allow_private_urls=True)
    try:
        with client(server) as http:
            decodes.clear()
            body = {**BODY, "image": f"{host.url}/image.png", "mask": f"{host.url}/mask.png"}
            assert http.post(f"/v1/{SLUG}", json=body).status_code == 200
            # Limits are checked before anything is fetched for the caller; the rest after, in one hop.
            assert hops == ["early_checks", "take_in"]
            assert len(decodes) == 2
    finally:
        server.stop()
        host.stop()


def test_overhead_time_is_the_services_own_time(tmp_path, tiny_model_dir, inpainter):
    jobs, server = serve(tmp_path, tiny_model_dir, inpainter)
    try:
        with client(server) as http:
            request_id = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            wait_terminal(http, request_id)
            metrics = http.get(f"/v2/requests/{request_id}").json()["metrics"]
            record = jobs.records.get(request_id)
            assert 0 < record.intake_time < metrics["total_time"]
            running_outside_model = metrics["total_time"] - metrics["queue_time"] - metrics["inference_time"]
            assert running_outside_model > 0
            assert metrics["overhead_time"] == pytest.approx(record.intake_time + running_outside_model, abs=1e-3)
            assert metrics["overhead_time"] < metrics["total_time"]

            cancelled = http.post(f"/v2/{SLUG}", json={**BODY, "num_inference_steps": 50}).json()["request_id"]
            http.post(f"/v2/requests/{cancelled}/cancel")
            failed = wait_terminal(http, cancelled)
            assert failed["status"] == "FAILED" and failed["metrics"]["overhead_time"] is None
    finally:
        server.stop()


def test_base64_wrapped_over_lines_is_read():
    from service.http.inputs import decode_inline
    from service.jobs.errors import BadInput

    data = png_bytes(box_mask(64, 64, (8, 8, 32, 32)))
    encoded = base64.b64encode(data).decode()
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    assert decode_inline(encoded, "mask", 1 << 20) == data
    assert decode_inline(wrapped + "\n", "mask", 1 << 20) == data
    with pytest.raises(BadInput, match="nor valid base64"):
        decode_inline(wrapped + "!", "mask", 1 << 20)


def test_images_cross_to_the_worker_process_as_raw_pixels_only_when_nothing_is_lost():
    image, mask = gradient_image(), box_mask()
    image_back, mask_back = from_wire(to_wire((image, mask)))
    assert (image_back.mode, mask_back.mode) == (image.mode, mask.mode)
    assert image_back.tobytes() == image.tobytes() and mask_back.tobytes() == mask.tobytes()
    rgba = Image.new("RGBA", (8, 8), (1, 2, 3, 4))
    assert from_wire(to_wire((rgba, mask)))[0].getpixel((0, 0)) == (1, 2, 3, 4)

    rotated = Image.open(io.BytesIO(_jpeg_with_orientation(image, 6)))
    keyed = Image.new("RGB", (8, 8))
    keyed.info["transparency"] = (0, 0, 0)  # a PNG's transparent colour: read_mask needs it
    for kept_back in (rotated, image.convert("P"), keyed, Image.new("I;16", (8, 8)),
                      Image.new("L", (MAX_WIRE_PIXELS // 1024 + 1, 1024))):
        assert to_wire((kept_back, mask)) is None and to_wire((image, kept_back)) is None
    assert to_wire(None) is None


def _jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_a_job_that_ended_before_its_turn_leaves_no_handed_over_images(tmp_path, tiny_model_dir, inpainter):
    """In the worker process, a job cancelled while queued ends in the server's process: the worker drops the
    images it was handed when the job comes up."""
    jobs = build_embedded(make_settings(tmp_path, tiny_model_dir), lambda: inpainter).jobs  # worker not started
    record, _ = jobs.admission.admit(KEY_A, InpaintParams(prompt="a chair"), png_bytes(gradient_image()),
                                     png_bytes(box_mask()), base_url="http://x")
    jobs.lifecycle.fail(record.id, Failure.CANCELLED, "cancelled")  # ended elsewhere
    jobs.lifecycle.decoded.put(record.id, gradient_image(), box_mask())  # as the worker process receives them
    assert run_jobs([record.id], jobs, inpainter) == {record.id: None}
    assert len(jobs.lifecycle.decoded) == 0 and jobs.lifecycle.decoded.pixels == 0


def test_a_mask_of_another_aspect_ratio_is_accepted_with_a_warning(tmp_path, tiny_model_dir, inpainter):
    """A 300x700 mask on a 512x512 image is stretched to fit: the answer says so, as a header on v1 and on the
    v2 submit, and as `warnings` in the v2 bodies (which Segmind's SDK hands back as they are)."""
    stretched = {**BODY, "mask": b64_png(box_mask(300, 700, (100, 300, 200, 400)))}
    jobs, server = serve(tmp_path, tiny_model_dir, inpainter)
    try:
        with client(server) as http:
            sync = http.post(f"/v1/{SLUG}", json=stretched)
            assert sync.status_code == 200
            warning = sync.headers["x-inpaint-warning"]
            assert "mask is 300x700 but image is 512x512" in warning and "stretched" in warning

            submitted = http.post(f"/v2/{SLUG}", json=stretched)
            assert submitted.headers["x-inpaint-warning"] == warning
            request_id = submitted.json()["request_id"]
            assert wait_terminal(http, request_id)["warnings"] == [warning]
            assert http.get(f"/v2/requests/{request_id}").json()["warnings"] == [warning]
            assert sdk(server).submit_async(SLUG, **stretched).wait(timeout=60, interval=0.05)["warnings"] == [warning]

            cancelled = http.post(f"/v2/{SLUG}", json={**stretched, "num_inference_steps": 100}).json()["request_id"]
            http.post(f"/v2/requests/{cancelled}/cancel")
            assert wait_terminal(http, cancelled)["warnings"] == [warning]
            failed = http.get(f"/v2/requests/{cancelled}")
            assert failed.status_code == 422 and failed.json()["warnings"] == [warning]

            for same_aspect in (box_mask(256, 256, (96, 96, 160, 160)), box_mask()):  # smaller, and the same size
                fine = http.post(f"/v2/{SLUG}", json={**BODY, "mask": b64_png(same_aspect)})
                assert "x-inpaint-warning" not in fine.headers
                request_id = fine.json()["request_id"]
                assert "warnings" not in wait_terminal(http, request_id)
                assert "warnings" not in http.get(f"/v2/requests/{request_id}").json()
            assert "x-inpaint-warning" not in http.post(f"/v1/{SLUG}", json=BODY).headers

            paths = http.get("/openapi.json").json()["paths"]
            assert "x-inpaint-warning" in paths[f"/v1/{{slug}}"]["post"]["responses"]["200"]["headers"]
            assert "x-inpaint-warning" in paths[f"/v2/{{slug}}"]["post"]["responses"]["200"]["headers"]
    finally:
        server.stop()


@pytest.mark.parametrize("image_size, mask_size, warned", [
    ((512, 512), (300, 700), True),
    ((512, 512), (512, 522), True),  # 2% taller
    ((512, 512), (512, 515), False),  # within 1%
    ((512, 512), (128, 128), False),
    ((1000, 667), (50, 33), False),  # scaled down and rounded to whole pixels
    ((4032, 3024), (400, 300), False),
    ((4032, 3024), (300, 400), True),
])
def test_which_masks_are_reported(image_size, mask_size, warned):
    warnings = mask_warnings(Image.new("RGB", image_size), Image.new("L", mask_size))
    assert bool(warnings) == warned
    if warned:
        assert warnings[0].startswith(f"mask is {mask_size[0]}x{mask_size[1]} but image is "
                                      f"{image_size[0]}x{image_size[1]}")


def test_sizes_are_compared_as_displayed_after_the_exif_orientation():
    sideways = Image.open(io.BytesIO(_jpeg_with_orientation(gradient_image(640, 480), 6)))  # shown 480x640
    assert mask_warnings(sideways, Image.new("L", (480, 640))) == []
    assert "image is 480x640" in mask_warnings(sideways, Image.new("L", (640, 480)))[0]
