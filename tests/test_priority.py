"""`priority: "low"`: a low job runs only when no normal job waits, and its queue position counts every normal
job ahead of it. Embedded over real HTTP; on Modal a low job is handed to Modal only when running containers
have room (see also tests/test_modal_races.py's Deployment)."""

import threading
import time

import httpx

from schemas import InpaintParams, JobStatus
from service.jobs.housekeeping import expire_queued, reap_stale, sweep_expired
from service.jobs.identity import key_owner
from tests.images import box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, SlowInpainter, api_server, make_settings
from tests.test_modal_races import BUDGET, deployment  # noqa: F401  (fixture)
from tests.test_service import BODY, SLUG, wait_terminal


class OrderedInpainter(SlowInpainter):
    """Held at the gate like SlowInpainter; remembers the prompts in the order the model ran them."""

    def __init__(self, inner, gate):
        super().__init__(inner, gate=gate)
        self.ran: list[str] = []

    def run(self, params, *args, **kwargs):
        self.ran.append(params.prompt)
        return super().run(params, *args, **kwargs)


def test_low_jobs_wait_for_every_normal_job(tmp_path, tiny_model_dir, inpainter):
    model = OrderedInpainter(inpainter, threading.Event())
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: model) as srv:
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
            def submit(priority: str, prompt: str = "first") -> str:
                answer = http.post(f"/v2/{SLUG}", json={**BODY, "priority": priority, "prompt": prompt})
                assert answer.status_code == 200, answer.text
                return answer.json()["request_id"]

            running = submit("normal")
            while http.get(f"/v2/requests/{running}/status", params={"wait": 5}).json()["status"] == "QUEUED":
                pass  # the worker holds it at the gate
            low_1, normal_1 = submit("low", "low 1"), submit("normal", "normal 1")
            low_2, normal_2 = submit("low", "low 2"), submit("normal", "normal 2")
            positions = {job: http.get(f"/v2/requests/{job}/status").json()["queue_position"]
                         for job in (normal_1, normal_2, low_1, low_2)}
            assert positions == {normal_1: 0, normal_2: 1, low_1: 2, low_2: 3}
            model.gate.set()
            for job in (running, low_1, normal_1, low_2, normal_2):
                assert wait_terminal(http, job)["status"] == "COMPLETED"
            assert model.ran == ["first", "normal 1", "normal 2", "low 1", "low 2"]


def test_priority_must_be_normal_or_low(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        answer = httpx.post(f"{srv.url}/v2/{SLUG}", json={**BODY, "priority": "urgent"},
                            headers={"x-api-key": KEY_A})
        assert answer.status_code == 400 and answer.json()["field"] == "priority"


def test_on_modal_a_low_job_waits_for_room_on_running_containers(deployment):
    """Held back at submit (no FunctionCall: spawning could start a GPU container), left alone by the reaper,
    handed to Modal by the sweep only when running containers have room, then run like any job."""
    d = deployment()
    d.gate.clear()  # the GPU "container" holds the normal job until the checks below are done
    owner = key_owner(KEY_A)
    normal = d.submit()
    low, _ = d.web.admission.admit(owner, InpaintParams(prompt="bulk", seed=4, priority="low"),
                                   png_bytes(gradient_image()), png_bytes(box_mask()), "http://test")
    assert d.spawner.spawned == [normal]
    assert d.web.records.queue_position(d.web.records.get(low.id)) >= 1  # behind the normal job
    later = time.time() + 10 * d.settings.lease_seconds
    assert reap_stale(d.web, lease=d.settings.lease_seconds, now=later) == 0  # held on purpose, not lost
    assert d.web.dispatcher.release_held(0) == 0 and d.spawner.spawned == [normal]
    d.gate.set()
    assert d.wait_end(normal).status == JobStatus.COMPLETED
    assert d.web.dispatcher.release_held(4) == 1  # one held job, however much room
    assert d.spawner.spawned == [normal, low.id]
    assert d.wait_end(low.id).status == JobStatus.COMPLETED
    assert d.web.dispatcher.release_held(4) == 0  # nothing held any more


def test_on_modal_a_low_job_never_released_expires_and_is_refunded(deployment):
    d = deployment()
    d.settings.max_queue_seconds = 60
    low, _ = d.web.admission.admit(key_owner(KEY_A), InpaintParams(prompt="bulk", priority="low"),
                                   png_bytes(gradient_image()), png_bytes(box_mask()), "http://test")
    assert d.credits_left() == BUDGET - 1
    assert expire_queued(d.web, now=time.time() + 61) == 1
    record = d.web.records.get(low.id)
    assert record.status == JobStatus.FAILED and record.failure.value == "expired"
    assert d.credits_left() == BUDGET and d.spawner.spawned == []
    assert sweep_expired(d.web, now=time.time() + d.settings.result_ttl_seconds + 120) == 1
    assert not [key for key in d.dicts["records"]._data if low.id in str(key)]  # the held entry went with it
