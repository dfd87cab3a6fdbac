"""A hostile-client pass, with real parts: one key must never bill, block or slow another; bad input is a 400
before any GPU time."""

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from schemas import JobStatus
from tests.images import gradient_image
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


# ---- batching: each job is accounted for apart -------------------------------------------------------------

def test_a_batch_mates_big_photo_is_not_billed_to_a_small_job(tmp_path, tiny_model_dir, inpainter):
    """A job pays its share of the model call plus its own preparation, stitching and storing, never a
    batch-mate's: a 4096x4096 original_size job with a wide grow and blur costs its owner, not the small job."""
    from schemas import InpaintParams
    from service.embedded import build_embedded
    from service.jobs.worker import run_jobs
    from tests.images import box_mask, png_bytes

    jobs = build_embedded(make_settings(tmp_path, tiny_model_dir, gpu_type="L4"), lambda: None).jobs

    def submit(image, mask, **params):
        record, _ = jobs.admission.admit("owner", InpaintParams(prompt="a chair", seed=1, **params),
                                         png_bytes(image), png_bytes(mask), "http://x")
        return record.id

    small = submit(gradient_image(), box_mask())
    big = submit(gradient_image(4096, 4096), box_mask(4096, 4096, (1024, 1024, 3072, 3072)), original_size=True,
                 mask_grow=128, mask_blur=64)
    outcomes = run_jobs([small, big], jobs, inpainter, max_images=4)
    small_record, big_record = outcomes[small].record, outcomes[big].record
    assert small_record.batch_size == big_record.batch_size == 2 and small_record.status == JobStatus.COMPLETED
    call_share = small_record.inference_time / 2
    # the small job's own work (a 512x512 paste-back and one JPEG) is a sliver of the big job's
    assert small_record.gpu_seconds - call_share < (big_record.gpu_seconds - call_share) / 4
    assert small_record.gpu_seconds < big_record.gpu_seconds


def test_batch_mates_do_not_make_a_job_time_out(tmp_path, tiny_model_dir, inpainter):
    """The job timeout applies to a job's share of a batched call's time (alone: all of it)."""
    from schemas import InpaintParams
    from service.embedded import build_embedded
    from service.jobs.worker import run_jobs
    from tests.images import box_mask, png_bytes

    class CostsPerImage:
        """The real model, with each step costing 0.1 s per image of the call (as a GPU's compute does)."""

        def run_batch(self, items, on_step=None):
            images = sum(params.samples for params, _, _ in items)

            def step(i, n):
                time.sleep(0.1 * images)
                on_step(i, n)
            return inpainter.run_batch(items, on_step=step)

    jobs = build_embedded(make_settings(tmp_path, tiny_model_dir), lambda: None).jobs
    ids = [jobs.admission.admit("owner", InpaintParams(prompt="a chair", seed=s), png_bytes(gradient_image()),
                                png_bytes(box_mask()), "http://x")[0].id for s in range(3)]
    # 20 steps: alone about 2 s; the batch of 3 over 6 s, each job's share about 2 s
    outcomes = run_jobs(ids, jobs, CostsPerImage(), timeout=4.0, max_images=4)
    assert [o.record.batch_size for o in outcomes.values()] == [3, 3, 3]
    assert all(o.record.status == JobStatus.COMPLETED for o in outcomes.values()), [o.record.error
                                                                                   for o in outcomes.values()]


def test_a_cancel_that_lands_after_the_last_step_still_cancels(tmp_path, tiny_model_dir, inpainter, monkeypatch):
    """Answered CANCELLING while a batch-mate's images were being encoded: the job must end FAILED cancelled,
    uncharged, as documented, not complete."""
    from schemas import InpaintParams
    from service.embedded import build_embedded
    from service.jobs import worker
    from service.jobs.worker import run_jobs
    from tests.images import box_mask, png_bytes

    settings = make_settings(tmp_path, tiny_model_dir, key_credits=f"{KEY_A}=5")
    jobs = build_embedded(settings, lambda: None).jobs
    from service.jobs.identity import key_owner
    from service.jobs.limits import remaining_credits

    owner = key_owner(KEY_A)
    ids = [jobs.admission.admit(owner, InpaintParams(prompt="a chair", seed=s), png_bytes(gradient_image()),
                                png_bytes(box_mask()), "http://x")[0].id for s in (1, 2)]
    encode = worker.encode_image
    encoded = []

    def encode_then_cancel_the_other(image, output_format):
        encoded.append(1)
        if len(encoded) == 1:  # the first job's image is being encoded: its batch-mate is cancelled now
            answer = jobs.lifecycle.cancel(jobs.records.get(ids[1]))
            assert answer.status == "CANCELLING"
        return encode(image, output_format)

    monkeypatch.setattr(worker, "encode_image", encode_then_cancel_the_other)
    outcomes = run_jobs(ids, jobs, inpainter, max_images=2)
    assert outcomes[ids[0]].record.status == JobStatus.COMPLETED
    late = outcomes[ids[1]].record
    assert late.status == JobStatus.FAILED and late.failure.value == "cancelled" and late.images == []
    assert remaining_credits(jobs.counters, owner, 5) == 4  # only the completed job is charged
    assert list((tmp_path / "results").rglob("*.jpeg")) == [tmp_path / "results" / outcomes[ids[0]].record.images[0].key]


def test_jobs_cancelled_while_queued_take_no_seat_in_a_batch(tmp_path, tiny_model_dir, inpainter):
    """3 of 7 compatible jobs cancelled while queued: the other 4 run as one batch of 4."""
    import threading

    from tests.test_batching import Hooked

    gate = threading.Event()
    model = Hooked(SlowInpainter(inpainter, gate=gate))
    settings = make_settings(tmp_path, tiny_model_dir, batch_max_images=4, batch_wait_ms=100)
    with api_server(settings, lambda: model) as srv, client_for(srv) as client:
        holding = client.post(f"/v2/{SLUG}", json={**BODY, "num_inference_steps": 21}).json()["request_id"]
        while client.get(f"/v2/requests/{holding}/status").json()["status"] != "PROCESSING":
            client.get(f"/v2/requests/{holding}/status", params={"wait": 1})  # its round has started, alone
        ids = [client.post(f"/v2/{SLUG}", json={**BODY, "seed": s}).json()["request_id"] for s in range(7)]
        for job_id in ids[:3]:
            assert client.post(f"/v2/requests/{job_id}/cancel").json()["status"] == "CANCELLED"
        gate.set()
        assert wait_terminal(client, holding)["status"] == "COMPLETED"
        sizes = {wait_terminal(client, job_id)["metrics"]["batch_size"] for job_id in ids[3:]}
    assert sizes == {4} and model.calls[-1] == 4


# ---- webhooks -------------------------------------------------------------------------------------------------

class Trickler:
    """A receiver that answers with a status line and then one byte every 0.5 s, forever: each read is quick, the
    answer never ends."""

    def __init__(self):
        import socket
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn):
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stopped.wait(0.5):
                    conn.sendall(b"a")
            except OSError:
                pass

    def stop(self):
        self.stopped.set()
        self.server.close()


def test_one_attempt_has_one_deadline_however_the_receiver_trickles():
    import asyncio

    from service.jobs.webhooks import attempt, new_secret

    trickler = Trickler()
    try:
        started = time.monotonic()
        failed = asyncio.run(attempt(trickler.url, b"{}", "msg_x", new_secret(), allow_private=True, deadline=1.5))
        assert failed == "no answer within 1.5s" and time.monotonic() - started < 5
    finally:
        trickler.stop()


def test_slow_receivers_of_one_key_do_not_hold_another_keys_webhook(tmp_path, tiny_model_dir, inpainter):
    from service.jobs.webhooks import new_secret
    from tests.test_extensions import Receiver

    trickler, receiver = Trickler(), Receiver()
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True, webhook_secret=new_secret(),
                             webhook_timeout_seconds=20, webhook_attempts=1)
    try:
        with api_server(settings, lambda: inpainter) as srv, client_for(srv) as a, client_for(srv, KEY_B) as b:
            slow = [a.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": trickler.url}).json()["request_id"]
                    for _ in range(4)]
            for request_id in slow:
                wait_terminal(a, request_id)
            request_id = b.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url}).json()["request_id"]
            assert wait_terminal(b, request_id)["status"] == "COMPLETED"
            ended = time.time()
            (headers, _, received_at), = receiver.wait_for(1, timeout=15)
            assert headers["webhook-id"] == f"msg_{request_id}" and received_at - ended < 10
            assert trickler.connections <= 2  # key A holds at most two senders, however many it has pending
    finally:
        trickler.stop()


def test_a_url_httpx_cannot_send_to_is_given_up_with_a_log_line(caplog):
    import logging

    from service.jobs.webhooks import deliver, new_secret

    caplog.set_level(logging.INFO, logger="inpaint.events")
    url = "http://example.com/" + "a" * 70_000  # over httpx's 65,536
    assert deliver(url, {"status": "COMPLETED"}, "msg_long", new_secret(), attempts=3, first_delay=30) is False
    lines = [r.getMessage() for r in caplog.records if '"event":"webhook"' in r.getMessage()]
    assert len(lines) == 1 and '"final":true' in lines[0] and '"delivered":false' in lines[0]


def test_a_webhook_waiting_for_its_retry_survives_a_restart(tmp_path, tiny_model_dir):
    """SIGTERM while a delivery waits for its retry after a 500: the restarted server delivers it."""
    import os
    import signal
    import subprocess

    import httpx

    from tests.conftest import REPO
    from tests.servers import free_port, start_service
    from tests.test_extensions import Receiver

    receiver, port = Receiver(fail_first=1), free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in ("API_KEYS", "STATE_DIR", "MODEL_DIR", "PORT")},
           "PYTHONPATH": str(REPO), "STATE_DIR": str(tmp_path / "state"), "MODEL_DIR": str(tiny_model_dir),
           "API_KEYS": KEY_A, "PORT": str(port), "ALLOW_PRIVATE_URLS": "1", "WEBHOOK_FIRST_DELAY_SECONDS": "4",
           "SAFETY_CHECKER": "false"}
    url = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        return start_service([], env, tmp_path, tmp_path / "server.log")

    first = serve()
    try:
        with httpx.Client(base_url=url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            request_id = client.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url}).json()["request_id"]
            assert len(receiver.wait_for(1)) == 1  # the first attempt got a 500; the retry is due in 4 s
        first.send_signal(signal.SIGTERM)
        first.wait(30)  # uvicorn shuts down cleanly, then ends by the signal it caught (exit -15)
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    assert len(receiver.received) == 1  # nothing was sent while the server was down
    second = serve()
    try:
        received = receiver.wait_for(2, timeout=30)
        assert len(received) == 2 and received[1][0]["webhook-id"] == f"msg_{request_id}"
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)


# ---- polling --------------------------------------------------------------------------------------------------

def test_a_key_polling_in_a_tight_loop_is_limited_and_another_key_is_not(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, status_polls_per_second=5, status_poll_burst=5)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as a, client_for(srv, KEY_B) as b:
        mine = a.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        theirs = b.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        answers = [a.get(f"/v2/requests/{mine}/status") for _ in range(20)]
        refused = [r for r in answers if r.status_code == 429]
        assert len(refused) >= 10 and "status polls" in refused[0].json()["error"]
        assert int(refused[0].headers["Retry-After"]) >= 1
        assert b.get(f"/v2/requests/{theirs}/status").status_code == 200  # the other key polls on
        assert a.post(f"/v2/requests/{mine}/cancel").status_code == 200  # cancelling is never refused
