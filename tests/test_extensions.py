"""Beyond Segmind: cancel, progress, queue position, long-poll, signed webhooks."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service.jobs.webhooks import new_secret, verify
from tests.servers import KEY_A, SlowInpainter, api_server, make_settings
from tests.test_service import BODY, SLUG, wait_terminal


def client_for(srv):
    return httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60)


class Receiver:
    """A webhook receiver on loopback: answers `fail_first` requests with 500, then 204."""

    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict, bytes, float]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, time.time()))
                self.send_response(500 if len(receiver.received) <= receiver.fail_first else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?token=abc"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received


@pytest.fixture
def gated_job(tmp_path, tiny_model_dir, inpainter):
    """A server whose worker has taken one job and holds it until the gate opens: (client, request_id, gate)."""
    gate = threading.Event()
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: SlowInpainter(inpainter, gate=gate)) as srv:
        with client_for(srv) as client:
            request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            time.sleep(0.2)
            assert client.get(f"/v2/requests/{request_id}/status").json()["status"] == "PROCESSING"
            yield client, request_id, gate
            gate.set()


def test_long_poll_returns_on_change_not_at_the_end_of_the_wait(gated_job):
    client, request_id, gate = gated_job
    threading.Timer(0.5, gate.set).start()
    answers, durations = [], []
    while not answers or answers[-1]["status"] not in ("COMPLETED", "FAILED"):  # each change answers
        started = time.monotonic()
        answers.append(client.get(f"/v2/requests/{request_id}/status", params={"wait": 30}).json())
        durations.append(time.monotonic() - started)
        assert len(answers) < 100
    assert answers[-1]["status"] == "COMPLETED"
    assert max(durations) < 30  # every answer came with a change, none sat out the 30 s wait
    quiet_start = time.monotonic()
    assert client.get(f"/v2/requests/{request_id}/status", params={"wait": 30}).json()["status"] == "COMPLETED"
    assert time.monotonic() - quiet_start < 30  # a finished job answers at once, not after the wait
    bad = client.get(f"/v2/requests/{request_id}/status", params={"wait": 31})
    assert bad.status_code == 400 and "wait" in bad.json()["error"]


def test_long_poll_times_out_with_current_status(gated_job):
    client, request_id, _ = gated_job
    started = time.monotonic()
    body = client.get(f"/v2/requests/{request_id}/status", params={"wait": 0.5}).json()
    assert body["status"] == "PROCESSING" and time.monotonic() - started >= 0.45  # it did wait


def test_progress_and_queue_position(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: SlowInpainter(inpainter, delay=0.0)) as srv:
        with client_for(srv) as client:
            slow = {**BODY, "num_inference_steps": 100, "samples": 2}
            first = client.post(f"/v2/{SLUG}", json=slow).json()["request_id"]
            second = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            progress, positions = [], []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                a = client.get(f"/v2/requests/{first}/status").json()
                b = client.get(f"/v2/requests/{second}/status").json()
                if "progress" in a:
                    progress.append((a["progress"]["step"], a["progress"]["total"]))
                if b["status"] == "QUEUED":
                    positions.append(b["queue_position"])
                if a["status"] == "COMPLETED":
                    break
                time.sleep(0.05)
            assert progress and all(total == 100 for _, total in progress)
            steps = [s for s, _ in progress]
            assert steps == sorted(steps) and steps[-1] > steps[0]
            assert positions and set(positions) == {0}  # the only job ahead is running, not queued
            wait_terminal(client, second)


def test_cancel_running_job_stops_at_next_step(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv, client_for(srv) as client:
        request_id = client.post(f"/v2/{SLUG}", json={**BODY, "num_inference_steps": 100, "samples": 4}).json()[
            "request_id"]
        deadline = time.monotonic() + 30
        while "progress" not in (status := client.get(f"/v2/requests/{request_id}/status").json()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answer = client.post(f"/v2/requests/{request_id}/cancel").json()
        assert answer["status"] == "CANCELLING"
        body = client.get(f"/v2/requests/{request_id}/status", params={"wait": 20})
        final = body.json() if body.json()["status"] == "FAILED" else wait_terminal(client, request_id)
        assert final["status"] == "FAILED" and final["error"] == "cancelled"
        result = client.get(f"/v2/requests/{request_id}")
        assert result.status_code == 422 and result.json()["error"] == "cancelled"
        again = client.post(f"/v2/requests/{request_id}/cancel").json()
        assert again["status"] == "FAILED"  # already finished: says so, changes nothing


def test_webhook_signed_and_retried(tmp_path, tiny_model_dir, inpainter):
    secret = new_secret()
    receiver = Receiver(fail_first=2)
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True, webhook_secret=secret,
                             webhook_first_delay_seconds=0.05)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        request_id = client.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url}).json()["request_id"]
        received = receiver.wait_for(3)
        assert len(received) == 3  # two 500s, then delivered
        ids = {headers["webhook-id"] for headers, _, _ in received}
        assert ids == {f"msg_{request_id}"}
        headers, body, _ = received[-1]
        assert verify(secret, headers, body)
        assert not verify(new_secret(), headers, body)
        assert not verify(secret, headers, body.replace(b"COMPLETED", b"FAILED"))
        payload = json.loads(body)
        assert payload["request_id"] == request_id and payload["status"] == "COMPLETED"
        assert httpx.get(payload["output"]).status_code == 200


def test_webhook_on_failure(tmp_path, tiny_model_dir, inpainter):
    receiver = Receiver()
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True, webhook_secret=new_secret())
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        client.post(f"/v2/{SLUG}", json=BODY)
        request_id = client.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url}).json()["request_id"]
        client.post(f"/v2/requests/{request_id}/cancel")
        (headers, body, _), = receiver.wait_for(1)
        gate.set()
    assert json.loads(body) | {"metrics": None} == {"request_id": request_id, "status": "FAILED", "error": "cancelled",
                                                    "failure": "cancelled", "metrics": None}


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/", "ftp://example.com/x"])
def test_webhook_url_ssrf_refused(tmp_path, tiny_model_dir, inpainter, url):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv, client_for(srv) as client:
        r = client.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": url})
        assert r.status_code == 400 and "webhook_url" in r.json()["error"]


def test_webhook_not_on_v1(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv, client_for(srv) as client:
        r = client.post(f"/v1/{SLUG}", json={**BODY, "webhook_url": "https://example.com/hook"})
        assert r.status_code == 400 and "v2" in r.json()["error"]
