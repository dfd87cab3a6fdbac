"""S3 result storage against moto's S3 server (a real S3 protocol endpoint on loopback) through boto3."""

import time

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.servers import KEY_A, api_server, free_port, make_settings
from tests.test_service import BODY, SLUG, sdk, wait_terminal

BUCKET = "inpaint-results"


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_output_is_a_presigned_s3_url_that_downloads(tmp_path, tiny_model_dir, inpainter, s3, s3_endpoint):
    settings = make_settings(tmp_path, tiny_model_dir, s3_bucket=BUCKET, s3_endpoint_url=s3_endpoint,
                             s3_prefix="results/")
    with api_server(settings, lambda: inpainter) as srv:
        result = sdk(srv).run(SLUG, **{**BODY, "output_format": "png"})
        url = result["output"]
        assert url.startswith(f"{s3_endpoint}/{BUCKET}/results/") and "X-Amz-Signature=" in url
        assert "X-Amz-Expires=" in url
        download = httpx.get(url)
        assert download.status_code == 200
        assert Image.open(__import__("io").BytesIO(download.content)).format == "PNG"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert keys == [f"results/{result['request_id']}/{url.split('/')[-2]}/0.png"]
        v1 = sdk(srv).run_sync(SLUG, **BODY)  # v1 still answers bytes
        assert v1.headers["content-type"] == "image/jpeg"


def test_expiry_deletes_s3_objects(tmp_path, tiny_model_dir, inpainter, s3, s3_endpoint):
    settings = make_settings(tmp_path, tiny_model_dir, s3_bucket=BUCKET, s3_endpoint_url=s3_endpoint,
                             result_ttl_seconds=2)
    with api_server(settings, lambda: inpainter) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert wait_terminal(client, request_id)["status"] == "COMPLETED"
            assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1
            time.sleep(2.6)
            assert client.get(f"/v2/requests/{request_id}").status_code == 404
            assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_on_modal_inputs_wait_in_the_bucket_not_in_a_dict(tmp_path, tiny_model_dir, inpainter, s3, s3_endpoint):
    """A modal.Dict holds at most a few GiB; two inputs of up to INPUT_MAX_BYTES per unfinished job do not belong
    there. They go to the result bucket at submit and are deleted when the job ends."""
    from schemas import InpaintParams
    from service.backend import build_modal
    from service.jobs.identity import key_owner
    from service.jobs.worker import run_job
    from tests.images import box_mask, gradient_image, png_bytes
    from tests.standins import standin_dicts

    settings = make_settings(tmp_path, tiny_model_dir, s3_bucket=BUCKET, s3_endpoint_url=s3_endpoint)
    dicts = standin_dicts()
    spawn = lambda job_id: type("Call", (), {"object_id": f"fc-{job_id}"})()  # noqa: E731 - nothing runs it
    web = build_modal(settings, dicts, spawn=spawn, gpu="L4").jobs
    image, mask = png_bytes(gradient_image()), png_bytes(box_mask())
    record, _ = web.admission.admit(key_owner(KEY_A), InpaintParams(prompt="a chair", seed=1), image, mask, "http://x")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert record.inputs_key.startswith(f"{record.id}-") and len(record.inputs_key) > len(record.id) + 16
    assert keys == [f"inpaint/inputs/{record.inputs_key}/image", f"inpaint/inputs/{record.inputs_key}/mask"]
    assert not any(image in raw or mask in raw for d in dicts.values() for raw in d._data.values())

    gpu = build_modal(settings, dicts).jobs  # a GPU container reads them back from the bucket
    assert run_job(record.id, gpu, inpainter).record.status.value == "COMPLETED"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"inpaint/{record.id}/")  # the result; the inputs are gone
