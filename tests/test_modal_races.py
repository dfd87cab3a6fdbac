"""The Modal backend between containers: forced interleavings over a stand-in Dict, Modal's own exception
classes, and how many Dict calls each request costs. Every race must end with exactly one terminal state,
one webhook and one refund."""

import asyncio
import math
import threading
import time
import uuid
from concurrent.futures import wait

import httpx
import modal.exception
import pytest

from schemas import InpaintParams, JobStatus
from service.http.app import create_app
from service.jobs.identity import key_owner
from service.backend import build_modal
from service.jobs.failures import Failure
from service.jobs.housekeeping import reap_stale
from service.jobs.errors import WorkerFailed
from service.jobs.records import JobRecord
from service.jobs.limits import remaining_credits
from service.stores.modal_dispatch import outcome_to_wire
from service.jobs.worker import run_job
from tests.images import box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, ApiServer, free_port, make_settings
from tests.standins import StandInSpawner, StandInVolume, standin_dicts
from tests.test_service import BODY, SLUG, sdk, wait_terminal

BUDGET = 10


class Deployment:
    """The Modal backend over stand-in Dicts: a web tier's JobService and GPU 'containers' (threads) running
    run_job on the real tiny model, each building its own JobService over the same Dicts like a container."""

    def __init__(self, tmp_path, model_dir, inpainter, containers=1, spawn_error=None):
        self.settings = make_settings(tmp_path, model_dir, key_credits={KEY_A: BUDGET})
        self.dicts = standin_dicts()
        self.files = StandInVolume()  # inputs and results, as on Modal by default
        self.webhooks: list[str] = []
        self.runs: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.inpainter = inpainter
        self.spawn_error = spawn_error
        self.spawner = StandInSpawner(self._gpu_run, containers)
        self.web = self._backend(spawn=self._spawn).jobs

    def _backend(self, spawn=None):
        return build_modal(self.settings, self.dicts, spawn=spawn, call_from_id=self.spawner.from_id, gpu="L4",
                           on_terminal=lambda record: self.webhooks.append(record.id), files_volume=self.files)

    def _spawn(self, job_id):
        if self.spawn_error is not None:
            raise self.spawn_error
        return self.spawner.spawn(job_id)

    def _gpu_run(self, job_id):
        assert self.gate.wait(30)
        container = self._backend()  # a GPU container has its own JobService over the shared Dicts
        outcome = run_job(job_id, container.jobs, self, timeout=60)
        return outcome_to_wire(outcome)

    def run(self, params, image, mask, on_step=None):  # the model, counting runs
        self.runs.append(params.prompt)
        return self.inpainter.run(params, image, mask, on_step=on_step)

    def submit(self, prompt="a chair"):
        owner = key_owner(KEY_A)
        record, _ = self.web.admission.admit(owner, InpaintParams(prompt=prompt, seed=3), png_bytes(gradient_image()),
                                   png_bytes(box_mask()), "http://test")
        return record.id

    def credits_left(self):
        return remaining_credits(self.web.counters, key_owner(KEY_A), BUDGET)

    def wait_end(self, job_id):
        """The job's final record, once the GPU calls that ended it have returned (what follows a job's end,
        such as its webhook, runs in the call after the record is final)."""
        deadline = time.monotonic() + 120
        while (record := self.web.records.get(job_id)) is not None and not record.status.terminal:
            assert time.monotonic() < deadline, f"{job_id} never ended"
            time.sleep(0.02)
        for job, call in zip(self.spawner.spawned, self.spawner.calls.values()):
            if job == job_id:
                wait([call.future], timeout=max(0.0, deadline - time.monotonic()))
        return record

    def close(self):
        self.gate.set()
        self.spawner.pool.shutdown(wait=True)


@pytest.fixture
def deployment(tmp_path, tiny_model_dir, inpainter):
    made = []

    def make(**kwargs):
        made.append(Deployment(tmp_path, tiny_model_dir, inpainter, **kwargs))
        return made[-1]

    yield make
    for d in made:
        d.close()


def test_cancel_racing_the_start_of_the_job(deployment):
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    # The GPU worker reads the record (QUEUED), claims its attempt, and stops right before writing PROCESSING.
    reached, release = d.dicts["records"].pause_before("put", f"job:{job_id}")
    d.gate.set()
    assert reached.wait(30)
    cancelled = d.web.lifecycle.cancel(d.web.records.get(job_id))  # the web tier sees QUEUED and ends the job
    release.set()
    record = d.wait_end(job_id)
    d.spawner.pool.shutdown(wait=True)
    assert cancelled.status == "CANCELLED"
    assert record.status == JobStatus.FAILED and record.failure == Failure.CANCELLED
    assert d.web.records.get(job_id).status == JobStatus.FAILED  # never moved back to PROCESSING
    assert d.webhooks == [job_id] and d.credits_left() == BUDGET and d.runs == []


def test_two_sweeps_at_once_fail_a_silent_job_once(deployment):
    d = deployment()
    job_ids = [d.submit() for _ in range(2)]
    for job_id in job_ids:
        d.wait_end(job_id)
    # A job silent after its second attempt, whose call is gone: both sweeps decide to fail it.
    now = time.time()
    job = d.web.records
    job.create(JobRecord(id="silent", owner=key_owner(KEY_A), params={"samples": 1}, created_at=now - 900,
                         expires_at=now + 900))
    d.web.counters.modify(f"credits:{key_owner(KEY_A)}", lambda doc: ({"used": doc["used"] + 1}, None))
    job.update("silent", status=JobStatus.PROCESSING, attempts=2, heartbeat_at=now - 600)
    d.web.dispatcher.records.dict.put("call:silent", {"id": "fc-gone", "at": now - 600})
    d.spawner.calls["fc-gone"] = d.spawner.calls[next(iter(d.spawner.calls))]  # a finished call
    sweeps = [d._backend(spawn=d._spawn).jobs for _ in range(2)]
    barrier = threading.Barrier(2)

    def sweep(jobs):
        barrier.wait()
        reap_stale(jobs, lease=120)

    threads = [threading.Thread(target=sweep, args=(jobs,)) for jobs in sweeps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    record = job.get("silent")
    assert record.status == JobStatus.FAILED and record.failure == Failure.WORKER_LOST
    assert d.webhooks.count("silent") == 1
    assert d.credits_left() == BUDGET - 2  # the two completed jobs stay charged; "silent" refunded once


def test_two_sweeps_redispatching_run_the_job_once(deployment):
    d = deployment(containers=2)
    d.gate.clear()
    job_id = d.submit()
    now = time.time()
    # Its first call died mid-run (attempt 1 claimed, PROCESSING, silent); the call is gone.
    d.web.records.claim(f"attempt1:{job_id}")
    d.web.records.update(job_id, status=JobStatus.PROCESSING, attempts=1, heartbeat_at=now - 600)
    first_call = d.dicts["records"].get(f"call:{job_id}")["id"]
    d.spawner.calls[first_call].future.cancel()
    d.dicts["records"].put(f"call:{job_id}", {"id": first_call, "at": now - 600})
    d.spawner.calls[first_call].future = _failed_future(modal.exception.FunctionTimeoutError("killed"))
    sweeps = [d._backend(spawn=d._spawn).jobs for _ in range(2)]
    for jobs in sweeps:
        reap_stale(jobs, lease=120)
    d.gate.set()
    record = d.wait_end(job_id)
    d.spawner.pool.shutdown(wait=True)
    assert record.status == JobStatus.COMPLETED and record.attempts == 2
    assert len(d.runs) == 1  # both sweeps spawned it, the attempt claim let one copy run
    assert d.webhooks == [job_id] and d.credits_left() == BUDGET - 1


def _failed_future(exc):
    from concurrent.futures import Future

    future = Future()
    future.set_exception(exc)
    return future


def test_sweep_leaves_a_slow_worker_alone(deployment):
    d = deployment()
    d.gate.clear()  # the GPU call is pending (queued behind max_containers, or slow to start)
    job_id = d.submit()
    d.web.records.update(job_id, heartbeat_at=time.time() - 600)
    assert reap_stale(d._backend(spawn=d._spawn).jobs, lease=120) == 0
    assert d.spawner.spawned == [job_id]  # not spawned twice
    d.gate.set()
    assert d.wait_end(job_id).status == JobStatus.COMPLETED
    assert d.webhooks == [job_id] and len(d.runs) == 1


def test_spawn_failure_answers_503_and_ends_the_job(deployment):
    d = deployment(spawn_error=modal.exception.ConnectionError("modal is down"))
    from service.http.errors import job_error_status
    from service.jobs.errors import NoWorker

    with pytest.raises(NoWorker) as refused:
        d.submit()
    assert job_error_status(refused.value) == (503, {"Retry-After": "5"})
    assert "nothing was charged" in refused.value.message
    failed = [d.web.records.get(job_id) for job_id in d.webhooks]
    assert len(failed) == 1 and failed[0].failure == Failure.UNAVAILABLE
    assert d.credits_left() == BUDGET and d.web.records.unfinished() == 0


def test_enter_failure_fails_queued_jobs_with_the_reason(deployment):
    d = deployment()
    d.spawner.method = lambda job_id: (_ for _ in ()).throw(RuntimeError("no weights in the Modal Volume"))
    job_id = d.submit()
    d.spawner.pool.shutdown(wait=True)  # the call has failed
    later = time.time() + d.settings.lease_seconds + 1
    assert reap_stale(d.web, lease=d.settings.lease_seconds, now=later) == 1
    record = d.web.records.get(job_id)
    assert record.status == JobStatus.FAILED and record.failure == Failure.UNAVAILABLE
    assert "no weights" in record.error
    assert d.webhooks == [job_id] and d.credits_left() == BUDGET


@pytest.mark.parametrize("error", [modal.exception.OutputExpiredError(), modal.exception.FunctionTimeoutError("t"),
                                   modal.exception.InputCancellation(), RuntimeError("enter failed"),
                                   modal.exception.RemoteError("terminated"),
                                   modal.exception.NotFoundError("no such call")])  # Modal's refusal, not a lost link
def test_a_dead_call_is_not_answered_as_still_running(deployment, error):
    d = deployment()
    d.spawner.method = lambda job_id: (_ for _ in ()).throw(error)
    job_id = d.submit()
    with pytest.raises(WorkerFailed):
        asyncio.run(d.web.dispatcher.wait(job_id, 30))
    outcome = asyncio.run(d.web.waiting.wait_until_done(job_id, 30))
    assert outcome.record.status == JobStatus.FAILED and outcome.record.failure == Failure.UNAVAILABLE
    assert type(error).__name__ in outcome.record.error


def test_pending_call_is_still_running(deployment):
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    assert asyncio.run(d.web.dispatcher.wait(job_id, 0.2)) is None  # builtin TimeoutError: pending
    d.gate.set()


def test_modal_cancellation_in_the_container_ends_the_job_cancelled(deployment):
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    container = d._backend().jobs

    class CancelledMidRun:
        def run(self, *args, **kwargs):
            d.web.records.request_cancel(job_id)  # the web tier's cancel, then FunctionCall.cancel():
            raise modal.exception.InputCancellation("cancelled")

    with pytest.raises(modal.exception.InputCancellation):  # a BaseException: `except Exception` would miss it
        run_job(job_id, container, CancelledMidRun())
    record = d.web.records.get(job_id)
    assert record.status == JobStatus.FAILED and record.failure == Failure.CANCELLED
    assert d.webhooks == [job_id] and d.credits_left() == BUDGET


# ---- the Modal web tier over real HTTP, with Dict calls counted -------------------------------

@pytest.fixture
def modal_server(deployment):
    d = deployment()
    server = ApiServer(create_app(d._backend(spawn=d._spawn)), free_port()).start()
    yield server, d
    server.stop()


def dict_calls(d) -> int:
    return sum(x.calls for x in d.dicts.values())


def test_modal_backends_serve_the_sdk_flows(modal_server):
    server, d = modal_server
    client = sdk(server)
    response = client.run_sync(SLUG, **BODY)
    assert response.headers["content-type"] == "image/jpeg" and response.headers["x-seed-value"] == "42"
    result = client.submit_async(SLUG, **{**BODY, "samples": 2}).wait(timeout=60, interval=0.05)
    assert result["status"] == "COMPLETED" and len(result["output"]) == 2
    assert httpx.get(result["output"][1]).status_code == 200
    assert d.dicts["records"].get(f"call:{result['request_id']}")["id"].startswith("fc-standin-")
    assert httpx.get(f"{server.url}/health").json()["device"] == "modal:L4"


@pytest.mark.parametrize("active", [10, 1_000, 10_000])
def test_store_cost_per_request_does_not_grow_with_the_queue(deployment, active):
    """What a submit, a status poll (and each round of a long-poll) and /health cost on the Dicts, counted as the
    real modal.Dict costs (round trips, plus every entry a stream sends or len() counts), with 10, 1,000 and
    10,000 jobs waiting. The queue depth is re-read at most once a second per container, so /health and the
    queue cap cost nothing in between."""
    d = deployment()
    d.gate.clear()  # nothing runs: every job stays QUEUED
    d.settings.max_queue_depth = 0
    for _ in range(active):
        d.web.records.create(JobRecord(id=str(uuid.uuid4()), owner="o", params={"prompt": "p"},
                                       created_at=time.time(), expires_at=time.time() + 60))
    d.web.records.depth.max_age = 3600.0  # measure what happens between two reads of the depth
    assert d.web.records.unfinished() == active  # one read, counted by the server

    def cost(action):
        before = dict_cost(d)
        result = action()
        return dict_cost(d) - before, result

    submit, job_id = cost(d.submit)
    record = d.web.records.get(job_id)
    status, body = cost(lambda: d.web.waiting.status(record))
    poll, _ = cost(lambda: d.web.waiting._view(job_id))
    health, depth = cost(d.web.records.unfinished)
    assert body.queue_position == active and depth == active + 1
    assert (submit, status, poll, health) == (7, 1, 3, 0), (f"{active} active: Dict cost of a submit {submit}, a "
                                                            f"QUEUED status {status}, one long-poll round {poll}, "
                                                            f"/health {health}")


def dict_cost(d) -> int:
    return sum(x.cost() for x in d.dicts.values())


def test_modal_status_monotonic_and_cancel(modal_server):
    server, _ = modal_server
    with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
        ids = [client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"] for _ in range(3)]
        cancel = client.post(f"/v2/requests/{ids[2]}/cancel").json()
        assert cancel["status"] in ("CANCELLED", "CANCELLING")
        order = {"QUEUED": 0, "PROCESSING": 1, "COMPLETED": 2, "FAILED": 2}
        for request_id in ids:
            seen = []
            while not seen or seen[-1] not in ("COMPLETED", "FAILED"):
                seen.append(client.get(f"/v2/requests/{request_id}/status", params={"wait": 5}).json()["status"])
            ranks = [order[s] for s in seen]
            assert ranks == sorted(ranks)
        assert wait_terminal(client, ids[0])["status"] == wait_terminal(client, ids[1])["status"] == "COMPLETED"
        assert wait_terminal(client, ids[2])["error"] == "cancelled"


def test_cancel_flag_is_read_at_most_every_half_second(deployment):
    """Each denoising step used to read the cancel flag from the Dict: a network call per step on Modal."""
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    reads = []
    records = d.dicts["records"]
    original_get = records.get

    def counting_get(key, default=None):
        if isinstance(key, str) and key.startswith("cancel:"):
            reads.append(time.monotonic())
        return original_get(key, default)

    records.get = counting_get
    started = time.monotonic()
    d.gate.set()
    assert d.wait_end(job_id).status == JobStatus.COMPLETED
    elapsed = time.monotonic() - started
    assert len(reads) <= 2 + elapsed / 0.5  # one before the start, then at most one per 0.5 s of running


def test_sweep_keeps_credit_counters_alive(deployment):
    from service.jobs.housekeeping import keep_counters_alive

    d = deployment()
    d.submit()
    counters = d.dicts["counters"]
    before = counters.calls
    keep_counters_alive(d.web.counters, [key_owner(KEY_A), key_owner("another")])
    assert counters.calls - before == 5  # credits and usage per key, and the totals: a read counts as activity
    assert d.credits_left() == BUDGET - 1  # and changes nothing


def test_an_attempt_claimed_by_a_worker_that_died_before_recording_it_ends_bounded(deployment):
    """The claim `attempt1` exists but the record never got attempts=1 (the container died between the two
    Dict calls): every later copy finds the attempt taken. The sweep must not re-dispatch it forever."""
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    d.dicts["records"].get(f"call:{job_id}")
    d.web.records.claim(f"attempt1:{job_id}")
    d.web.records.update(job_id, status=JobStatus.PROCESSING, heartbeat_at=time.time() - 600)
    d.gate.set()
    for sweep in range(4):
        for call in list(d.spawner.calls.values()):
            try:
                call.future.result(30)  # each copy finds the attempt taken and returns
            except Exception:
                pass
        if d.web.records.get(job_id).status.terminal:
            break
        later = time.time() + 10_000 * (sweep + 1)
        reap_stale(d._backend(spawn=d._spawn).jobs, lease=120, now=later)
    record = d.web.records.get(job_id)
    assert record.status == JobStatus.FAILED and record.failure == Failure.WORKER_LOST
    assert d.webhooks == [job_id] and d.credits_left() == BUDGET and len(d.spawner.spawned) <= 3


def test_a_store_error_at_submit_gives_the_charges_back(deployment):
    from service.jobs.errors import StoreUnavailable

    d = deployment()

    def refuse(key, value, **kwargs):
        raise modal.exception.RequestSizeError("too large")

    d.dicts["records"].put = refuse
    with pytest.raises(StoreUnavailable):
        d.submit()
    assert d.credits_left() == BUDGET and d.web.records.unfinished() == 0


# ---- this client failing to reach Modal is not the call failing -----------------------------------------------

TRANSPORT_ERRORS = [modal.exception.ConnectionError("connection reset"), modal.exception.ClientClosed(),
                    modal.exception.ServiceError("unavailable"),
                    __import__("grpclib.exceptions").exceptions.StreamTerminatedError("stream reset")]


class FlakyGet:
    """FunctionCall.get whose first `failures` calls fail the way a lost connection to Modal does."""

    def __init__(self, get, error, failures):
        self.get, self.error, self.failures = get, error, failures

    def __call__(self, timeout=None):
        if self.failures:
            self.failures -= 1
            raise self.error
        return self.get(timeout)

    async def aio(self, timeout=None):
        return await asyncio.to_thread(self, timeout)


def flaky_call(d, job_id, error, failures):
    call = d.spawner.calls[d.dicts["records"].get(f"call:{job_id}")["id"]]
    call.get = FlakyGet(call.get, error, failures)
    return call


@pytest.mark.parametrize("error", TRANSPORT_ERRORS, ids=lambda e: type(e).__name__)
def test_v1_wait_rides_out_a_transport_error(deployment, error):
    d = deployment()
    job_id = d.submit()
    flaky_call(d, job_id, error, failures=1)
    outcome = asyncio.run(d.web.waiting.wait_until_done(job_id, 60))
    assert outcome.record.status == JobStatus.COMPLETED and outcome.files  # the image, from the call itself
    assert d.webhooks == [job_id] and d.credits_left() == BUDGET - 1


@pytest.mark.parametrize("error", TRANSPORT_ERRORS, ids=lambda e: type(e).__name__)
def test_modal_unreachable_for_the_whole_wait_fails_nothing(deployment, error):
    d = deployment()
    d.gate.clear()  # the job is running (or queued) on Modal's side all along
    job_id = d.submit()
    flaky_call(d, job_id, error, failures=10_000)
    assert asyncio.run(d.web.waiting.wait_until_done(job_id, 2.5)) is None  # v1 answers 504: still running
    assert reap_stale(d._backend(spawn=d._spawn).jobs, lease=120, now=time.time() + 600) == 0
    assert d.web.records.get(job_id).status == JobStatus.QUEUED and d.credits_left() == BUDGET - 1
    d.gate.set()
    assert d.wait_end(job_id).status == JobStatus.COMPLETED and d.webhooks == [job_id]


def test_a_running_job_silent_past_any_timeout_is_taken_even_when_modal_cannot_say(deployment):
    """The sweep cannot learn how the call stands (transport errors), but the job has been silent for longer
    than a job may run: its worker is gone, whatever the call would say."""
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    silent_since = time.time() - d.settings.job_timeout_seconds - d.settings.lease_seconds - 60
    d.web.records.update(job_id, status=JobStatus.PROCESSING, attempts=2, created_at=silent_since,
                         started_at=silent_since, heartbeat_at=silent_since)
    d.dicts["records"].put(f"call:{job_id}", {"id": d.dicts["records"].get(f"call:{job_id}")["id"],
                                              "at": silent_since})
    flaky_call(d, job_id, modal.exception.ConnectionError("reset"), failures=10_000)
    assert reap_stale(d._backend(spawn=d._spawn).jobs, lease=120) == 1
    record = d.web.records.get(job_id)
    assert record.status == JobStatus.FAILED and record.failure == Failure.WORKER_LOST
    assert d.credits_left() == BUDGET
    d.gate.set()


def test_a_long_poll_reads_the_store_at_most_twice_a_second(deployment):
    """On Modal a long-poll cannot be woken by the worker: it looks again every 0.5 s, one round (3 Dict calls:
    the finished record, the live one, the queue's head) each time, however many jobs there are."""
    from service.jobs.waiting import STORE_POLL_INTERVAL

    d = deployment()
    d.gate.clear()
    record = d.web.records.get(d.submit())
    d.web.records.depth.max_age = 3600.0  # the depth (which caps a position) is re-read once a second per
    d.web.records.unfinished()  # container, shared by every request: measured apart in the cost test
    before = dict_cost(d)
    started = time.monotonic()
    assert asyncio.run(d.web.waiting.wait_for_change(record, 1.6)).status == JobStatus.QUEUED  # nothing changed
    rounds = 1 + math.ceil((time.monotonic() - started) / STORE_POLL_INTERVAL)
    assert STORE_POLL_INTERVAL == 0.5 and dict_cost(d) - before <= 3 * rounds
    d.gate.set()


def test_blocking_store_calls_get_a_thread_per_concurrent_request(deployment):
    """On Modal every store call is a network round trip run off the event loop: the web container's thread
    pool is sized to the requests it takes at once (BLOCKING_THREADS), not Python's default of at most 32."""
    d = deployment()
    d.settings.blocking_threads = 48
    threads = set()
    records = d.dicts["records"]
    original_get = records.get

    def recording_get(key, default=None):
        threads.add(threading.current_thread().name)
        return original_get(key, default)

    records.get = recording_get
    server = ApiServer(create_app(d._backend(spawn=d._spawn)), free_port()).start()
    try:
        with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as client:
            request_id = client.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
            assert client.get(f"/v2/requests/{request_id}/status").status_code in (200, 422)
    finally:
        server.stop()
    assert threads and all(name.startswith("store_") for name in threads if "ThreadPool" not in name)


def test_a_pending_call_is_left_alone_however_long_the_job_is_silent(deployment):
    """A preempted job waiting behind max_containers for its retry: Modal says the call is pending, so the
    sweep leaves it, silent or not (the call's own timeout bounds it)."""
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    long_ago = time.time() - d.settings.job_timeout_seconds - d.settings.lease_seconds - 600
    d.web.records.update(job_id, status=JobStatus.PROCESSING, attempts=1, created_at=long_ago, started_at=long_ago,
                         heartbeat_at=long_ago)
    d.dicts["records"].put(f"call:{job_id}", {"id": d.dicts["records"].get(f"call:{job_id}")["id"], "at": long_ago})
    assert reap_stale(d._backend(spawn=d._spawn).jobs, lease=120) == 0
    assert d.spawner.spawned == [job_id] and d.web.records.get(job_id).status == JobStatus.PROCESSING
    d.gate.set()


def test_a_job_whose_tidying_was_cut_off_is_tidied_by_the_sweep(deployment):
    """The end of a job is the once-only `final:` write; the index entries after it can fail (or the container
    die between them). The job must not stay counted as unfinished, nor escape the expiry sweep."""
    d = deployment()
    d.gate.clear()
    job_id = d.submit()
    expiry_put = d.dicts["expiry"].put
    d.dicts["expiry"].put = lambda *args, **kwargs: (_ for _ in ()).throw(modal.exception.ConnectionError("reset"))
    d.dicts["active"].pop = lambda *args, **kwargs: (_ for _ in ()).throw(modal.exception.ConnectionError("reset"))
    assert d.web.lifecycle.cancel(d.web.records.get(job_id)).status == "CANCELLED"
    del d.dicts["active"].pop  # the stand-in's own methods again
    d.dicts["expiry"].put = expiry_put
    assert job_id in d.web.records.unfinished_ids(JobStatus.QUEUED)  # still listed
    reap_stale(d._backend(spawn=d._spawn).jobs, lease=120)
    assert d.web.records.unfinished_ids(JobStatus.QUEUED) == []
    later = time.time() + d.settings.result_ttl_seconds + 1
    assert [job.id for job in d.web.records.expired(later)] == [job_id]
    d.gate.set()


def test_the_queue_position_never_counts_more_jobs_than_are_waiting(deployment):
    """Tickets of jobs that ended without starting stay behind the head until the queue moves; the position is
    capped by the jobs actually unfinished."""
    d = deployment()
    d.gate.clear()
    d.web.records.depth.max_age = 0.0  # read the depth afresh for each position
    for _ in range(5):
        job_id = d.submit()
        d.web.lifecycle.cancel(d.web.records.get(job_id))
    last = d.web.records.get(d.submit())
    assert d.web.waiting.status(last).queue_position == 0  # the only job waiting
    d.gate.set()
