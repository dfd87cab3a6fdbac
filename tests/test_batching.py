"""Dynamic batching on the tiny model: which jobs share a pipeline call, what each job keeps of its own
(seed, cancel, failure, result, metrics), what a user can rely on for reproducibility, and the per-request
price and daily usage over HTTP."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from schemas import InpaintParams, JobStatus
from service.embedded import build_embedded
from service.jobs.failures import Failure
from service.jobs.worker import run_jobs
from tests.images import box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, KEY_B, api_server, make_settings
from tests.test_service import BODY, SLUG, wait_terminal


class Hooked:
    """The real Inpainter with hooks: `on_batch(items)` before each call, `at_step(step)` at every step."""

    def __init__(self, inner, on_batch=None, at_step=None, fail_batches=False):
        self.inner, self.on_batch, self.at_step, self.fail_batches = inner, on_batch, at_step, fail_batches
        self.device = inner.device
        self.calls: list[int] = []  # jobs per pipeline call
        self.steps = 0

    def _step(self, on_step):
        def step(i, n):
            self.steps += 1
            if self.at_step:
                self.at_step(i)
            if on_step:
                on_step(i, n)
        return step

    def run(self, params, image, mask, on_step=None):
        self.calls.append(1)
        return self.inner.run(params, image, mask, on_step=self._step(on_step))

    def run_batch(self, items, on_step=None):
        self.calls.append(len(items))
        if self.on_batch:
            self.on_batch(items)
        if self.fail_batches:
            raise RuntimeError("out of memory (simulated)")
        return self.inner.run_batch(items, on_step=self._step(on_step))


@pytest.fixture
def jobs(tmp_path, tiny_model_dir):
    """A job service over SQLite and files whose worker is not started: the tests call run_jobs themselves."""
    return build_embedded(make_settings(tmp_path, tiny_model_dir, gpu_type="L4"), lambda: None).jobs


def submit(jobs, **params) -> str:
    record, _ = jobs.admission.admit("owner", InpaintParams(prompt=params.pop("prompt", "a chair"), **params),
                           png_bytes(gradient_image()), png_bytes(box_mask()), "http://127.0.0.1")
    return record.id


def pixels(jobs, job_id) -> np.ndarray:
    record = jobs.records.get(job_id)
    return np.asarray(Image.open(jobs.storage.path_for(record.images[0].key)).convert("RGB")).astype(int)


def test_compatible_single_image_jobs_share_a_call_others_run_alone(jobs, inpainter):
    same = [submit(jobs, seed=s, prompt=f"chair {s}") for s in (1, 2, 3)]
    other_steps = submit(jobs, seed=4, num_inference_steps=21)
    two_samples = submit(jobs, seed=5, samples=2)
    model = Hooked(inpainter)
    outcomes = run_jobs([*same, other_steps, two_samples], jobs, model, max_images=4, cold_start=1.5)
    assert sorted(model.calls) == [1, 1, 3]
    records = {job_id: outcome.record for job_id, outcome in outcomes.items()}
    for job_id, seed in zip(same, (1, 2, 3)):
        record = records[job_id]
        assert record.status == JobStatus.COMPLETED and record.seeds == [seed] and record.batch_size == 3
        assert record.progress_step == record.progress_total == 20
        assert record.gpu_seconds > 0 and record.cold_start_time == 1.5
        assert record.cost_usd == pytest.approx(record.gpu_seconds * 0.000222)
        # each job's share of the one call: a third of its time plus its own encoding and storing
        assert record.gpu_seconds < record.inference_time
    assert records[other_steps].batch_size == 1 and records[other_steps].progress_total == 21
    assert records[two_samples].batch_size == 1 and records[two_samples].seeds == [5, 6]
    assert jobs.records.unfinished() == 0


def test_batching_off_runs_every_job_alone(jobs, inpainter):
    ids = [submit(jobs, seed=s) for s in (1, 2)]
    model = Hooked(inpainter)
    outcomes = run_jobs(ids, jobs, model, max_images=1)
    assert model.calls == [1, 1] and all(o.record.batch_size == 1 for o in outcomes.values())


def test_cancelling_one_job_of_a_batch_leaves_the_others_running(jobs, inpainter):
    ids = [submit(jobs, seed=s) for s in (1, 2, 3)]
    victim = ids[1]
    model = Hooked(inpainter, at_step=lambda step: step == 2 and jobs.lifecycle.cancel(jobs.records.get(victim)))
    outcomes = run_jobs(ids, jobs, model, max_images=4)
    assert model.calls == [3] and model.steps == 20  # the call went on for the others
    cancelled = outcomes[victim].record
    assert cancelled.status == JobStatus.FAILED and cancelled.failure == Failure.CANCELLED
    assert cancelled.images == [] and cancelled.gpu_seconds > 0  # what it used before the cancel is counted
    assert jobs.inputs.get(cancelled.inputs_at) is None and cancelled.inputs_key
    for job_id in (ids[0], ids[2]):
        assert outcomes[job_id].record.status == JobStatus.COMPLETED and outcomes[job_id].record.batch_size == 3


def test_when_every_job_of_a_batch_is_cancelled_the_call_stops(jobs, inpainter):
    ids = [submit(jobs, seed=s) for s in (1, 2)]

    def cancel_all(step):
        if step == 2:
            for job_id in ids:
                jobs.lifecycle.cancel(jobs.records.get(job_id))

    model = Hooked(inpainter, at_step=cancel_all)
    outcomes = run_jobs(ids, jobs, model, max_images=4)
    assert model.steps == 2
    assert all(o.record.failure == Failure.CANCELLED for o in outcomes.values())


def test_a_failing_batch_runs_its_jobs_one_by_one(jobs, inpainter):
    ids = [submit(jobs, seed=s) for s in (1, 2)]
    model = Hooked(inpainter, fail_batches=True)
    outcomes = run_jobs(ids, jobs, model, max_images=4)
    assert model.calls == [2, 1, 1]
    assert all(o.record.status == JobStatus.COMPLETED and o.record.batch_size == 1 for o in outcomes.values())


def test_a_mask_prompt_that_finds_nothing_fails_its_own_job_only(jobs, inpainter):
    found = submit(jobs, seed=1, mask_prompt="the chair")
    nothing = submit(jobs, seed=2, mask_prompt="a unicorn", mask_threshold=0.95)
    drawn = submit(jobs, seed=3)
    preview = submit(jobs, seed=4, mask_only=True, mask_prompt="the chair")
    model = Hooked(inpainter)
    outcomes = run_jobs([found, nothing, drawn, preview], jobs, model, max_images=4)
    assert model.calls == [3, 2, 1]  # the batch stopped at the empty mask and ran again without it
    failed = outcomes[nothing].record
    assert failed.status == JobStatus.FAILED and failed.failure == Failure.MASK_NOT_FOUND
    assert "'a unicorn' found nothing" in failed.error and failed.mask_time > 0
    assert outcomes[found].record.batch_size == outcomes[drawn].record.batch_size == 2
    for job_id in (found, drawn, preview):
        assert outcomes[job_id].record.status == JobStatus.COMPLETED, outcomes[job_id].record.error
    assert outcomes[found].record.mask_time > 0 and outcomes[drawn].record.mask_time is None
    assert outcomes[preview].record.inference_time == 0 and outcomes[preview].record.mask_time > 0


def test_unreadable_inputs_fail_that_job_only(jobs, inpainter):
    ids = [submit(jobs, seed=s) for s in (1, 2)]
    jobs.inputs.put(jobs.records.get(ids[0]).inputs_at, b"not an image", b"not an image")
    outcomes = run_jobs(ids, jobs, Hooked(inpainter), max_images=4)
    assert outcomes[ids[0]].record.failure == Failure.INTERNAL
    assert "cannot be read" in outcomes[ids[0]].record.error
    assert outcomes[ids[1]].record.status == JobStatus.COMPLETED


def test_reproducibility_alone_and_in_a_batch(jobs, inpainter):
    """Same seed, same request, one after the other: the same bytes, batching on or off (a job that runs alone
    takes the unbatched path). In a batch: the same seed, the same picture within float rounding of batched
    kernels (measured max 1/255 on this model; the bound here is loose on purpose)."""
    alone = [submit(jobs, seed=9, prompt="a lamp") for _ in range(2)]
    run_jobs(alone[:1], jobs, inpainter, max_images=1)
    run_jobs(alone[1:], jobs, inpainter, max_images=4)
    assert np.array_equal(pixels(jobs, alone[0]), pixels(jobs, alone[1]))
    batched = [submit(jobs, seed=9, prompt="a lamp"), submit(jobs, seed=10, prompt="a sofa")]
    run_jobs(batched, jobs, Hooked(inpainter), max_images=4)
    assert jobs.records.get(batched[0]).batch_size == 2 and jobs.records.get(batched[0]).seeds == [9]
    assert np.abs(pixels(jobs, batched[0]) - pixels(jobs, alone[0])).max() <= 8


def test_over_http_queued_jobs_batch_and_every_request_is_priced(tmp_path, tiny_model_dir, inpainter):
    """The worker is held on a first job while four more queue; released, it runs the four in one call.
    Each result shows its share of GPU time and its price; /usage adds them up per key per day."""
    gate = threading.Event()
    model = Hooked(inpainter, on_batch=None)
    first_call = threading.Event()

    def hold_first(step):
        if not first_call.is_set():
            first_call.set()
            gate.wait(60)

    model.at_step = hold_first
    settings = make_settings(tmp_path, tiny_model_dir, batch_max_images=4, batch_wait_ms=50, gpu_type="L4",
                             rate_limit_per_second=0)
    with api_server(settings, lambda: model) as srv, \
            httpx.Client(base_url=srv.url, headers={"x-api-key": KEY_A}, timeout=120) as client:
        first = client.post(f"/v2/{SLUG}", json={**BODY, "seed": 100}).json()["request_id"]
        assert first_call.wait(60)
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda s: client.post(f"/v2/{SLUG}", json={**BODY, "seed": s}).json()["request_id"],
                                range(4)))
        assert client.get("/health").json()["queue_depth"] == 5
        gate.set()
        bodies = [wait_terminal(client, job_id) for job_id in [first, *ids]]
        assert [b["status"] for b in bodies] == ["COMPLETED"] * 5
        assert model.calls == [1, 4]
        assert [b["metrics"]["batch_size"] for b in bodies] == [1, 4, 4, 4, 4]
        for body in bodies:  # both figures are rounded (4 and 8 decimals)
            assert body["metrics"]["cost_usd"] == pytest.approx(body["metrics"]["gpu_seconds"] * 0.000222, rel=1e-3)
        assert bodies[0]["metrics"]["cold_start_time"] is not None and bodies[1]["metrics"]["cold_start_time"] is None

        sync = client.post(f"/v1/{SLUG}", json={**BODY, "seed": 7})
        assert sync.status_code == 200
        assert float(sync.headers["x-cost-usd"]) == pytest.approx(float(sync.headers["x-gpu-seconds"]) * 0.000222,
                                                                 rel=1e-3)
        today = client.get("/usage", params={"days": 2}).json()["days"][0]
        assert today["jobs"] == 6 and today["images"] == 6
        assert today["gpu_seconds"] == pytest.approx(
            sum(b["metrics"]["gpu_seconds"] for b in bodies) + float(sync.headers["x-gpu-seconds"]), abs=1e-3)
        other = httpx.get(f"{srv.url}/usage", headers={"x-api-key": KEY_B}).json()["days"][0]
        assert other["jobs"] == 0 and other["cost_usd"] == 0
        refused = client.get("/usage", params={"days": 0})
        assert refused.status_code == 400 and "days" in refused.json()["error"]


def test_a_job_waiting_for_an_earlier_group_stays_queued_until_its_group_runs(jobs, inpainter):
    first, later = submit(jobs, seed=1), submit(jobs, seed=2, num_inference_steps=21)
    seen = []
    model = Hooked(inpainter, at_step=lambda step: step == 1 and seen.append(jobs.records.get(later).status))
    run_jobs([first, later], jobs, model, max_images=4)
    assert seen == [JobStatus.QUEUED, JobStatus.PROCESSING]  # seen at step 1 of each call


def test_a_job_queued_twice_in_one_round_runs_once(jobs, inpainter):
    """Restart recovery can queue a job that a submit queued too: in one round both copies would start (the
    second as attempt 2) and share the call."""
    first, other = submit(jobs, seed=1), submit(jobs, seed=2)
    model = Hooked(inpainter)
    outcomes = run_jobs([first, other, first], jobs, model, max_images=4)
    assert model.calls == [2]
    assert set(outcomes) == {first, other}
    assert [jobs.records.get(job_id).attempts for job_id in (first, other)] == [1, 1]


def test_a_queued_job_waiting_behind_an_earlier_group_is_not_reaped_as_lost(tmp_path, tiny_model_dir, inpainter):
    """The lease reaper runs while the first group holds the worker past the lease: the job taken into the same
    round but still waiting for its own group must not read as abandoned."""
    from service.jobs.housekeeping import reap_stale

    gate, reaped = threading.Event(), []
    backend = build_embedded(make_settings(tmp_path, tiny_model_dir, batch_max_images=4, batch_wait_ms=200,
                                           lease_seconds=60), lambda: model)
    jobs = backend.jobs

    def hold(step):
        if step == 1 and not gate.is_set():
            reaped.append(reap_stale(jobs, lease=60, now=time.time() + 3600))  # an hour later, for the reaper
            gate.set()

    model = Hooked(inpainter, at_step=hold)
    first, later = submit(jobs, seed=1), submit(jobs, seed=2, num_inference_steps=21)
    dispatcher = jobs.dispatcher
    dispatcher.start()
    dispatcher.queue.close()  # after the two jobs: the worker thread ends once it has run them
    dispatcher._thread.join(120)
    # An hour later the running job looks silent (its heartbeat is old) and is handed out again; the job
    # waiting for its own group is left alone, and runs once.
    assert reaped == [1]
    assert jobs.records.get(later).status == JobStatus.COMPLETED and jobs.records.get(later).attempts == 1


def test_a_failing_progress_write_neither_stops_nor_reruns_a_batch(jobs, inpainter, monkeypatch):
    def broken(*args):
        raise RuntimeError("store hiccup")

    monkeypatch.setattr(jobs.lifecycle, "progress", broken)
    ids = [submit(jobs, seed=s, num_inference_steps=60) for s in (1, 2)]
    model = Hooked(inpainter)
    outcomes = run_jobs(ids, jobs, model, max_images=4)
    assert model.calls == [2] and all(o.record.status == JobStatus.COMPLETED for o in outcomes.values())


def test_an_error_around_one_group_does_not_strand_the_later_groups(jobs, inpainter, monkeypatch):
    first, later = submit(jobs, seed=1), submit(jobs, seed=2, num_inference_steps=21)
    real_start = jobs.lifecycle.start

    def start(job_id):
        if job_id == first:
            raise RuntimeError("a networked store's error")
        return real_start(job_id)

    monkeypatch.setattr(jobs.lifecycle, "start", start)
    outcomes = run_jobs([first, later], jobs, Hooked(inpainter), max_images=4)
    assert outcomes[later].record.status == JobStatus.COMPLETED
    assert jobs.records.get(first).status == JobStatus.QUEUED  # left for the lease reaper, not lost
