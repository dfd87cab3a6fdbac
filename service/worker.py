"""Running jobs: the step every backend shares (`run_job`) and the embedded in-process dispatcher.

`run_job` takes any object with Inpainter's `run(params, image, mask, on_step)`
method, so this module never imports torch: the embedded server passes an
`inference.Inpainter`, the Modal GPU class passes its own.
"""

import io
import logging
import queue
import secrets
import threading
import time
from typing import Any, Callable

from PIL import Image

from schemas import InpaintParams, JobStatus
from service.failures import Failure
from service.job_service import JobOutcome, JobService
from service.jobs import StoredImage
from service.ports import StoreUnavailable
from service.storage import StorageError

log = logging.getLogger(__name__)

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PROGRESS_WRITE_INTERVAL = 0.2  # seconds between progress writes to the job store
STORE_RETRY_SECONDS = 1.0  # when the store cannot be written (disk full), wait this long before retrying a job


class Cancelled(Exception):
    """The job's owner cancelled it."""


class TimedOut(Exception):
    """The job ran past its execution timeout."""


def encode_image(image: Image.Image, output_format: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if output_format == "jpeg":
        image.save(buf, format="JPEG", quality=92)
    elif output_format == "webp":
        image.save(buf, format="WEBP", quality=92)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue(), CONTENT_TYPES[output_format]


def run_job(job_id: str, jobs: JobService, inpainter: Any, timeout: float = 600.0) -> JobOutcome | None:
    """Run one job to COMPLETED or FAILED (FAILED "timed out" past `timeout` seconds of running).
    Returns None when there was nothing to run here (unknown, finished, or running elsewhere)."""
    record = jobs.start(job_id)
    if record is None:
        return None
    inputs = jobs.input_images(job_id)
    if inputs is None:
        return JobOutcome(jobs.fail(job_id, Failure.INTERNAL, "job inputs are missing") or record)

    run_started = time.monotonic()
    last_write = 0.0
    should_stop = jobs.cancel_check(job_id)

    def on_step(step: int, total: int) -> None:
        nonlocal last_write
        if should_stop():
            raise Cancelled()
        now = time.monotonic()
        if now - run_started > timeout:
            raise TimedOut()
        if now - last_write >= PROGRESS_WRITE_INTERVAL or step == total:
            last_write = now
            jobs.progress(job_id, step, total)

    def fail(failure: Failure, message: str) -> JobOutcome:
        return JobOutcome(jobs.fail(job_id, failure, message) or jobs.records.get(job_id) or record)

    try:
        params = InpaintParams.model_validate(record.params, strict=False)
        output = inpainter.run(params, inputs[0], inputs[1], on_step=on_step)
        if output.any_blocked:
            return fail(Failure.BLOCKED, f"content blocked by the safety checker "
                                         f"({sum(output.blocked)} of {len(output.blocked)} images flagged)")
        return _store_results(job_id, jobs, params, output)
    except Cancelled:
        return fail(Failure.CANCELLED, "cancelled")
    except TimedOut:
        return fail(Failure.TIMED_OUT, f"timed out after {timeout:g}s")
    except StorageError as exc:
        return fail(Failure.STORAGE, f"storing the result failed: {exc}")
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        return fail(Failure.INTERNAL, f"internal error while running the job ({type(exc).__name__})")
    except BaseException:
        # Not an error of the job: Modal's FunctionCall.cancel (InputCancellation) or the process stopping.
        # A cancel ends the job here; anything else leaves it to be retried (restart recovery, lease reaper).
        if jobs.records.cancel_requested(job_id):
            jobs.fail(job_id, Failure.CANCELLED, "cancelled")
        raise


def _store_results(job_id: str, jobs: JobService, params: InpaintParams, output) -> JobOutcome:
    token = secrets.token_urlsafe(18)
    stored, files = [], []
    for index, (picture, seed) in enumerate(zip(output.images, output.seeds)):
        data, content_type = encode_image(picture, params.output_format)
        key = f"{job_id}/{token}/{index}.{params.output_format}"
        jobs.storage.put(key, data, content_type)
        stored.append(StoredImage(key=key, content_type=content_type, file_size=len(data), seed=seed))
        files.append((data, content_type))
    done = jobs.complete(job_id, inference_time=output.inference_time, images=stored, seeds=output.seeds,
                         progress_step=output.steps_run, progress_total=output.steps_run)
    if done is None:  # it ended meanwhile (cancelled, reaped): the stored files are orphans
        jobs.storage.delete([s.key for s in stored])
        current = jobs.records.get(job_id)
        return JobOutcome(current) if current else None
    return JobOutcome(done, files)


class EmbeddedDispatcher:
    """One worker thread over a persistent queue (the job store); one job at a time per model instance."""

    def __init__(self, inpainter_factory: Callable[[], Any], shutdown_grace: float = 10.0,
                 job_timeout: float = 600.0):
        self.inpainter_factory = inpainter_factory
        self.shutdown_grace = shutdown_grace
        self.job_timeout = job_timeout
        self.jobs: JobService | None = None  # set by bind(): the service and its dispatcher refer to each other
        self.inpainter = None
        self.state = "loading"
        self.error: str | None = None
        self.device: str | None = None
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._dispatched: dict[str, float] = {}
        self._waiting: set[str] = set()  # jobs a v1 caller waits for: their outcome (with the image bytes)
        self._outcomes: dict[str, JobOutcome] = {}  # is handed over, so v1 need not read the files back
        self._running: str | None = None
        self._handover = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def bind(self, jobs: JobService) -> None:
        self.jobs = jobs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="inpaint-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread:
            self._thread.join(self.shutdown_grace)

    def _recover(self) -> None:
        """Requeue what a previous process left: jobs it died in the middle of (retried once), then queued jobs."""
        from service.housekeeping import reap_stale

        reap_stale(self.jobs, lease=0)  # at start-up no PROCESSING job has a live worker
        for job_id in self.jobs.records.unfinished_ids(JobStatus.QUEUED):
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        self._dispatched[job_id] = time.time()
        self._queue.put(job_id)

    redispatch = submit

    def cancel(self, job_id: str) -> None:
        """Nothing to do: the worker checks the job's cancel flag before it starts and at every step."""

    def last_dispatch(self, job_id: str) -> float | None:
        return self._dispatched.get(job_id)

    def call_state(self, job_id: str) -> str | None:
        if job_id in self._dispatched:  # still waiting in this process's queue
            return None
        return "the worker stopped responding"  # taken by the worker thread, then silent: stuck or gone

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        """Wait on the store's change notifications (no thread held while waiting)."""
        deadline = time.monotonic() + timeout
        self._waiting.add(job_id)
        try:
            with self.jobs.changes.subscribe(job_id) as subscription:
                while True:
                    if (outcome := self._outcomes.pop(job_id, None)) is not None:
                        return outcome
                    record = await self.jobs.read(self.jobs.records.get, job_id)
                    # Ended, and the worker is done with it (else its outcome, with the bytes, is a moment away).
                    if record is None or (record.status.terminal and self._running != job_id):
                        return self._outcomes.pop(job_id, None) or (JobOutcome(record) if record else None)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    await subscription.wait(left)
        finally:
            with self._handover:
                self._waiting.discard(job_id)
                self._outcomes.pop(job_id, None)

    def _load(self) -> bool:
        try:
            self.inpainter = self.inpainter_factory()
            self.device = getattr(self.inpainter, "device", None)
            self.state = "ready"
            return True
        except Exception as exc:
            log.exception("the model failed to load")
            self.error = f"the model failed to load: {exc}"
            self.state = "error"
            return False

    def _loop(self) -> None:
        try:
            self._recover()  # here, not in start(): start() runs on the event loop, the store must not
        except Exception:  # e.g. a full disk: the lease reaper handles what is left once the store works
            log.exception("recovering the previous run's jobs failed; the housekeeping will retry them")
        loaded = self._load()
        while (job_id := self._queue.get()) is not None:
            self._dispatched.pop(job_id, None)
            try:
                if loaded:
                    self._running = job_id
                    try:
                        outcome = run_job(job_id, self.jobs, self.inpainter, self.job_timeout)
                    finally:
                        self._running = None
                    with self._handover:
                        if outcome is not None and job_id in self._waiting:
                            self._outcomes[job_id] = outcome
                    self.jobs.changes.notify(job_id)  # a v1 waiter takes the outcome now
                else:
                    self.jobs.fail(job_id, Failure.UNAVAILABLE, self.error or "the model is unavailable")
            except StoreUnavailable as exc:  # e.g. disk full: keep the job, wait, try again
                self.jobs.fault = str(exc)
                log.error("job %s: %s; retrying in %.0fs", job_id, exc, STORE_RETRY_SECONDS)
                if not self._stopping.wait(STORE_RETRY_SECONDS):
                    self.submit(job_id)
            except Exception:  # the worker outlives any job
                log.exception("job %s: unexpected error in the worker; it goes on with the next job", job_id)
