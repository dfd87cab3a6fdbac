"""`Prefer: wait=N` on the v2 submit and the status stream (server-sent events), over real HTTP, on the embedded
backend and on the Modal backend (stand-in Dicts, tests/test_modal_races.py's Deployment)."""

import json
import logging
import threading
import time

import httpx
import pytest

from service.http.routes import v2
from service.jobs import worker
from tests.browser import browser_page  # noqa: F401  (fixture)
from tests.servers import KEY_A, KEY_B, ApiServer, api_server, free_port, make_settings
from tests.test_modal_races import Deployment
from tests.test_playground import load_and_paint
from tests.test_service import BODY, SLUG, wait_terminal

EVENT_WAIT = 60  # seconds: a bound on a hang, never a pacing device


class PausingInpainter:
    """Wraps the real Inpainter. A job prompted 'blocker' waits for `start` before it runs; any other job pauses
    after step `pause_at` (telling `paused`) until `resume` is set, so a test sees it mid-run."""

    def __init__(self, inner, pause_at: int = 3):
        self.inner, self.device, self.pause_at = inner, inner.device, pause_at
        self.start, self.paused, self.resume = threading.Event(), threading.Event(), threading.Event()

    def run(self, request, image, mask, on_step=None):
        if request.prompt == "blocker":
            assert self.start.wait(EVENT_WAIT)
            return self.inner.run(request, image, mask, on_step=on_step)

        def step(done: int, total: int) -> None:
            on_step(done, total)
            if done == self.pause_at:
                self.paused.set()
                assert self.resume.wait(EVENT_WAIT)

        return self.inner.run(request, image, mask, on_step=step)

    def release(self):
        self.start.set()
        self.resume.set()


class EventStream:
    """An open GET .../status/stream, read as server-sent events: (event, data) pairs; comments are kept apart."""

    def __init__(self, client: httpx.Client, request_id: str):
        self.context = client.stream("GET", f"/v2/requests/{request_id}/status/stream")
        self.response = self.context.__enter__()
        self.lines = self.response.iter_lines()
        self.comments: list[str] = []

    def next_event(self) -> tuple[str, dict] | None:
        """The next event, or None when the server ended the stream."""
        event, data = "message", []
        for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif line == "" and data:
                return event, json.loads("\n".join(data))
        return None

    def rest(self) -> list[dict]:
        """The bodies of every event left, read until the server ends the stream."""
        bodies = []
        while (item := self.next_event()) is not None:
            assert item[0] == "status"
            bodies.append(item[1])
        return bodies

    def close(self):
        self.context.__exit__(None, None, None)


def collapsed(statuses: list[str]) -> list[str]:
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def client_for(url: str, key: str = KEY_A) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=EVENT_WAIT)


@pytest.fixture
def paused(inpainter, monkeypatch):
    monkeypatch.setattr(worker, "PROGRESS_WRITE_INTERVAL", 0)  # every step's progress is written, the paused one too
    held = PausingInpainter(inpainter)
    yield held
    held.release()


@pytest.fixture
def embedded(tmp_path, tiny_model_dir, paused):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: paused) as srv:
        with client_for(srv.url) as client:
            yield srv, client


@pytest.fixture
def modal(tmp_path, tiny_model_dir, paused):
    """The Modal web tier over real HTTP; its GPU 'containers' wait for `d.gate`, then run the pausing model."""
    d = Deployment(tmp_path, tiny_model_dir, paused)
    server = ApiServer(v2_app(d), free_port()).start()
    try:
        with client_for(server.url) as client:
            yield d, client
    finally:
        paused.release()
        server.stop()
        d.close()


def v2_app(d: Deployment):
    from service.http.app import create_app

    return create_app(d._backend(spawn=d._spawn))


def submit(client: httpx.Client, prompt: str = "a red chair", **headers) -> httpx.Response:
    return client.post(f"/v2/{SLUG}", json={**BODY, "prompt": prompt}, headers=headers)


# ---- Prefer: wait=N ------------------------------------------------------------------------------

def test_prefer_wait_on_a_quick_job_answers_its_final_body(embedded, paused):
    srv, client = embedded
    paused.release()
    r = submit(client, Prefer="wait=60")
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=60"
    body = r.json()
    assert body["status"] == "COMPLETED" and body["request_id"] == r.headers["x-request-id"]
    assert body["seed"] == 42 and body["metrics"]["inference_time"] > 0
    assert body == client.get(f"/v2/requests/{body['request_id']}").json()  # what the result endpoint answers
    assert httpx.get(body["output"]).headers["content-type"] == "image/jpeg"


def test_prefer_wait_on_a_held_job_answers_the_submit_body_after_the_wait(embedded, paused):
    srv, client = embedded
    blocker = submit(client, "blocker").json()["request_id"]
    started = time.monotonic()
    r = submit(client, Prefer="respond-async, wait=1")  # several preferences: the others are ignored
    assert time.monotonic() - started >= 0.95  # it did wait
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=1"
    body = r.json()
    assert body["status"] == "QUEUED" and body["status_url"].endswith(f"/v2/requests/{body['request_id']}/status")
    paused.release()
    assert wait_terminal(client, body["request_id"])["status"] == "COMPLETED"
    assert wait_terminal(client, blocker)["status"] == "COMPLETED"


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "wait=", "wait=1.5", 'wait="90"'])
def test_prefer_wait_out_of_range_is_refused_before_taking_the_job(embedded, paused, prefer):
    srv, client = embedded
    r = submit(client, Prefer=prefer)
    assert r.status_code == 400 and "x-request-id" not in r.headers
    assert r.json()["field"] == "Prefer" and "wait must be a whole number of seconds from 1 to 60" in r.json()["error"]
    assert client.get("/health").json()["queue_depth"] == 0  # no job was taken in


def test_other_preferences_are_ignored_and_not_applied(embedded, paused):
    srv, client = embedded
    paused.release()
    r = submit(client, Prefer="respond-async, return=minimal")
    assert r.status_code == 200 and "preference-applied" not in r.headers
    assert r.json()["status"] == "QUEUED" and "status_url" in r.json()


def test_prefer_wait_on_a_failed_job_answers_422_with_the_failed_body(tmp_path, tiny_flagging_model_dir):
    from inference import Inpainter

    settings = make_settings(tmp_path, tiny_flagging_model_dir)
    with api_server(settings, lambda: Inpainter(tiny_flagging_model_dir)) as srv, client_for(srv.url) as client:
        r = submit(client, Prefer="wait=60")
        assert r.status_code == 422 and r.headers["preference-applied"] == "wait=60"
        body = r.json()
        assert body["status"] == "FAILED" and body["failure"] == "blocked" and "safety checker" in body["error"]
        result = client.get(f"/v2/requests/{body['request_id']}")
        assert result.status_code == 422 and result.json() == body


# ---- the status stream -----------------------------------------------------------------------------

def stream_through_a_job(client: httpx.Client, paused: PausingInpainter, release_queue) -> list[dict]:
    """Stream a job from QUEUED (held by `release_queue`), through a pause at step `paused.pause_at`, to its end."""
    request_id = submit(client, "a red chair").json()["request_id"]
    stream = EventStream(client, request_id)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        event, first = stream.next_event()
        assert event == "status" and first["status"] == "QUEUED" and first["queue_position"] >= 0
        bodies = [first]
        release_queue()
        while bodies[-1].get("progress", {}).get("step") != paused.pause_at:  # the job holds there
            event, body = stream.next_event()
            bodies.append(body)
        paused.resume.set()
        bodies += stream.rest()  # returns: the server ended the stream after the terminal event
    finally:
        stream.close()
    assert all(b["request_id"] == request_id for b in bodies)
    assert collapsed([b["status"] for b in bodies]) == ["QUEUED", "PROCESSING", "COMPLETED"]
    steps = [b["progress"]["step"] for b in bodies if "progress" in b]
    assert steps == sorted(steps) and paused.pause_at in steps
    assert len({json.dumps(b, sort_keys=True) for b in bodies}) == len(bodies)  # one event per change
    final = client.get(f"/v2/requests/{request_id}/status").json()
    assert bodies[-1] == final
    return bodies


def test_stream_follows_a_job_from_queued_to_completed(embedded, paused):
    srv, client = embedded
    submit(client, "blocker")  # the worker holds it: the next job waits in the queue
    stream_through_a_job(client, paused, paused.start.set)


def test_stream_of_a_finished_job_is_one_terminal_event(embedded, paused):
    srv, client = embedded
    paused.release()
    done = submit(client, Prefer="wait=60").json()
    stream = EventStream(client, done["request_id"])
    try:
        bodies = stream.rest()
    finally:
        stream.close()
    assert [b["status"] for b in bodies] == ["COMPLETED"]
    assert bodies[0] == client.get(f"/v2/requests/{done['request_id']}/status").json()


def test_stream_of_a_cancelled_job_ends_with_its_failed_body(embedded, paused):
    srv, client = embedded
    submit(client, "blocker")
    request_id = submit(client).json()["request_id"]
    stream = EventStream(client, request_id)
    try:
        assert stream.next_event()[1]["status"] == "QUEUED"
        assert client.post(f"/v2/requests/{request_id}/cancel").status_code == 200
        bodies = stream.rest()
    finally:
        stream.close()
    assert [b["status"] for b in bodies] == ["FAILED"] and bodies[0]["failure"] == "cancelled"


def test_stream_of_another_keys_or_an_unknown_job_is_404(embedded, paused):
    srv, client = embedded
    paused.release()
    request_id = submit(client).json()["request_id"]
    with client_for(srv.url, KEY_B) as other:
        r = other.get(f"/v2/requests/{request_id}/status/stream")
        assert r.status_code == 404 and "not found" in r.json()["error"]
    assert client.get("/v2/requests/nope/status/stream").status_code == 404
    assert httpx.get(f"{srv.url}/v2/requests/{request_id}/status/stream").status_code == 401


def test_stream_counts_once_against_the_poll_limit(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, status_polls_per_second=0.001, status_poll_burst=2)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv.url) as client:
        request_id = submit(client).json()["request_id"]
        stream = EventStream(client, request_id)
        try:
            bodies = stream.rest()  # every event of the job, however many: one poll
        finally:
            stream.close()
        assert bodies[-1]["status"] == "COMPLETED"
        assert client.get(f"/v2/requests/{request_id}/status").status_code == 200
        over = client.get(f"/v2/requests/{request_id}/status/stream")
        assert over.status_code == 429 and "retry-after" in over.headers


def test_a_client_leaving_mid_stream_leaves_the_server_healthy(embedded, paused, monkeypatch, caplog):
    srv, client = embedded
    monkeypatch.setattr(v2, "HEARTBEAT_SECONDS", 0.2)
    caplog.set_level(logging.WARNING)
    request_id = submit(client, "blocker").json()["request_id"]
    changes = srv.app.state.jobs.changes
    stream = EventStream(client, request_id)
    assert stream.next_event()[1]["status"] in ("QUEUED", "PROCESSING")
    # The job may still move (QUEUED to PROCESSING, its progress) before the paused step holds it; then nothing
    # changes, and a heartbeat comes.
    heartbeat = next(line for line in stream.lines if line.startswith(": ping") or '"COMPLETED"' in line)
    assert heartbeat.startswith(": ping")
    assert request_id in changes._subscriptions
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + EVENT_WAIT
    while request_id in changes._subscriptions:  # the stream's watch ended with the connection
        assert time.monotonic() < deadline, "the stream's subscription outlived its client"
        time.sleep(0.01)
    assert client.get("/health").status_code == 200
    paused.release()
    assert wait_terminal(client, request_id)["status"] == "COMPLETED"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---- the Modal backend -------------------------------------------------------------------------------

def test_modal_prefer_wait_answers_the_final_body_or_the_submit_body(modal, paused):
    d, client = modal
    paused.release()
    r = submit(client, Prefer="wait=60")
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=60"
    assert r.json()["status"] == "COMPLETED" and httpx.get(r.json()["output"]).status_code == 200
    d.gate.clear()  # the GPU container waits: the job stays QUEUED
    started = time.monotonic()
    r = submit(client, Prefer="wait=1")
    assert time.monotonic() - started >= 0.95
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=1" and r.json()["status"] == "QUEUED"
    d.gate.set()
    assert wait_terminal(client, r.json()["request_id"])["status"] == "COMPLETED"


def test_modal_stream_follows_a_job_from_queued_to_completed(modal, paused):
    d, client = modal
    d.gate.clear()
    paused.start.set()
    stream_through_a_job(client, paused, d.gate.set)


# ---- the playground --------------------------------------------------------------------------------

def test_playground_follows_the_stream_and_falls_back_to_polls(tmp_path, tiny_model_dir, inpainter,
                                                               browser_page):  # noqa: F811
    page = browser_page
    status_requests = []
    page.on("request", lambda r: status_requests.append(r.url) if "/status" in r.url else None)
    done = "document.getElementById('status').textContent.startsWith('Done')"
    with api_server(make_settings(tmp_path / "state", tiny_model_dir), lambda: inpainter) as srv:
        page.goto(srv.url + "/")
        load_and_paint(page, tmp_path)
        page.click("#submit")
        page.wait_for_function(done, timeout=EVENT_WAIT * 1000)
        assert len(status_requests) == 1 and status_requests[0].endswith("/status/stream")  # no polls

        page.route("**/status/stream", lambda route: route.fulfill(status=500, body="{}"))  # the stream fails
        status_requests.clear()
        page.click("#submit")
        page.wait_for_function(done, timeout=EVENT_WAIT * 1000)
        assert status_requests[0].endswith("/status/stream") and "/status?wait=0" in status_requests[1]
        assert page.get_attribute("#status", "class") != "error"
