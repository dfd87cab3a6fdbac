"""Faults a failing machine or a hostile client brings: a full disk, a burst at the queue cap, many waiting v1
calls, long prompts, jobs that wait too long, IPv6 forms of private addresses, state files at rest, a second
server on the same STATE_DIR. Real faults where the machine allows (a small tmpfs, real concurrent clients)."""

import ipaddress
import json
import os
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.jobs.safe_urls import is_public_address
from schemas import JobStatus
from tests.servers import KEY_A, SlowInpainter, api_server, free_port, make_settings
from tests.test_service import BODY, SLUG, wait_terminal
from tests.test_startup import finished, run_service


def client_for(srv, **kwargs):
    return httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=120, **kwargs)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a real filesystem that really fills up. Needs root (CI and the dev machines run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write until the filesystem says ENOSPC; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_full_disk_answers_503_and_service_resumes_when_space_returns(small_disk, tiny_model_dir, inpainter):
    settings = make_settings(small_disk / "state", tiny_model_dir)
    gate = threading.Event()
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        queued = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]  # accepted before the disk fills
        filler = fill(small_disk)
        refused = client.post(f"/v2/{SLUG}", json=BODY)
        assert refused.status_code == 503 and "storage" in refused.json()["error"]
        assert refused.headers["Retry-After"]
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "cannot be written" in health["error"]
        gate.set()  # the running job now tries to store its result on the full disk
        filler.unlink()  # space returns
        again = client.post(f"/v2/{SLUG}", json=BODY)
        assert again.status_code == 200
        for request_id in (queued, again.json()["request_id"]):
            assert wait_terminal(client, request_id)["status"] in ("COMPLETED", "FAILED")
        assert wait_terminal(client, again.json()["request_id"])["status"] == "COMPLETED"
        assert client.get("/health").json()["status"] == "ok"


def test_queue_cap_holds_under_concurrent_submits(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, max_queue_depth=5, rate_limit_per_second=0)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        with ThreadPoolExecutor(30) as pool:
            codes = list(pool.map(lambda _: client.post(f"/v2/{SLUG}", json=BODY).status_code, range(30)))
        assert codes.count(200) == 5 and codes.count(429) == 25
        assert client.get("/health").json()["queue_depth"] == 5
        gate.set()


def test_waiting_v1_calls_do_not_starve_other_requests(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, v1_timeout_seconds=60, rate_limit_per_second=0)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        answers = []
        waiting = [threading.Thread(target=lambda: answers.append(client.post(f"/v1/{SLUG}", json=BODY)))
                   for _ in range(50)]
        for t in waiting:
            t.start()
        while client.get("/health").json()["queue_depth"] < 50:  # all 50 accepted and waiting
            pass
        # Waiting v1 calls used to hold a thread each of the pool submits need: this submit then waited for them.
        submitted = client.post(f"/v2/{SLUG}", json=BODY, timeout=15)
        assert submitted.status_code == 200 and all(t.is_alive() for t in waiting)
        records = srv.app.state.jobs.records
        for status in ("PROCESSING", "QUEUED"):
            for request_id in records.unfinished_ids(JobStatus(status)):
                client.post(f"/v2/requests/{request_id}/cancel")
        for t in waiting:
            t.join(120)
        assert len(answers) == 50 and all(r.status_code == 422 and r.json()["failure"] == "cancelled"
                                          for r in answers)
        gate.set()


def test_v1_deadline_counts_from_arrival(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, v1_timeout_seconds=2)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        answer = client.post(f"/v1/{SLUG}", json=BODY)
        assert answer.status_code == 504 and "did not finish within 2s" in answer.json()["error"]
        request_id = answer.headers["x-request-id"]
        status = client.get(f"/v2/requests/{request_id}/status")
        assert status.status_code == 200 and status.json()["status"] in ("QUEUED", "PROCESSING")  # poll URL works
        gate.set()


def test_a_job_queued_too_long_ends_failed_with_webhook_and_refund(tmp_path, tiny_model_dir, inpainter):
    from tests.test_extensions import Receiver

    receiver = Receiver()
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, max_queue_seconds=1, allow_private_urls=True,
                             key_credits={KEY_A: 5})
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv, client_for(srv) as client:
        client.post(f"/v2/{SLUG}", json=BODY)  # holds the worker
        waiting = client.post(f"/v2/{SLUG}", json={**BODY, "webhook_url": receiver.url})
        assert waiting.headers["x-remaining-credits"] == "3"
        body = wait_terminal(client, waiting.json()["request_id"])
        assert body["status"] == "FAILED" and body["failure"] == "expired" and "expired in queue" in body["error"]
        (_, delivered, _), = receiver.wait_for(1)
        assert json.loads(delivered)["failure"] == "expired"
        assert client.get(f"/v2/requests/{waiting.json()['request_id']}/status").status_code == 422  # not 404
        gate.set()
        third = client.post(f"/v2/{SLUG}", json=BODY)
        assert third.headers["x-remaining-credits"] == "3"  # the expired job's credit came back


def test_prompt_over_the_cap_is_400_naming_the_field(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv, client_for(srv) as client:
        r = client.post(f"/v2/{SLUG}", json={**BODY, "prompt": "x" * (1024 * 1024)})
        assert r.status_code == 400 and r.json()["field"] == "prompt" and "1000 characters" in r.json()["error"]


@pytest.mark.parametrize("address", ["::a9fe:a9fe", "::7f00:1", "::a00:1", "64:ff9b::a9fe:a9fe",
                                     "64:ff9b:1::a00:1", "::ffff:0:7f00:1", "fec0::1", "::ffff:127.0.0.1"])
def test_ipv6_forms_of_private_addresses_are_not_public(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_stay_public(address):
    assert is_public_address(ipaddress.ip_address(address))


def test_data_uri_must_say_an_image_type(tmp_path, tiny_model_dir, inpainter):
    png = BODY["image"]
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv, client_for(srv) as client:
        r = client.post(f"/v2/{SLUG}", json={**BODY, "image": f"data:text/html;base64,{png}"})
        assert r.status_code == 400 and "text/html" in r.json()["error"] and r.json()["field"] == "image"


def test_state_files_are_owner_only_and_inputs_leave_with_the_job(tmp_path, tiny_model_dir, inpainter):
    state = tmp_path / "state"
    gate = threading.Event()
    with api_server(make_settings(state, tiny_model_dir), lambda: SlowInpainter(inpainter, gate=gate)) as srv, \
            client_for(srv) as client:
        request_id = client.post(f"/v2/{SLUG}", json={**BODY, "output_format": "png"}).json()["request_id"]
        inputs = sorted((state / "inputs").iterdir())
        assert [p.name.removeprefix(request_id + "-").split(".")[1] for p in inputs] == ["image", "mask"]
        assert all(p.name.startswith(request_id + "-") for p in inputs)  # the job's id, then a random token
        gate.set()
        assert wait_terminal(client, request_id)["status"] == "COMPLETED"
        deadline = time.monotonic() + 30
        while list((state / "inputs").iterdir()):  # deleted by whoever ended the job, right after the end
            assert time.monotonic() < deadline, "inputs outlived the job"
            time.sleep(0.01)
    modes = {p.relative_to(state): stat.S_IMODE(p.stat().st_mode) for p in state.rglob("*")}
    assert modes[Path("jobs.sqlite3")] == 0o600 and modes[Path("inputs")] == 0o700
    result = next(p for p in modes if p.suffix == ".png")
    assert modes[result] == 0o600 and modes[Path("results")] == 0o700
    assert os.stat(inputs[0].parent).st_mode & 0o077 == 0


def test_a_second_server_on_the_same_state_dir_refuses(tmp_path, tiny_model_dir):
    first = run_service(tmp_path, MODEL_DIR=str(tiny_model_dir), API_KEYS="k", PORT=str(free_port()))
    try:
        for line in first.stdout:  # the first one holds the lock once it says how many keys it has
            if "API key" in line:
                break
        code, output = finished(run_service(tmp_path, MODEL_DIR=str(tiny_model_dir), API_KEYS="k",
                                            PORT=str(free_port())))
        assert code != 0 and "Traceback" not in output
        assert "another inpaint server is already using STATE_DIR" in output
    finally:
        first.kill()
        first.communicate(timeout=60)


def test_binding_beyond_loopback_needs_public_base_url(tmp_path):
    code, output = finished(run_service(tmp_path, "--demo", HOST="0.0.0.0", PORT=str(free_port())))
    assert code != 0 and "PUBLIC_BASE_URL" in output and "Traceback" not in output
    assert not (tmp_path / ".models").exists()  # refused before any work


def test_oversized_headers_are_refused(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        r = httpx.get(f"{srv.url}/health", headers={"x-padding": "a" * 200_000})
        assert r.status_code == 431 and "headers are larger than 64 KiB (65,536 bytes)" in r.json()["error"]
        assert httpx.get(f"{srv.url}/health").status_code == 200


def test_unwritable_result_dir_is_retried_then_a_clear_failure(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, storage_retries=2)
    results = tmp_path / "results"
    with api_server(settings, lambda: inpainter) as srv, client_for(srv) as client:
        results.rmdir()
        results.write_text("in the way")  # creating the job's folder fails (even for root, unlike chmod)
        try:
            body = wait_terminal(client, client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"])
        finally:
            results.unlink()
            results.mkdir()
        assert body["status"] == "FAILED" and body["failure"] == "storage"
        assert "storing the result failed" in body["error"]
        assert client.post(f"/v2/{SLUG}", json=BODY).status_code == 200  # the next job is unaffected


def test_a_deleted_job_database_shows_on_health(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv, client_for(srv) as client:
        (tmp_path / "jobs.sqlite3").unlink()
        deadline = time.monotonic() + 30
        while (health := client.get("/health").json())["status"] != "degraded":
            assert time.monotonic() < deadline, "the deleted database went unnoticed"
            time.sleep(0.1)
        assert str(tmp_path / "jobs.sqlite3") in health["error"]  # names the database at fault
