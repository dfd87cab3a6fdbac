"""Idempotency-Key and Cancel-After on the v1 and v2 submits, over real HTTP, on the embedded backend (SQLite) and
the Modal backend (stand-in Dicts)."""

import threading
import time
import uuid

import httpx
import pytest

from service.http.app import create_app
from service.jobs.identity import key_owner
from service.jobs.limits import remaining_credits
from tests.servers import KEY_A, KEY_B, ApiServer, SlowInpainter, api_server, free_port, make_settings
from tests.test_extensions import Receiver
from tests.test_modal_races import BUDGET, Deployment
from tests.test_service import BODY, SLUG, wait_terminal

CREDITS = 10


def client(server, key=KEY_A) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=60)


def credits_left(server) -> int:
    return remaining_credits(server.app.state.jobs.counters, key_owner(KEY_A), CREDITS)


def wait_until(moment: float) -> None:
    """Until the wall clock reaches `moment` (a job's deadline): a wait on a condition, not pacing."""
    while (left := moment - time.time()) > 0:
        threading.Event().wait(left)


def wait_status(http: httpx.Client, request_id: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while http.get(f"/v2/requests/{request_id}/status", params={"wait": 5}).json()["status"] != status:
        assert time.monotonic() < deadline, f"{request_id} never reached {status}"


class HeldAtFirstStep:
    """The real model, held after its first denoising step until `release` is set (`reached` says it got there)."""

    def __init__(self, inner):
        self.inner, self.device = inner, inner.device
        self.reached, self.release = threading.Event(), threading.Event()

    def _hold(self, on_step):
        def step(i, total):
            if i == 1:
                self.reached.set()
                assert self.release.wait(30)
            return on_step(i, total) if on_step else None
        return step

    def run(self, params, image, mask, on_step=None):
        return self.inner.run(params, image, mask, on_step=self._hold(on_step))

    def run_batch(self, items, on_step=None):
        return self.inner.run_batch(items, on_step=self._hold(on_step))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path_factory.mktemp("state"), tiny_model_dir, key_credits={KEY_A: CREDITS})
    with api_server(settings, lambda: inpainter) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_credits(request):
    """Each test on the shared server starts with the whole budget (its jobs are done when it ends)."""
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        srv.app.state.jobs.counters.modify(f"credits:{key_owner(KEY_A)}", lambda doc: ({"used": 0}, None))


# ---- Idempotency-Key -----------------------------------------------------------------------------------------

def test_same_key_and_body_return_the_same_request_charged_once(server):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with client(server) as http:
        first = http.post(f"/v2/{SLUG}", json=BODY, headers=key)
        again = http.post(f"/v2/{SLUG}", json=BODY, headers=key)
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        assert first.headers["x-remaining-credits"] == again.headers["x-remaining-credits"] == str(CREDITS - 1)
        assert wait_terminal(http, first.json()["request_id"])["status"] == "COMPLETED"
        done = http.post(f"/v2/{SLUG}", json=BODY, headers=key)  # also once it has finished
        assert done.json()["request_id"] == first.json()["request_id"]
    assert credits_left(server) == CREDITS - 1


def submit_together(server, count: int, headers: dict) -> list[httpx.Response]:
    """`count` v2 submits with the same headers, released at the same moment from their own connections."""
    barrier = threading.Barrier(count)
    answers: list[httpx.Response] = []

    def submit():
        with client(server) as http:
            barrier.wait()
            answers.append(http.post(f"/v2/{SLUG}", json=BODY, headers=headers))

    threads = [threading.Thread(target=submit) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def test_simultaneous_submits_with_one_key_make_one_job(server):
    answers = submit_together(server, 6, {"Idempotency-Key": str(uuid.uuid4())})
    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.json()["request_id"] for a in answers}) == 1
    with client(server) as http:
        assert wait_terminal(http, answers[0].json()["request_id"])["status"] == "COMPLETED"
    assert credits_left(server) == CREDITS - 1


def test_same_key_with_another_body_is_422(server):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with client(server) as http:
        first = http.post(f"/v2/{SLUG}", json=BODY, headers=key)
        other = http.post(f"/v2/{SLUG}", json={**BODY, "seed": 7}, headers=key)
        assert first.status_code == 200
        assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]
        assert "another body" in other.json()["error"]
        later = http.post(f"/v2/{SLUG}", json=BODY, headers={**key, "Cancel-After": "5m"})
        assert later.status_code == 422  # Cancel-After is part of the request too
        wait_terminal(http, first.json()["request_id"])
    assert credits_left(server) == CREDITS - 1


def test_v1_retry_returns_the_same_image_charged_once(server):
    key = {"Idempotency-Key": "v1-" + str(uuid.uuid4())}
    with client(server) as http:
        first = http.post(f"/v1/{SLUG}", json=BODY, headers=key)
        again = http.post(f"/v1/{SLUG}", json=BODY, headers=key)
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == "image/jpeg" and again.content == first.content
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert again.headers["x-remaining-credits"] == str(CREDITS - 1)
    assert credits_left(server) == CREDITS - 1


def test_keys_belong_to_their_api_key(server):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with client(server) as a, client(server, KEY_B) as b:
        mine = a.post(f"/v2/{SLUG}", json=BODY, headers=key).json()["request_id"]
        theirs = b.post(f"/v2/{SLUG}", json=BODY, headers=key).json()["request_id"]
        assert mine != theirs
        assert wait_terminal(b, theirs)["status"] == "COMPLETED"
        assert wait_terminal(a, mine)["status"] == "COMPLETED"


@pytest.mark.parametrize("header, value", [
    ("Idempotency-Key", "k" * 256),
    ("Idempotency-Key", "two words"),
    ("Idempotency-Key", "caf\xe9".encode("latin-1")),
    ("Idempotency-Key", ""),
    ("Cancel-After", "0s"),
    ("Cancel-After", "25h"),
    ("Cancel-After", "30"),
    ("Cancel-After", "-5s"),
    ("Cancel-After", "1d"),
    ("Cancel-After", "soon"),
])
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_bad_header_values_are_400_naming_the_header(server, api, header, value):
    with client(server) as http:
        r = http.post(f"/{api}/{SLUG}", json=BODY, headers={header: value})
    assert r.status_code == 400 and f"header '{header}'" in r.json()["error"]
    assert credits_left(server) == CREDITS  # refused before anything was charged


def test_a_key_at_the_limits_is_taken(server):
    with client(server) as http:
        r = http.post(f"/v2/{SLUG}", json=BODY, headers={"Idempotency-Key": "~" + "k" * 253 + "!",
                                                         "Cancel-After": "1h30m"})
        assert r.status_code == 200
        assert wait_terminal(http, r.json()["request_id"])["status"] == "COMPLETED"


# ---- Cancel-After: embedded ----------------------------------------------------------------------------------

def test_cancel_after_ends_a_queued_job_expired_and_refunded(tmp_path, tiny_model_dir, inpainter):
    receiver, gate = Receiver(), threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True, key_credits={KEY_A: CREDITS},
                             webhook_first_delay_seconds=0)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client(srv) as http:
        holder = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        wait_status(http, holder, "PROCESSING")  # the worker is held: the next job stays queued
        queued = http.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url},
                           headers={"Cancel-After": "500ms"})
        assert queued.headers["x-remaining-credits"] == str(CREDITS - 2)
        body = wait_terminal(http, queued.json()["request_id"])
        assert body["status"] == "FAILED" and "Cancel-After" in body["error"]
        result = http.get(f"/v2/requests/{queued.json()['request_id']}").json()
        assert result["failure"] == "expired" and result["metrics"]["queue_time"] is None  # it never started
        assert credits_left(srv) == CREDITS - 1  # given back
        (_, hook, _), = receiver.wait_for(1)
        assert b'"FAILED"' in hook and queued.json()["request_id"].encode() in hook
        gate.set()
        assert wait_terminal(http, holder)["status"] == "COMPLETED"  # the deadline was that job's alone


def test_cancel_after_stops_a_running_job_at_its_next_step(tmp_path, tiny_model_dir, inpainter):
    receiver, held = Receiver(), HeldAtFirstStep(inpainter)
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True, key_credits={KEY_A: CREDITS},
                             webhook_first_delay_seconds=0)
    with api_server(settings, lambda: held) as srv, client(srv) as http:
        r = http.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url}, headers={"Cancel-After": "1s"})
        request_id = r.json()["request_id"]
        assert held.reached.wait(60)
        wait_until(srv.app.state.jobs.records.get(request_id).deadline)
        held.release.set()
        body = wait_terminal(http, request_id)
        assert body["status"] == "FAILED" and "Cancel-After (1s)" in body["error"]
        result = http.get(f"/v2/requests/{request_id}").json()
        assert result["failure"] == "cancelled" and result["metrics"]["gpu_seconds"] is not None
        assert credits_left(srv) == CREDITS  # refunded, as a cancel is
        (_, hook, _), = receiver.wait_for(1)
        assert b'"cancelled"' in hook


def test_v1_with_cancel_after_answers_the_expired_job(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: SlowInpainter(inpainter, gate=gate)) as srv, \
            client(srv) as http:
        holder = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        wait_status(http, holder, "PROCESSING")
        r = http.post(f"/v1/{SLUG}", json=BODY, headers={"Cancel-After": "300ms"})
        gate.set()
        assert r.status_code == 504 and r.json()["failure"] == "expired"


# ---- the Modal backend ---------------------------------------------------------------------------------------

@pytest.fixture
def modal(tmp_path, tiny_model_dir, inpainter):
    d = Deployment(tmp_path, tiny_model_dir, inpainter)
    d.settings.allow_private_urls = True
    srv = ApiServer(create_app(d._backend(spawn=d._spawn)), free_port()).start()
    yield srv, d
    srv.stop()
    d.close()


def test_modal_simultaneous_submits_with_one_key_make_one_job(modal):
    srv, d = modal
    d.gate.clear()
    key = {"Idempotency-Key": str(uuid.uuid4())}
    answers = submit_together(srv, 4, key)
    assert [a.status_code for a in answers] == [200] * 4
    request_id, = {a.json()["request_id"] for a in answers}
    with client(srv) as http:
        other = http.post(f"/v2/{SLUG}", json={**BODY, "seed": 1}, headers=key)
        assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]
    d.gate.set()
    assert d.wait_end(request_id).status.value == "COMPLETED"
    assert d.spawner.spawned == [request_id] and len(d.runs) == 1
    assert d.credits_left() == BUDGET - 1


def test_modal_v1_retry_returns_the_same_image(modal):
    srv, d = modal
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with client(srv) as http:
        first = http.post(f"/v1/{SLUG}", json=BODY, headers=key)
        again = http.post(f"/v1/{SLUG}", json=BODY, headers=key)
    assert first.status_code == again.status_code == 200 and again.content == first.content
    assert len(d.runs) == 1 and d.credits_left() == BUDGET - 1


def test_modal_the_sweep_forgets_a_key_with_its_job(modal):
    from service.jobs.housekeeping import sweep_expired

    srv, d = modal
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with client(srv) as http:
        first = http.post(f"/v2/{SLUG}", json=BODY, headers=key).json()["request_id"]
        d.wait_end(first)
        assert any(k.startswith("idem:") for k in d.dicts["records"].keys())
        assert sweep_expired(d.web, now=time.time() + d.settings.result_ttl_seconds + 1) == 1
        assert not any(k.startswith("idem:") for k in d.dicts["records"].keys())
        again = http.post(f"/v2/{SLUG}", json=BODY, headers=key).json()["request_id"]
        assert again != first  # past its retention the key makes a new job


def test_modal_cancel_after_expires_a_queued_job_when_its_container_comes(modal):
    srv, d = modal
    receiver = Receiver()
    d.gate.clear()  # the GPU call waits (no container free)
    with client(srv) as http:
        r = http.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url}, headers={"Cancel-After": "200ms"})
        request_id = r.json()["request_id"]
        wait_until(d.web.records.get(request_id).deadline)
        d.gate.set()
        record = d.wait_end(request_id)
    assert record.failure.value == "expired" and record.started_at is None and d.runs == []
    assert d.webhooks == [request_id] and d.credits_left() == BUDGET


def test_modal_sweep_expires_a_queued_job_past_its_cancel_after(modal):
    from service.jobs.housekeeping import expire_queued

    srv, d = modal
    d.gate.clear()
    with client(srv) as http:
        request_id = http.post(f"/v2/{SLUG}", json=BODY, headers={"Cancel-After": "100ms"}).json()["request_id"]
        wait_until(d.web.records.get(request_id).deadline)
        assert expire_queued(d.web) == 1
        body = http.get(f"/v2/requests/{request_id}").json()
    assert body["status"] == "FAILED" and body["failure"] == "expired"
    assert d.webhooks == [request_id] and d.credits_left() == BUDGET
    d.gate.set()


def test_modal_cancel_after_stops_a_running_job(modal):
    srv, d = modal
    held = HeldAtFirstStep(d.inpainter)
    d.inpainter = held
    with client(srv) as http:
        request_id = http.post(f"/v2/{SLUG}", json=BODY, headers={"Cancel-After": "1s"}).json()["request_id"]
        assert held.reached.wait(60)
        wait_until(d.web.records.get(request_id).deadline)
        held.release.set()
        record = d.wait_end(request_id)
    assert record.failure.value == "cancelled" and "Cancel-After" in record.error
    assert d.webhooks == [request_id] and d.credits_left() == BUDGET
