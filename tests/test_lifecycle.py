"""Expiry, restarts and crash recovery of the embedded default."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from schemas import JobStatus
from service.stores.sqlite import SQLiteState
from tests.conftest import REPO
from tests.servers import KEY_A, SlowInpainter, api_server, make_settings
from tests.test_service import BODY, SLUG, wait_terminal


def test_expired_ids_are_404_and_files_deleted(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, result_ttl_seconds=5)
    with api_server(settings, lambda: inpainter) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert wait_terminal(client, request_id)["status"] == "COMPLETED"
            url = client.get(f"/v2/requests/{request_id}").json()["output"]
            assert httpx.get(url).status_code == 200
            files = list((tmp_path / "results").rglob("*.jpeg"))
            assert len(files) == 1
            deadline = time.monotonic() + 60  # the TTL, then the sweep; waited for, not slept
            while files[0].exists() or client.get(f"/v2/requests/{request_id}/status").status_code != 404:
                assert time.monotonic() < deadline, "the expired job was not swept"
                time.sleep(0.1)
            assert client.get(f"/v2/requests/{request_id}").status_code == 404
            assert httpx.get(url).status_code == 404
            assert not files[0].exists()
            assert SQLiteState(tmp_path / "jobs.sqlite3").expired(time.time() + 10) == []


def test_queued_jobs_run_after_restart(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir)
    never = threading.Event()  # the first server's worker never gets to run anything
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=never)) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            ids = [client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"] for _ in range(3)]
            time.sleep(0.3)
            states = [client.get(f"/v2/requests/{i}/status").json()["status"] for i in ids]
            assert states.count("QUEUED") >= 2
    # Simulate the first job having been mid-run when the process died.
    store = SQLiteState(Path(tmp_path) / "jobs.sqlite3")
    first = store.get(ids[0])
    if first.status == JobStatus.PROCESSING:
        assert first.attempts == 1
    else:
        store.update(ids[0], status=JobStatus.PROCESSING, attempts=1, started_at=time.time())
    store.close()
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            for request_id in ids:
                assert wait_terminal(client, request_id)["status"] == "COMPLETED"
            assert client.get(f"/v2/requests/{ids[0]}").json()["images"]
    never.set()  # let the first server's stranded worker thread finish; it finds the job already done


def test_job_that_crashed_twice_is_failed_not_stuck(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir)
    gate = threading.Event()
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv:
        request_id = httpx.post(f"{srv.url}/v2/{SLUG}", json=BODY, headers={"x-api-key": KEY_A}).json()["request_id"]
    store = SQLiteState(Path(tmp_path) / "jobs.sqlite3")
    store.update(request_id, status=JobStatus.PROCESSING, attempts=2, started_at=time.time())
    store.close()
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            body = wait_terminal(client, request_id)
            assert body["status"] == "FAILED" and "worker stopped" in body["error"]
    gate.set()


def test_status_never_moves_backwards_in_the_store(tmp_path):
    from service.jobs.records import JobRecord

    store = SQLiteState(tmp_path / "jobs.sqlite3")
    now = time.time()
    store.create(JobRecord(id="j", owner="o", params={}, created_at=now, expires_at=now + 60))
    assert store.update("j", status=JobStatus.PROCESSING).status == JobStatus.PROCESSING
    assert store.update("j", status=JobStatus.QUEUED) is None
    assert store.update("j", status=JobStatus.COMPLETED) is None  # ending a job is finish()'s, once
    assert store.finish("j", status=JobStatus.COMPLETED).status == JobStatus.COMPLETED
    assert store.finish("j", status=JobStatus.FAILED) is None
    assert store.update("j", progress_step=3) is None
    assert store.get("j").status == JobStatus.COMPLETED


def test_web_tier_does_not_import_torch():
    code = (
        "import sys, service.http.app, service.backend, service.__main__; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(heavy); assert not heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
