"""Limits, budgets, timeouts, crashes, storage outages and logs."""

import json
import logging
import os
import signal
import threading
import time

import httpx
import pytest

from schemas import JobStatus
from service.embedded import build_embedded
from service.jobs.housekeeping import reap_stale
from service.jobs.records import JobRecord
from tests.conftest import REPO
from tests.servers import KEY_A, KEY_B, SlowInpainter, api_server, free_port, make_settings, start_service
from tests.test_service import BODY, SLUG, wait_terminal


def client_for(srv, key=KEY_A):
    return httpx.Client(base_url=srv.url, headers={"x-api-key": key}, timeout=60)


def test_rate_limit_answers_429_with_retry_headers(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, rate_limit_per_second=0.5, rate_limit_burst=2)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        codes = [client.post(f"/v2/{SLUG}", json=BODY).status_code for _ in range(2)]
        limited = client.post(f"/v2/{SLUG}", json=BODY)
        assert codes == [200, 200]
        assert limited.status_code == 429 and "rate limit" in limited.json()["error"]
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["x-rate-limit-reset-at-utc"].endswith("Z")
        with client_for(srv, KEY_B) as other:  # buckets are per key
            assert other.post(f"/v2/{SLUG}", json=BODY).status_code == 200


def test_queue_cap_answers_429(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, max_queue_depth=2)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        ids = [client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"] for _ in range(2)]
        full = client.post(f"/v2/{SLUG}", json=BODY)
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
        assert "Retry-After" in full.headers
        gate.set()
        for request_id in ids:
            assert wait_terminal(client, request_id)["status"] == "COMPLETED"
        assert client.post(f"/v2/{SLUG}", json=BODY).status_code == 200


def test_credit_budget_406_and_remaining_header(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, key_credits=f"{KEY_A}=3")
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        first = client.post(f"/v2/{SLUG}", json={**BODY, "samples": 2})
        assert first.status_code == 200 and first.headers["x-remaining-credits"] == "1"
        v1 = client.post(f"/v1/{SLUG}", json=BODY)
        assert v1.status_code == 200 and v1.headers["x-remaining-credits"] == "0"
        broke = client.post(f"/v2/{SLUG}", json=BODY)
        assert broke.status_code == 406 and "credit budget exhausted" in broke.json()["error"]
        assert broke.headers["x-remaining-credits"] == "0"
        with client_for(srv, KEY_B) as other:  # no budget configured for this key: unlimited, no header
            r = other.post(f"/v2/{SLUG}", json=BODY)
            assert r.status_code == 200 and "x-remaining-credits" not in r.headers


def test_bad_input_costs_no_credit(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, key_credits=f"{KEY_A}=1")
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        assert client.post(f"/v2/{SLUG}", json={**BODY, "image": "bm90IGFuIGltYWdl"}).status_code == 400
        assert client.post(f"/v2/{SLUG}", json=BODY).headers["x-remaining-credits"] == "0"


def test_daily_image_cap(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, daily_image_cap=3)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        assert client.post(f"/v2/{SLUG}", json={**BODY, "samples": 2}).status_code == 200
        with client_for(srv, KEY_B) as other:  # the cap is for the whole deployment
            capped = other.post(f"/v2/{SLUG}", json={**BODY, "samples": 2})
        assert capped.status_code == 429 and "daily cap" in capped.json()["error"]
        assert int(capped.headers["Retry-After"]) <= 86400
        assert client.post(f"/v2/{SLUG}", json=BODY).status_code == 200


def test_job_timeout_fails_the_job_and_refunds(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, job_timeout_seconds=0.05, key_credits=f"{KEY_A}=5")
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        submitted = client.post(f"/v2/{SLUG}", json={**BODY, "num_inference_steps": 100})
        assert submitted.headers["x-remaining-credits"] == "4"
        body = wait_terminal(client, submitted.json()["request_id"])
        assert body["status"] == "FAILED" and "timed out" in body["error"]
        assert client.post(f"/v2/{SLUG}", json=BODY).headers["x-remaining-credits"] == "4"  # refunded, then spent


def test_storage_outage_fails_with_clear_error(tmp_path, tiny_model_dir, inpainter, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(tmp_path, tiny_model_dir, s3_bucket="results", s3_endpoint_url=dead, storage_retries=2)
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        started = time.monotonic()
        request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        body = wait_terminal(client, request_id, timeout=60)
        assert body["status"] == "FAILED" and "storing the result failed" in body["error"]
        assert "after 2 attempts (EndpointConnectionError)" in body["error"]
        assert time.monotonic() - started < 30


def test_killed_server_process_job_ends_terminal(tmp_path):
    """kill -9 the whole server mid-job; after a restart the job is retried and completes."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "API_KEYS": KEY_A, "STATE_DIR": str(tmp_path / "state"),
           "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"

    def start():
        return start_service(["--demo"], env, REPO, tmp_path / "server.log")

    proc = start()
    try:
        with httpx.Client(base_url=url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            slow = {**BODY, "samples": 4, "img_width": 768, "img_height": 768, "num_inference_steps": 60}
            request_id = client.post(f"/v2/{SLUG}", json=slow).json()["request_id"]
            deadline = time.monotonic() + 60
            while client.get(f"/v2/requests/{request_id}/status").json()["status"] != "PROCESSING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = start()
            body = wait_terminal(client, request_id, timeout=180)
            assert body["status"] == "COMPLETED"
    finally:
        proc.kill()
        proc.wait(10)


def test_lease_reaper_retries_once_then_fails(tmp_path, tiny_model_dir):
    jobs = build_embedded(make_settings(tmp_path, tiny_model_dir), lambda: None).jobs  # not started: nothing runs
    store = jobs.records
    now = time.time()
    for job_id, attempts in (("quiet-once", 1), ("quiet-twice", 2), ("alive", 1)):
        store.create(JobRecord(id=job_id, owner="o", params={}, created_at=now - 600, expires_at=now + 600))
        store.update(job_id, status=JobStatus.PROCESSING, attempts=attempts, started_at=now - 500,
                     heartbeat_at=now - (5 if job_id == "alive" else 300))
    resubmitted = []
    jobs.dispatcher.redispatch = resubmitted.append
    assert reap_stale(jobs, lease=120, now=now) == 2
    assert resubmitted == ["quiet-once"]
    assert store.get("quiet-once").status == JobStatus.PROCESSING
    failed = store.get("quiet-twice")
    assert failed.status == JobStatus.FAILED and "stopped responding" in failed.error
    assert store.get("alive").status == JobStatus.PROCESSING


def test_logs_are_structured_and_hide_secrets(tmp_path, tiny_model_dir, inpainter, caplog):
    settings = make_settings(tmp_path, tiny_model_dir, allow_private_urls=True)
    with caplog.at_level(logging.INFO, logger="inpaint.events"):
        with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
            client.post(f"/v2/{SLUG}", json={**BODY, "image": f"{srv.url}/missing.png?X-Amz-Signature=s3cr3t"})
            request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            wait_terminal(client, request_id)
            file_url = client.get(f"/v2/requests/{request_id}").json()["output"]
            assert httpx.get(file_url).status_code == 200
            token = file_url.split("/")[-2]
    lines = [r.getMessage() for r in caplog.records if r.name == "inpaint.events"]
    events = [json.loads(line) for line in lines]
    text = "\n".join(lines)
    assert KEY_A not in text and "s3cr3t" not in text
    states = [e["status"] for e in events if e["event"] == "job" and e.get("request_id") == request_id]
    assert states == ["QUEUED", "PROCESSING", "COMPLETED"]
    requests = [e for e in events if e["event"] == "request"]
    assert any(e["status"] == 400 for e in requests) and all("ms" in e for e in requests)
    submit = next(e for e in requests if e.get("request_id") == request_id)
    assert submit["owner"] and submit["owner"] != KEY_A
    polls = [e for e in requests if e["path"].endswith("/status")]
    assert polls and all(e["request_id"] == request_id for e in polls)  # every line about a job names it
    refused = next(e for e in requests if e["status"] == 400)
    assert "image" in refused["error"]  # a 4xx line says why
    assert token not in text and any(e["path"].startswith(f"/files/{request_id}/<token>/") for e in requests)
