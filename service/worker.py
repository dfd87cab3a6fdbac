"""Running jobs: the step every backend shares (`run_job`) and the embedded in-process dispatcher.

`run_job` takes any object with Inpainter's `run(request, image, mask, on_step)`
method, so this module never imports torch: the embedded server passes an
`inference.Inpainter`, the Modal GPU class passes its own.
"""

import io
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from PIL import Image

from schemas import InpaintRequest, JobStatus
from service.jobs import JobRecord, JobStore, StoredImage
from service.limits import refund_credits
from service.logs import log_event
from service.storage import ResultStorage, StorageError

log = logging.getLogger(__name__)

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PROGRESS_WRITE_INTERVAL = 0.2  # seconds between progress writes to the job store


class Cancelled(Exception):
    """The job's owner cancelled it."""


class TimedOut(Exception):
    """The job ran past its execution timeout."""


@dataclass
class JobOutcome:
    record: JobRecord
    files: list[tuple[bytes, str]] = field(default_factory=list)  # (bytes, content type) per image


def encode_image(image: Image.Image, output_format: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if output_format == "jpeg":
        image.save(buf, format="JPEG", quality=92)
    elif output_format == "webp":
        image.save(buf, format="WEBP", quality=92)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue(), CONTENT_TYPES[output_format]


def _fail(store: JobStore, job_id: str, message: str, refund: bool = True) -> JobRecord | None:
    """FAILED with `message`; credits are refunded unless the caller's content was the cause."""
    store.delete_inputs(job_id)
    failed = store.update(job_id, status=JobStatus.FAILED, error=message, finished_at=time.time())
    if failed is not None:
        log_event("job", request_id=job_id, status="FAILED", error=message)
        if refund:
            refund_credits(store, failed)
    return failed


def run_job(job_id: str, store: JobStore, storage: ResultStorage, inpainter: Any,
            timeout: float = 600.0) -> JobOutcome | None:
    """Run one job to COMPLETED or FAILED (FAILED "timed out" past `timeout` seconds of running).
    Returns None when there was nothing to run."""
    record = store.get(job_id)
    if record is None or record.status.terminal:
        return None
    if store.cancel_requested(job_id):
        return JobOutcome(_fail(store, job_id, "cancelled") or record)
    record = store.update(
        job_id, status=JobStatus.PROCESSING, started_at=record.started_at or time.time(),
        attempts=record.attempts + 1, heartbeat_at=time.time(),
    )
    if record is None:
        return None
    log_event("job", request_id=job_id, status="PROCESSING", attempt=record.attempts)
    run_started = time.monotonic()
    inputs = store.get_inputs(job_id)
    if inputs is None:
        return JobOutcome(_fail(store, job_id, "job inputs are missing") or record)

    last_write = 0.0

    def on_step(step: int, total: int) -> None:
        nonlocal last_write
        if store.cancel_requested(job_id):
            raise Cancelled()
        now = time.monotonic()
        if now - run_started > timeout:
            raise TimedOut()
        if now - last_write >= PROGRESS_WRITE_INTERVAL or step == total:
            last_write = now
            store.update(job_id, progress_step=step, progress_total=total, heartbeat_at=time.time())

    try:
        request = InpaintRequest.model_validate({**record.params, "image": "stored", "mask": "stored"})
        image = Image.open(io.BytesIO(inputs[0]))
        mask = Image.open(io.BytesIO(inputs[1]))
        output = inpainter.run(request, image, mask, on_step=on_step)
        if output.any_blocked:
            flagged = sum(output.blocked)
            return JobOutcome(_fail(store, job_id, f"content blocked by the safety checker "
                                                   f"({flagged} of {len(output.blocked)} images flagged)",
                                    refund=False) or record)
        token = secrets.token_urlsafe(18)
        stored, files = [], []
        extension = request.output_format
        for index, (picture, seed) in enumerate(zip(output.images, output.seeds)):
            data, content_type = encode_image(picture, request.output_format)
            key = f"{job_id}/{token}/{index}.{extension}"
            storage.put(key, data, content_type)
            stored.append(StoredImage(key=key, content_type=content_type, file_size=len(data), seed=seed))
            files.append((data, content_type))
        store.delete_inputs(job_id)
        done = store.update(
            job_id, status=JobStatus.COMPLETED, finished_at=time.time(), inference_time=output.inference_time,
            images=stored, seeds=output.seeds, progress_step=output.steps_run, progress_total=output.steps_run,
        )
        if done is None:  # cancelled and failed meanwhile: the stored files are orphans
            storage.delete([s.key for s in stored])
            return JobOutcome(store.get(job_id) or record)
        log_event("job", request_id=job_id, status="COMPLETED", inference_time=round(output.inference_time, 4),
                  images=len(stored))
        return JobOutcome(done, files)
    except Cancelled:
        return JobOutcome(_fail(store, job_id, "cancelled") or record)
    except TimedOut:
        return JobOutcome(_fail(store, job_id, f"timed out after {timeout:g}s") or record)
    except StorageError as exc:
        return JobOutcome(_fail(store, job_id, f"storing the result failed: {exc}") or record)
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        return JobOutcome(_fail(store, job_id, f"internal error while running the job ({type(exc).__name__})")
                          or record)


class Dispatcher(Protocol):
    state: str  # "loading" | "ready" | "error"
    error: str | None
    device: str | None

    def submit(self, job_id: str) -> None: ...
    def wait(self, job_id: str, timeout: float) -> JobOutcome | None: ...
    def cancel(self, job_id: str) -> None: ...


class EmbeddedDispatcher:
    """One worker thread over a persistent queue (the job store); one job at a time per model instance."""

    def __init__(self, store: JobStore, storage: ResultStorage, inpainter_factory: Callable[[], Any],
                 shutdown_grace: float = 10.0, job_timeout: float = 600.0):
        self.shutdown_grace = shutdown_grace
        self.job_timeout = job_timeout
        self.store = store
        self.storage = storage
        self.inpainter_factory = inpainter_factory
        self.inpainter = None
        self.state = "loading"
        self.error: str | None = None
        self.device: str | None = None
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._waiters: dict[str, tuple[threading.Event, list[JobOutcome]]] = {}
        self._waiters_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="inpaint-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread:
            self._thread.join(self.shutdown_grace)

    def recover(self) -> None:
        """Requeue what a previous process left: jobs it died in the middle of (retried once), then queued jobs."""
        from service.expiry import reap_stale

        reap_stale(self.store, self._queue.put, lease=0)  # at start-up no PROCESSING job has a live worker
        for job_id in self.store.ids_with_status(JobStatus.QUEUED):
            self._queue.put(job_id)

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        """Nothing to do: the worker checks the job's cancel flag before it starts and at every step."""

    def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        """Block until the job is finished (None on timeout). Register before or after submit: both work."""
        with self._waiters_lock:
            event, slot = self._waiters.setdefault(job_id, (threading.Event(), []))
        record = self.store.get(job_id)
        if record is not None and record.status.terminal and not slot:
            return JobOutcome(record)
        finished = event.wait(timeout)
        with self._waiters_lock:
            self._waiters.pop(job_id, None)
        return slot[0] if finished and slot else None

    def _notify(self, job_id: str, outcome: JobOutcome | None) -> None:
        with self._waiters_lock:
            entry = self._waiters.get(job_id)
        if entry:
            event, slot = entry
            record = outcome.record if outcome else self.store.get(job_id)
            if record is not None:
                slot.append(outcome or JobOutcome(record))
            event.set()

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
        loaded = self._load()
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            if loaded:
                outcome = run_job(job_id, self.store, self.storage, self.inpainter, self.job_timeout)
            else:
                _fail(self.store, job_id, self.error or "the model is unavailable")
                outcome = None
            self._notify(job_id, outcome)
