"""The web app and the GPU class's `run` in separate processes sharing one Dict server over a socket,
driven by the real Segmind SDK through v1 and v2 on the tiny model."""

import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO
from tests.multiprocess_modal import AUTHKEY, DictServer
from tests.servers import KEY_A, free_port
from tests.test_service import BODY, SLUG, wait_terminal


@pytest.fixture
def topology(tmp_path, tiny_model_dir):
    manager = DictServer(address=("127.0.0.1", 0), authkey=AUTHKEY)
    manager.start()
    address = "%s:%d" % manager.address
    port = free_port()
    common = [str(tmp_path), str(tiny_model_dir)]
    gpu = subprocess.Popen([sys.executable, "-m", "tests.multiprocess_modal", "gpu", address, *common], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
    web = subprocess.Popen([sys.executable, "-m", "tests.multiprocess_modal", "web", str(port), address, *common],
                           cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        assert gpu.stdout.readline().strip() == "gpu ready"
        deadline = time.monotonic() + 120
        while True:  # the web process is up when /health answers
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert web.poll() is None and time.monotonic() < deadline, "web process did not start"
            time.sleep(0.05)
        yield url
    finally:
        for proc in (web, gpu):
            proc.terminate()
            proc.wait(10)
        manager.shutdown()


def test_sdk_flows_across_processes(topology):
    from segmind import SegmindClient

    client = SegmindClient(api_key=KEY_A, base_url=f"{topology}/v1", timeout=120)
    image = client.run_sync(SLUG, **BODY)
    assert image.headers["content-type"] == "image/jpeg" and image.headers["x-seed-value"] == "42"
    result = client.submit_async(SLUG, **{**BODY, "samples": 2}).wait(timeout=120, interval=0.05)
    assert result["status"] == "COMPLETED" and len(result["output"]) == 2
    assert httpx.get(result["output"][0]).status_code == 200
    with httpx.Client(base_url=topology, headers={"x-api-key": KEY_A}, timeout=60) as http:
        ids = [http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"] for _ in range(3)]
        assert http.post(f"/v2/requests/{ids[2]}/cancel").json()["status"] in ("CANCELLED", "CANCELLING")
        assert [wait_terminal(http, i, timeout=120)["status"] for i in ids[:2]] == ["COMPLETED", "COMPLETED"]
        assert wait_terminal(http, ids[2], timeout=120)["error"] == "cancelled"
        assert http.get("/health").json()["queue_depth"] == 0
