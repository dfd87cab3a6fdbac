"""The seams of the service: no store call on the event loop, the failure table, refunds exactly once."""

import asyncio
import threading

import httpx
import pytest

from schemas import InpaintParams, JobStatus
from service.http.app import create_app
from service.jobs.identity import key_owner
from service.embedded import build_embedded
from service.http.errors import FAILURE_STATUS, v1_status
from service.jobs.failures import Failure, refunded
from service.jobs.limits import remaining_credits
from tests.images import box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, ApiServer, SlowInpainter, free_port, make_settings
from tests.test_service import BODY, SLUG, wait_terminal


WRITES = {"create", "update", "finish", "claim", "request_cancel", "delete", "put", "modify"}


class LoopGuard:
    """Wraps a store port; records every call made on a thread that runs an event loop: any call when the
    backend's reads are not inline (Modal: every call is a network round trip), else every write."""

    def __init__(self, inner, violations: list, inline_reads: bool):
        self._inner, self._violations, self._inline_reads = inner, violations, inline_reads

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr) or (self._inline_reads and name not in WRITES):
            return attr

        def guarded(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                self._violations.append(f"{name} on the event loop ({threading.current_thread().name})")
            except RuntimeError:
                pass
            return attr(*args, **kwargs)

        return guarded


def swap_store(jobs, name: str, replacement) -> None:
    """Put `replacement` in place of the job service's store `name` in every part that holds it."""
    for part in (jobs, jobs.admission, jobs.lifecycle, jobs.waiting):
        if hasattr(part, name):
            setattr(part, name, replacement)


def guard_ports(jobs, violations: list) -> None:
    for name in ("records", "inputs", "counters"):
        swap_store(jobs, name, LoopGuard(getattr(jobs, name), violations, jobs.waiting.inline_reads))


def test_no_handler_calls_the_store_on_the_event_loop(tmp_path, tiny_model_dir, inpainter):
    violations: list[str] = []
    gate = threading.Event()
    backend = build_embedded(make_settings(tmp_path, tiny_model_dir, key_credits={KEY_A: 50}),
                             lambda: SlowInpainter(inpainter, gate=gate))
    jobs = backend.jobs
    assert jobs.waiting.inline_reads  # SQLite in WAL mode, a read connection per thread: reads never wait on a writer
    guard_ports(jobs, violations)
    server = ApiServer(create_app(backend), free_port()).start()
    try:
        with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            queued = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            second = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert client.get(f"/v2/requests/{second}/status").json()["status"] == "QUEUED"
            client.get(f"/v2/requests/{second}/status", params={"wait": 0.2})
            assert client.get(f"/v2/requests/{second}").status_code == 202
            assert client.post(f"/v2/requests/{second}/cancel").json()["status"] == "CANCELLED"
            client.get("/health")
            gate.set()
            assert client.post(f"/v1/{SLUG}", json=BODY).status_code == 200
            wait_terminal(client, queued)
            result = client.get(f"/v2/requests/{queued}").json()
            assert httpx.get(result["output"]).status_code == 200
            assert client.post(f"/v2/requests/{queued}/cancel").json()["status"] == "COMPLETED"
    finally:
        server.stop()
    assert violations == []


def test_failure_table_covers_every_kind_and_maps_to_http():
    assert set(FAILURE_STATUS) == set(Failure)
    assert v1_status(Failure.BLOCKED) == v1_status(Failure.CANCELLED) == 422
    assert v1_status(Failure.UNAVAILABLE) == 503 and v1_status(Failure.TIMED_OUT) == 504
    assert v1_status(None) == 500
    assert not refunded(Failure.BLOCKED)  # the caller's content was the cause
    assert all(refunded(kind) for kind in Failure if kind != Failure.BLOCKED)


@pytest.mark.parametrize("failure", list(Failure))
def test_a_failed_job_is_refunded_exactly_once(tmp_path, tiny_model_dir, failure):
    settings = make_settings(tmp_path, tiny_model_dir, key_credits={KEY_A: 5})
    jobs = build_embedded(settings, lambda: None).jobs  # not started: nothing runs the job
    ended = []
    jobs.lifecycle.on_terminal = ended.append
    owner = key_owner(KEY_A)
    record, left = jobs.admission.admit(owner, InpaintParams(prompt="p", samples=2), png_bytes(gradient_image()),
                              png_bytes(box_mask()), "http://x")
    assert left == 3
    results = []
    threads = [threading.Thread(target=lambda: results.append(jobs.lifecycle.fail(record.id, failure, "boom")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1 and len(ended) == 1
    assert jobs.lifecycle.complete(record.id) is None  # nothing ends twice
    expected = 5 if refunded(failure) else 3
    assert remaining_credits(jobs.counters, owner, 5) == expected
    assert jobs.records.get(record.id).status == JobStatus.FAILED and jobs.inputs.get(record.inputs_at) is None


def test_modal_handlers_make_no_store_call_on_the_event_loop(tmp_path, tiny_model_dir, inpainter):
    """On Modal every store call is a network round trip: none may run on the loop, reads included."""
    from service.backend import build_modal
    from tests.standins import StandInSpawner, standin_dicts

    violations: list[str] = []
    settings = make_settings(tmp_path, tiny_model_dir, key_credits={KEY_A: 50})
    dicts = standin_dicts()
    spawner = StandInSpawner(lambda job_id: None)
    backend = build_modal(settings, dicts, spawn=spawner.spawn, call_from_id=spawner.from_id, gpu="L4")
    jobs = backend.jobs
    assert not jobs.waiting.inline_reads
    guard_ports(jobs, violations)
    server = ApiServer(create_app(backend), free_port()).start()
    try:
        with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            client.get(f"/v2/requests/{request_id}/status")
            client.get(f"/v2/requests/{request_id}/status", params={"wait": 0.3})
            client.get(f"/v2/requests/{request_id}")
            client.post(f"/v2/requests/{request_id}/cancel")
            client.get("/health")
    finally:
        server.stop()
        spawner.pool.shutdown(wait=True)
    assert violations == []


def test_a_failing_refund_does_not_cost_the_webhook(tmp_path, tiny_model_dir):
    from service.jobs.errors import StoreUnavailable

    settings = make_settings(tmp_path, tiny_model_dir, key_credits={KEY_A: 5})
    jobs = build_embedded(settings, lambda: None).jobs
    ended = []
    jobs.lifecycle.on_terminal = ended.append
    record, _ = jobs.admission.admit(key_owner(KEY_A), InpaintParams(prompt="p"), png_bytes(gradient_image()),
                           png_bytes(box_mask()), "http://x")
    def failing_modify(name, change):
        raise StoreUnavailable("disk full")

    swap_store(jobs, "counters", type("Broken", (), {"modify": staticmethod(failing_modify)})())
    assert jobs.lifecycle.fail(record.id, Failure.INTERNAL, "boom") is not None
    assert [r.id for r in ended] == [record.id]  # the webhook still goes out
    assert jobs.inputs.get(record.inputs_at) is None
