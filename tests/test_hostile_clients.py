"""A hostile-client pass, with real parts: one key must never bill, block or slow another; bad input is a 400
before any GPU time."""

import io
import struct
import zlib

import pytest
from PIL import Image

from tests.images import b64_png, gradient_image
from tests.servers import KEY_A, KEY_B, SlowInpainter, api_server, make_settings
from tests.test_hardening import client_for
from tests.test_service import BODY, SLUG, wait_terminal


def png_with_bad_exif() -> bytes:
    data = io.BytesIO()
    gradient_image(64, 64).save(data, format="PNG")
    data = data.getvalue()
    payload = b"garbage-not-a-tiff-header-at-all"
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    return data[:33] + chunk + data[33:]  # right after IHDR


def webp_with_bad_exif() -> bytes:
    data = io.BytesIO()
    gradient_image(64, 64).save(data, format="WEBP", exif=b"garbage-not-a-tiff-header-at-all")
    return data.getvalue()


@pytest.mark.parametrize("make", [png_with_bad_exif, webp_with_bad_exif], ids=["png", "webp"])
def test_a_malformed_exif_block_is_a_400_before_any_charge(tmp_path, tiny_model_dir, inpainter, make):
    import base64

    settings = make_settings(tmp_path, tiny_model_dir, key_credits=f"{KEY_A}=1")
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        Image.open(io.BytesIO(make())).load()  # a readable picture: only its metadata is bad
        answer = client.post(f"/v2/{SLUG}", json={**BODY, "image": base64.b64encode(make()).decode()})
        assert answer.status_code == 400 and "EXIF" in answer.json()["error"] and answer.json()["field"] == "image"
        assert client.post(f"/v2/{SLUG}", json=BODY).headers["x-remaining-credits"] == "0"  # nothing was charged


def test_cancelled_queued_jobs_give_the_days_images_back(tmp_path, tiny_model_dir, inpainter):
    """One key with one credit cycling submit-then-cancel must not use up the deployment's daily cap."""
    import threading

    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, daily_image_cap=8, key_credits=f"{KEY_A}=1")
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as a, \
            client_for(srv, KEY_B) as b:
        running = b.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]  # holds the worker: A's jobs stay queued
        for _ in range(7):
            queued = a.post(f"/v2/{SLUG}", json=BODY)
            assert queued.status_code == 200, queued.text
            assert a.post(f"/v2/requests/{queued.json()['request_id']}/cancel").json()["status"] == "CANCELLED"
        second = b.post(f"/v2/{SLUG}", json=BODY)
        assert second.status_code == 200, second.text  # 2 of 8 images used today, not 9
        gate.set()
        assert wait_terminal(b, running)["status"] == "COMPLETED"
        assert wait_terminal(b, second.json()["request_id"])["status"] == "COMPLETED"


@pytest.mark.parametrize("length", [3_000, 70_000, 16 * 1024 * 1024])
def test_an_overlong_webhook_url_is_a_400(tmp_path, tiny_model_dir, inpainter, length):
    """A 16 MiB URL made every status poll of its job slow; one over httpx's 65,536 limit was accepted and its
    webhook silently dropped."""
    url = "https://example.com/" + "a" * (length - 20)
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        answer = client.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": url})
        assert answer.status_code == 400 and answer.json()["field"] == "webhook_url"
        assert "2048" in answer.json()["error"]
