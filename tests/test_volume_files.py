"""Inputs and results in a modal.Volume (Modal's default storage), through the Volume's API: the storage on a
stand-in that fails as modal 1.6.4's Volume does, and the files served by the web tier over real HTTP."""

import time

import httpx
import pytest

from service.http.app import create_app
from service.jobs.errors import StorageError
from service.jobs.housekeeping import sweep_expired
from service.stores.object_inputs import ObjectInputs
from service.stores.volume_files import VolumeStorage
from tests.servers import KEY_A, ApiServer, free_port
from tests.standins import StandInVolume
from tests.test_modal_races import Deployment
from tests.test_service import BODY, SLUG, sdk


def test_files_go_in_and_come_back_out():
    volume = StandInVolume()
    storage = VolumeStorage(volume)
    data = bytes(range(256)) * 1000  # several of read_file's chunks
    storage.put("job/token/0.jpg", data, "image/jpeg")
    assert volume.files == {"job/token/0.jpg": data}
    assert storage.read("job/token/0.jpg") == data
    storage.put("job/token/0.jpg", b"again", "image/jpeg")  # a retried upload overwrites its own file
    assert storage.read("job/token/0.jpg") == b"again"
    assert storage.url("job/token/0.jpg", "https://x.example/", 60) == "https://x.example/files/job/token/0.jpg"
    with pytest.raises(FileNotFoundError):
        storage.read("job/token/1.jpg")
    for bad in ("/etc/passwd", "job/../../x", ""):
        with pytest.raises(StorageError):
            storage.put(bad, b"x", "image/jpeg")


def test_a_failing_volume_is_retried_then_a_storage_error():
    class Flaky(StandInVolume):
        def __init__(self, failures):
            super().__init__()
            self.failures = failures

        def batch_upload(self, force=False):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("Modal unreachable")
            return super().batch_upload(force)

    storage = VolumeStorage(Flaky(failures=1), retries=2)
    storage.put("a/b/c.png", b"png", "image/png")
    assert storage.read("a/b/c.png") == b"png"
    with pytest.raises(StorageError, match="after 2 attempts"):
        VolumeStorage(Flaky(failures=5), retries=2).put("a/b/c.png", b"png", "image/png")


def test_deleting_a_jobs_files_leaves_no_folder_of_it_and_nothing_of_another_job():
    volume = StandInVolume()
    storage = VolumeStorage(volume)
    inputs = ObjectInputs(storage)
    inputs.put("job1-tok", b"image1", b"mask1")
    inputs.put("job2-tok", b"image2", b"mask2")
    storage.put("job1/t/0.jpg", b"a", "image/jpeg")
    storage.put("job1/t/1.jpg", b"b", "image/jpeg")
    storage.put("job2/t/0.jpg", b"c", "image/jpeg")
    inputs.delete(["job1-tok"])
    storage.delete(["job1/t/0.jpg", "job1/t/1.jpg", "job1/t/9.jpg"])  # one never written: no error
    assert sorted(volume.files) == ["inputs/job2-tok/image", "inputs/job2-tok/mask", "job2/t/0.jpg"]
    assert inputs.get("job2-tok") == (b"image2", b"mask2") and inputs.get("job1-tok") is None


def test_the_web_tier_serves_results_from_the_volume(tmp_path, tiny_model_dir, inpainter):
    d = Deployment(tmp_path, tiny_model_dir, inpainter)
    server = ApiServer(create_app(d._backend(spawn=d._spawn)), free_port()).start()
    try:
        result = sdk(server).submit_async(SLUG, **{**BODY, "samples": 2}).wait(timeout=60, interval=0.05)
        assert result["status"] == "COMPLETED"
        for url in result["output"]:
            key = url.split("/files/", 1)[1]
            answer = httpx.get(url)
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
            assert answer.content == d.files.files[key]  # read back through the Volume's API
        assert not [name for name in d.files.files if name.startswith("inputs/")]  # deleted once the job ended
        job, token, name = result["output"][0].split("/files/", 1)[1].split("/")
        assert httpx.get(f"{server.url}/files/{job}/wrong-token/{name}").status_code == 404
        assert sweep_expired(d.web, now=time.time() + d.settings.result_ttl_seconds + 1) == 1  # expired
        assert httpx.get(result["output"][0]).status_code == 404
        assert d.files.files == {}  # the sweep deleted them from the Volume
    finally:
        server.stop()
