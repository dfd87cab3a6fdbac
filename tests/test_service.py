"""The service over real HTTP (uvicorn on loopback) with the tiny model, driven by the real Segmind SDK."""

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.v2 import InferenceFailed

from schemas import HealthResponse
from tests.images import b64_png, box_mask, data_uri, gradient_image, png_bytes
from tests.servers import KEY_A, KEY_B, SlowInpainter, StaticHost, api_server, make_settings

SLUG = "sd1.5-inpainting"
IMAGE_B64 = b64_png(gradient_image())
MASK_URI = data_uri(box_mask())
BODY = {"image": IMAGE_B64, "mask": MASK_URI, "prompt": "a red chair", "seed": 42}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path_factory.mktemp("state"), tiny_model_dir, max_body_bytes=4 * 1024 * 1024,
                             input_max_pixels=1024 * 1024)
    with api_server(settings, lambda: inpainter) as srv:
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
        yield client


def sdk(server, key=KEY_A) -> SegmindClient:
    return SegmindClient(api_key=key, base_url=f"{server.url}/v1", timeout=60)


def wait_terminal(http: httpx.Client, request_id: str, timeout: float = 180) -> dict:
    """Long-poll until the job ends (woken by each change; the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/v2/requests/{request_id}/status", params={"wait": 5}).json()
        if body["status"] in ("COMPLETED", "FAILED"):
            return body
    raise AssertionError(f"{request_id} did not finish")


# ---- the Segmind SDK flows -------------------------------------------------------------------

def test_sdk_run_sync_returns_jpeg_with_headers(server):
    response = sdk(server).run_sync(SLUG, **BODY)
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (512, 512)
    assert response.headers["x-seed-value"] == "42"
    assert float(response.headers["x-generation-time"]) > 0
    assert response.headers["x-request-id"]


def test_sdk_submit_async_wait_and_download(server):
    job = sdk(server).submit_async(SLUG, **{**BODY, "img_height": 768})
    assert job.status_url.startswith("http://127.0.0.1:")  # absolute, as the SDK needs
    result = job.wait(timeout=60, interval=0.05)
    assert result["status"] == "COMPLETED" and result["error"] is None
    assert result["seed"] == 42 and result["images"][0]["seed"] == 42
    metrics = result["metrics"]
    assert metrics["inference_time"] > 0 and metrics["queue_time"] >= 0
    assert metrics["total_time"] >= metrics["inference_time"]
    download = httpx.get(result["output"])  # no API key: the URL itself is the credential
    assert download.status_code == 200 and download.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(download.content)).size == (512, 768)
    assert result["images"][0]["file_size"] == len(download.content)


def test_sdk_run_with_samples(server):
    result = sdk(server).run(SLUG, **{**BODY, "samples": 3, "output_format": "png"})
    assert isinstance(result["output"], list) and len(result["output"]) == 3
    assert [i["seed"] for i in result["images"]] == [42, 43, 44]
    for url in result["output"]:
        r = httpx.get(url)
        assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).format == "PNG"


def test_sdk_inference_failed_on_safety_block(tmp_path, tiny_flagging_model_dir):
    from inference import Inpainter

    settings = make_settings(tmp_path, tiny_flagging_model_dir)
    with api_server(settings, lambda: Inpainter(tiny_flagging_model_dir)) as srv:
        with pytest.raises(InferenceFailed) as info:
            sdk(srv).submit_async(SLUG, **BODY).wait(timeout=60, interval=0.05)
        assert "safety checker" in info.value.detail
        v1 = httpx.post(f"{srv.url}/v1/{SLUG}", json=BODY, headers={"x-api-key": KEY_A}, timeout=60)
        assert v1.status_code == 422 and "safety checker" in v1.json()["error"]


# ---- v1 variants ---------------------------------------------------------------------------

def test_v1_base64(http):
    r = http.post(f"/v1/{SLUG}", json={**BODY, "base64": True})
    assert r.status_code == 200
    body = r.json()
    assert body["seed"] == 42
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (512, 512)


def test_v1_samples_return_json_list(http):
    r = http.post(f"/v1/{SLUG}", json={**BODY, "samples": 2, "output_format": "webp"})
    body = r.json()
    assert r.status_code == 200 and body["seeds"] == [42, 43] and len(body["images"]) == 2
    assert body["content_type"] == "image/webp"
    assert r.headers["x-seed-value"] == "42,43"


def test_v1_png_is_lossless_outside_mask(http):
    empty_mask = data_uri(box_mask(box=(0, 0, 0, 0)))
    r = http.post(f"/v1/{SLUG}", json={**BODY, "mask": empty_mask, "output_format": "png"})
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).tobytes() == gradient_image().tobytes()


def test_v1_deadline_answers_504_and_job_still_completes(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, v1_timeout_seconds=0.2)
    with api_server(settings, lambda: SlowInpainter(inpainter, delay=1.0)) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            r = client.post(f"/v1/{SLUG}", json=BODY)
            assert r.status_code == 504
            assert "v2" in r.json()["error"]
            assert wait_terminal(client, r.headers["x-request-id"])["status"] == "COMPLETED"


# ---- v2 details ----------------------------------------------------------------------------

def test_status_shapes_and_result_202_while_running(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, public_base_url="https://inpaint.example.com")
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            submitted = [client.post(f"/v2/{SLUG}", json=BODY).json() for _ in range(3)]
            assert submitted[0]["status_url"].startswith("https://inpaint.example.com/v2/requests/")
            last = submitted[-1]["request_id"]
            status = client.get(f"/v2/requests/{last}/status").json()
            assert status["status"] == "QUEUED" and status["queue_position"] >= 1
            pending = client.get(f"/v2/requests/{last}")
            assert pending.status_code == 202 and pending.json()["status"] in ("QUEUED", "PROCESSING")
            gate.set()
            for s in submitted:
                assert wait_terminal(client, s["request_id"])["status"] == "COMPLETED"
            result = client.get(f"/v2/requests/{last}").json()
            assert result["output"].startswith("https://inpaint.example.com/files/")


def test_status_is_monotonic_under_concurrent_polling(server, http):
    order = {"QUEUED": 0, "PROCESSING": 1, "COMPLETED": 2, "FAILED": 2}
    ids = [http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"] for _ in range(4)]
    seen: dict[tuple[str, int], list[str]] = {(i, n): [] for i in ids for n in range(3)}

    def poll(request_id, poller):
        with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                answer = client.get(f"/v2/requests/{request_id}/status")
                if answer.status_code == 429:  # over the key's poll limit: back off as told, as a client should
                    time.sleep(float(answer.headers["retry-after"]))
                    continue
                state = answer.json()["status"]
                seen[request_id, poller].append(state)
                if state in ("COMPLETED", "FAILED"):
                    return

    threads = [threading.Thread(target=poll, args=key) for key in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for states in seen.values():  # each poller's own sequence of answers
        ranks = [order[s] for s in states]
        assert ranks == sorted(ranks), states
        assert states[-1] == "COMPLETED"


def test_other_key_sees_404(http, server):
    request_id = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
    other = httpx.get(f"{server.url}/v2/requests/{request_id}/status", headers={"x-api-key": KEY_B})
    unknown = httpx.get(f"{server.url}/v2/requests/nope/status", headers={"x-api-key": KEY_B})
    assert other.status_code == unknown.status_code == 404
    assert other.json().keys() == unknown.json().keys() == {"error"}


def test_bearer_auth_accepted(server):
    r = httpx.get(f"{server.url}/v2/requests/nope/status", headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 404


def test_cancel_queued_job(tmp_path, tiny_model_dir, inpainter):
    gate = threading.Event()
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: SlowInpainter(inpainter, gate=gate)) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            first = client.post(f"/v2/{SLUG}", json=BODY).json()
            second = client.post(f"/v2/{SLUG}", json=BODY).json()
            cancelled = client.post(f"/v2/requests/{second['request_id']}/cancel").json()
            assert cancelled["status"] == "CANCELLED"
            gate.set()
            assert wait_terminal(client, first["request_id"])["status"] == "COMPLETED"
            failed = client.get(f"/v2/requests/{second['request_id']}/status")
            assert failed.status_code == 422 and failed.json()["error"] == "cancelled"


def test_health_needs_no_key(server):
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok" and body["device"] == "cpu" and "queue_depth" in body
    assert HealthResponse.model_validate(body).model_dump() == body  # nothing missing, nothing more


def test_health_is_documented(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    answer = spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/HealthResponse"}
    fields = spec["components"]["schemas"]["HealthResponse"]["properties"]
    assert set(fields) == {"status", "model", "demo", "device", "queue_depth", "error"}
    assert all(field.get("description") for field in fields.values())


def test_cost_is_null_on_cpu_in_metrics_and_usage(http):
    """No GPU type set: no price is known, so the job's cost and its day's cost are null, not 0."""
    sync = http.post(f"/v1/{SLUG}", json=BODY)
    assert sync.status_code == 200 and float(sync.headers["x-gpu-seconds"]) > 0 and "x-cost-usd" not in sync.headers
    request_id = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
    wait_terminal(http, request_id)
    metrics = http.get(f"/v2/requests/{request_id}").json()["metrics"]
    assert metrics["gpu_seconds"] > 0 and metrics["cost_usd"] is None
    today = http.get("/usage", params={"days": 1}).json()["days"][0]
    assert today["jobs"] >= 2 and today["gpu_seconds"] > 0 and today["cost_usd"] is None


def test_openapi_and_docs(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert f"/v2/{{slug}}" in spec["paths"] and "/v2/requests/{request_id}/status" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, status, fragment",
    [
        ({"headers": {}}, 401, "missing API key"),
        ({"headers": {"x-api-key": "wrong"}}, 401, "invalid API key"),
        ({"path": "/v2/sdxl-inpainting"}, 404, "not found"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400, "JSON object"),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
        ({"content": b"image=x", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 400, "JSON"),
        ({"json": {**BODY, "num_inference_step": 30}}, 400, "unknown parameter 'num_inference_step'"),
        ({"json": {**BODY, "samples": 9}}, 400, "parameter 'samples'"),
        ({"json": {**BODY, "scheduler": "euler"}}, 400, "parameter 'scheduler'"),
        ({"json": {**BODY, "guidance_scale": "high"}}, 400, "parameter 'guidance_scale'"),
        ({"json": {k: v for k, v in BODY.items() if k != "prompt"}}, 400, "parameter 'prompt' is required"),
        ({"json": {**BODY, "image": "%%% not base64 %%%"}}, 400, "parameter 'image'"),
        ({"json": {**BODY, "mask": base64.b64encode(b"hello, not an image").decode()}}, 400, "not a readable image"),
        ({"json": {**BODY, "image": base64.b64encode(b"GIF89a" + b"\0" * 64).decode()}}, 400, "parameter 'image'"),
        ({"json": {**BODY, "image": b64_png(gradient_image(1100, 1000))}}, 400, "pixels"),
        ({"json": {**BODY, "image": "data:image/png,rawbytes"}}, 400, "base64"),
        ({"json": {**BODY, "prompt": "x" * (5 * 1024 * 1024)}}, 413, "larger than 4 MiB (4,194,304 bytes)"),
    ],
)
def test_error_classes(server, kwargs, status, fragment):
    path = kwargs.pop("path", f"/v2/{SLUG}")
    headers = kwargs.pop("headers", {})
    if status != 401:
        headers = {"x-api-key": KEY_A, **headers}
    r = httpx.post(f"{server.url}{path}", headers=headers, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_unknown_route_and_id_are_json_404(http):
    assert http.get("/v2/requests/does-not-exist").status_code == 404
    r = http.get("/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_file_urls_need_the_token(http, server):
    result = sdk(server).run(SLUG, **BODY)
    url = result["output"]
    forged = url.rsplit("/", 2)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAA/0.jpeg"
    assert httpx.get(forged).status_code == 404
    assert httpx.get(url.replace("/0.jpeg", "/../../x")).status_code == 404


# ---- input fetching and the SSRF guard -------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://0x7f000001/x.png",
        "http://2130706433/x.png",
        "http://127.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://172.16.0.1/x.png",
        "http://0.0.0.0/x.png",
        "http://[::]/x.png",
        "http://224.0.0.1/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://127.0.0.1:6379/_x",
    ],
)
def test_ssrf_refused(http, url):
    r = http.post(f"/v2/{SLUG}", json={**BODY, "image": url})
    assert r.status_code == 400, r.text
    assert "parameter 'image'" in r.json()["error"]


@pytest.fixture(scope="module")
def image_host():
    host = StaticHost({
        "/image.png": (png_bytes(gradient_image(300, 200)), "image/png"),
        "/mask.png": (png_bytes(box_mask(300, 200, (50, 50, 150, 150))), "image/png"),
        "/page.html": (b"<html>not an image</html>", "text/html"),
        "/big.png": (b"\x89PNG" + b"\0" * (3 * 1024 * 1024), "image/png"),
    })
    yield host
    host.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path_factory.mktemp("state-open"), tiny_model_dir, allow_private_urls=True,
                             input_max_bytes=2 * 1024 * 1024)
    with api_server(settings, lambda: inpainter) as srv:
        yield srv


def test_url_inputs_fetched_with_redirects(open_server, image_host):
    body = {**BODY, "image": f"{image_host.url}/redirect/image.png", "mask": f"{image_host.url}/mask.png"}
    response = sdk(open_server).run_sync(SLUG, **body)
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)


@pytest.mark.parametrize(
    "path, fragment",
    [("/page.html", "not a readable image"), ("/missing.png", "HTTP 404"), ("/big.png", "larger than 2 MiB (2,097,152 bytes)"),
     ("/loop", "too many redirects")],
)
def test_url_input_errors(open_server, image_host, path, fragment):
    with pytest.raises(SegmindError) as info:
        sdk(open_server).run_sync(SLUG, **{**BODY, "image": f"{image_host.url}{path}"})
    assert info.value.status == 400 and fragment in info.value.detail


def test_redirect_hops_are_rechecked(image_host, monkeypatch):
    """A public-looking first hop that redirects to a private address is refused at the second hop."""
    import asyncio

    from service.http import inputs
    from service.jobs import safe_urls
    from service.jobs.errors import BadInput

    monkeypatch.setattr(safe_urls, "is_public_address", lambda ip: str(ip) == "127.0.0.1")
    limits = inputs.FetchLimits(allow_private=False)

    async def go(url):
        async with inputs.make_client(limits) as client:
            return await inputs.fetch_url(url, "image", limits, client)

    assert asyncio.run(go(f"{image_host.url}/redirect/image.png")).startswith(b"\x89PNG")
    port = image_host.url.rsplit(":", 1)[1]
    with pytest.raises(BadInput, match="non-public"):
        asyncio.run(go(f"{image_host.url}/goto?http://127.0.0.2:{port}/image.png"))
