"""`python -m service` runs its worker in a process of its own: the Segmind SDK flows, cancel, a worker that dies
(started again, its job retried), and a server that dies (its worker goes with it). Real processes throughout."""

import io
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.servers import KEY_A, free_port
from tests.test_service import BODY, SLUG, wait_terminal


class Service:
    """`python -m service --demo` with its output in a file, on a free port, with its own STATE_DIR."""

    def __init__(self, tmp_path, **env):
        self.port, self.log_path = free_port(), tmp_path / "server.log"
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "STATE_DIR", "MODEL_DIR", "PORT")}
        environ.update({"PYTHONPATH": str(REPO), "STATE_DIR": str(tmp_path / "state"), "API_KEYS": KEY_A,
                        "PORT": str(self.port), "KEY_CREDITS": f"{KEY_A}=100", **env})
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "--demo"], cwd=REPO, env=environ,
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=2).json()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if self.health()["status"] == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not become ready:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        """The server's child processes that run the worker (not multiprocessing's resource tracker)."""
        # -ww: whole command lines (ps cuts them at 80 columns when writing to a pipe, which can cut off
        # "resource_tracker" in a long venv path).
        listing = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(self.proc.pid)],
                                 capture_output=True, text=True).stdout
        return [int(line.split()[0]) for line in listing.splitlines() if "spawn_main" in line]

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def service(tmp_path):
    started = Service(tmp_path)
    started.wait_ready()
    yield started
    started.stop()


def client(service) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers={"x-api-key": KEY_A}, timeout=120)


def test_the_sdk_flows_and_cancel_work_across_the_process_boundary(service):
    from segmind import SegmindClient

    assert len(service.worker_pids()) == 1 and service.health()["device"] == "cpu"
    sdk = SegmindClient(api_key=KEY_A, base_url=f"{service.url}/v1", timeout=120)
    image = sdk.run_sync(SLUG, **BODY)
    assert image.headers["content-type"] == "image/jpeg" and image.headers["x-seed-value"] == "42"
    result = sdk.submit_async(SLUG, **{**BODY, "samples": 2}).wait(timeout=120, interval=0.1)
    assert result["status"] == "COMPLETED" and len(result["output"]) == 2
    with client(service) as http:
        running = http.post(f"/v2/{SLUG}", json={**BODY, "num_inference_steps": 100}).json()["request_id"]
        while (status := http.get(f"/v2/requests/{running}/status", params={"wait": 10}).json())["status"] == "QUEUED":
            pass
        assert status["status"] == "PROCESSING"  # its progress reached this process's long-poll
        assert http.post(f"/v2/requests/{running}/cancel").json()["status"] == "CANCELLING"
        ended = wait_terminal(http, running)
        assert ended["status"] == "FAILED" and ended["error"] == "cancelled"
        assert http.post(f"/v2/{SLUG}", json=BODY).headers["x-remaining-credits"] == "96"  # 1 + 2 + 1, refunded
        # No drawn mask: the mask from words and the outpainted border, decided in the worker process.
        outpainted = http.post(f"/v1/{SLUG}", json={"image": BODY["image"], "prompt": "p", "mask_prompt": "the chair",
                                                    "extend_left": 32, "original_size": True, "output_format": "png"})
        assert outpainted.status_code == 200, outpainted.text
        assert Image.open(io.BytesIO(outpainted.content)).size == (544, 512)


def test_a_worker_that_dies_is_started_again_and_its_job_retried(service):
    with client(service) as http:
        request_id = http.post(f"/v2/{SLUG}", json={**BODY, "num_inference_steps": 100}).json()["request_id"]
        while http.get(f"/v2/requests/{request_id}/status", params={"wait": 10}).json()["status"] == "QUEUED":
            pass
        [worker] = service.worker_pids()
        os.kill(worker, signal.SIGKILL)  # mid-job
        final = wait_terminal(http, request_id)
        assert final["status"] == "COMPLETED", final  # retried once by the next worker's recovery
        record = http.get(f"/v2/requests/{request_id}").json()
        assert record["status"] == "COMPLETED"
    [successor] = service.worker_pids()
    assert successor != worker and service.health()["status"] == "ok"


def test_a_server_killed_outright_takes_its_worker_with_it(service):
    [worker] = service.worker_pids()
    service.proc.kill()
    service.proc.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("the worker process outlived its server")
