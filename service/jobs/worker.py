"""Running jobs on a model: the step every backend shares (`run_jobs`), grouping compatible jobs into one
pipeline call, ending each job once, storing its results.

`run_jobs` takes any object with Inpainter's `run(params, image, mask, on_step)`
method, so this module never imports torch: the embedded server passes an
`inference.Inpainter`, the Modal GPU class passes its own.
"""

import io
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from schemas import InpaintParams, batch_key
from schemas.job_errors import CannotPaint, MaskNotFound
from service.jobs.errors import StorageError, StoreUnavailable
from service.jobs.failures import Failure
from service.jobs.records import JobOutcome, JobRecord, StoredImage
from service.jobs.service import JobService

log = logging.getLogger(__name__)

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PROGRESS_WRITE_INTERVAL = 0.2  # seconds between progress writes to the job store


class AllEnded(Exception):
    """Every job of a pipeline call has ended (cancelled, timed out): the call stops."""


def encode_image(image: Image.Image, output_format: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if output_format == "jpeg":
        image.save(buf, format="JPEG", quality=92)
    elif output_format == "webp":
        image.save(buf, format="WEBP", quality=92)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue(), CONTENT_TYPES[output_format]


@dataclass
class _Job:
    """One job of a group being run: its record, request and inputs, and how it ended (once it has)."""
    id: str
    record: JobRecord
    params: InpaintParams
    image: Any
    mask: Any
    should_stop: Callable[[], bool]
    outcome: JobOutcome | None = None
    last_progress: float = 0.0


def run_job(job_id: str, jobs: JobService, inpainter: Any, timeout: float = 600.0) -> JobOutcome | None:
    """Run one job to COMPLETED or FAILED (FAILED "timed out" past `timeout` seconds of running).
    Returns None when there was nothing to run here (unknown, finished, or running elsewhere)."""
    return run_jobs([job_id], jobs, inpainter, timeout)[job_id]


def run_jobs(job_ids: list[str], jobs: JobService, inpainter: Any, timeout: float = 600.0, max_images: int = 1,
             cold_start: float | None = None,
             on_start: Callable[[str], None] = lambda job_id: None) -> dict[str, JobOutcome | None]:
    """Run jobs to COMPLETED or FAILED; the outcome per id (None: nothing to run here). With max_images > 1,
    single-image jobs that share `batch_key` run together in one pipeline call of up to max_images images;
    the rest run one by one. Each group's jobs are started (PROCESSING) only when the group runs, so a job
    waiting for an earlier group stays QUEUED, never looks silent to the lease reaper.
    `cold_start`: seconds of model loading the jobs waited for (shown in their metrics); `on_start(job_id)` is
    called as each job's group comes up, before the job starts."""
    job_ids = list(dict.fromkeys(job_ids))  # queued twice (restart recovery racing a submit, a redispatch): once
    outcomes: dict[str, JobOutcome | None] = {job_id: None for job_id in job_ids}
    if max_images <= 1 or len(job_ids) == 1:  # nothing to group: no need to read the requests first
        waiting: list[tuple[str, InpaintParams | None]] = [(job_id, None) for job_id in job_ids]
    else:
        waiting = _requests(job_ids, jobs)
    for group in _groups(waiting, max_images):
        for job_id, _ in group:
            on_start(job_id)
        try:
            started = [job for job in (_start(job_id, jobs, outcomes) for job_id, _ in group) if job is not None]
            if started:
                _run_group(started, jobs, inpainter, timeout, cold_start)
                outcomes.update({job.id: job.outcome for job in started})
        except StoreUnavailable:
            raise  # the embedded dispatcher keeps every job of the round and retries
        except Exception:  # e.g. a networked store's error: the later groups still run
            log.exception("jobs %s: the worker failed around them; the lease reaper retries any left unfinished",
                          ", ".join(job_id for job_id, _ in group))
    return outcomes


def _requests(job_ids: list[str], jobs: JobService) -> list[tuple[str, InpaintParams | None]]:
    """The unfinished jobs among `job_ids` with their requests, for grouping (None: unreadable, runs alone)."""
    waiting: list[tuple[str, InpaintParams | None]] = []
    for job_id in job_ids:
        record = jobs.records.get(job_id)
        if record is not None and not record.status.terminal:
            try:
                waiting.append((job_id, InpaintParams.model_validate(record.params, strict=False)))
            except Exception:  # reported when the job starts
                waiting.append((job_id, None))
    return waiting


def _start(job_id: str, jobs: JobService, outcomes: dict[str, JobOutcome | None]) -> _Job | None:
    """PROCESSING with its request and inputs, or None (nothing to run, or FAILED here: see outcomes)."""
    record = jobs.lifecycle.start(job_id)
    if record is None:  # ended before its turn (in another process, where its end could not drop these)
        jobs.lifecycle.decoded.take(job_id)
        return None
    try:
        images = input_images(jobs, record)
        params = InpaintParams.model_validate(record.params, strict=False)
    except StoreUnavailable:
        raise
    except Exception as exc:  # unreadable stored inputs or request: this job fails, the others run
        log.exception("job %s: its stored inputs cannot be read", job_id)
        message = f"the job's stored inputs cannot be read ({type(exc).__name__})"
        outcomes[job_id] = JobOutcome(jobs.lifecycle.fail(job_id, Failure.INTERNAL, message) or record)
        return None
    if images is None:
        outcomes[job_id] = JobOutcome(jobs.lifecycle.fail(job_id, Failure.INTERNAL, "job inputs are missing")
                                      or record)
        return None
    return _Job(job_id, record, params, images[0], images[1], jobs.lifecycle.cancel_check(job_id))


def input_images(jobs: JobService, record: JobRecord) -> tuple[Any, Any] | None:
    """The job's image and mask as PIL images, or None when its inputs are gone: the images decoded at submit
    where they were handed over in this process, else the stored bytes (lazily decoded)."""
    if (handed := jobs.lifecycle.decoded.take(record.id)) is not None:
        return handed
    inputs = jobs.inputs.get(record.inputs_at)
    if inputs is None:
        return None
    return Image.open(io.BytesIO(inputs[0])), Image.open(io.BytesIO(inputs[1]))


def _groups(waiting: list[tuple[str, InpaintParams | None]], max_images: int) -> list[list[tuple]]:
    """Single-image jobs with the same batch_key together (in arrival order, at most max_images per group);
    multi-sample jobs alone: they are a batch already, and alone their seeds give the same bytes every time.
    mask_only jobs alone: they make no pipeline call."""
    groups: list[list[tuple]] = []
    open_groups: dict[tuple, list[tuple]] = {}
    for job_id, params in waiting:
        if max_images <= 1 or params is None or params.samples > 1 or params.mask_only:
            groups.append([(job_id, params)])
            continue
        key = batch_key(params)
        group = open_groups.get(key)
        if group is None or len(group) >= max_images:
            group = open_groups[key] = []
            groups.append(group)
        group.append((job_id, params))
    return groups


def _run_group(group: list[_Job], jobs: JobService, inpainter: Any, timeout: float,
               cold_start: float | None) -> None:
    """One pipeline call for the group. Each job is accounted for apart: it pays its share of the call (by image
    count) plus its own preparation, stitching and storing; it times out when its share of the call's time passes
    the job timeout (alone, the whole time); cancelling it ends only it (its images are dropped). The call stops
    early only when every job of the group has ended."""
    run_started = time.monotonic()
    total_images = sum(job.params.samples for job in group)
    for job in group:
        job.last_progress = run_started

    def live() -> list[_Job]:
        return [job for job in group if job.outcome is None]

    def share(job: _Job, seconds: float) -> float:
        return seconds * job.params.samples / total_images

    def end(job: _Job, failure: Failure, message: str, gpu_seconds: float | None = None, **fields: Any) -> None:
        extra = {} if gpu_seconds is None else jobs.lifecycle.usage_fields(gpu_seconds, len(group), cold_start)
        extra.update(fields)
        job.outcome = JobOutcome(jobs.lifecycle.fail(job.id, failure, message, **extra) or jobs.records.get(job.id)
                                 or job.record)

    def past_deadline(job: _Job) -> bool:
        """Its Cancel-After has passed: it ends as a cancel does (a clock read, no store call)."""
        if not job.record.past_deadline(time.time()):
            return False
        failure, message = job.record.deadline_failure()
        end(job, failure, message, share(job, time.monotonic() - run_started))
        return True

    def on_step(step: int, total: int) -> None:
        now = time.monotonic()
        for job in live():
            if past_deadline(job):
                continue
            if job.should_stop():
                end(job, Failure.CANCELLED, "cancelled", share(job, now - run_started))
            elif share(job, now - run_started) > timeout:
                end(job, Failure.TIMED_OUT, f"timed out after {timeout:g}s", share(job, now - run_started))
        if not live():
            raise AllEnded()
        for job in live():
            # Every PROGRESS_WRITE_INTERVAL from the start, not at the first or last step: these writes fall
            # inside the model call's time, and completing the job records the final step anyway.
            if now - job.last_progress >= PROGRESS_WRITE_INTERVAL and step < total:
                job.last_progress = now
                try:
                    jobs.lifecycle.progress(job.id, step, total)
                except Exception:  # a lost progress write is harmless; stopping the batch for it is not
                    log.warning("job %s: writing its progress failed", job.id, exc_info=True)

    in_call = True  # an error raised by the pipeline call (not by what follows) may be one job's input
    try:
        if len(group) == 1:
            outputs = [inpainter.run(group[0].params, group[0].image, group[0].mask, on_step=on_step)]
        else:
            outputs = inpainter.run_batch([(job.params, job.image, job.mask) for job in group], on_step=on_step)
        in_call = False
        for job, output in zip(group, outputs):
            if job.outcome is not None or past_deadline(job):  # cancelled or timed out: its images are dropped
                continue
            used = share(job, output.inference_time) + output.own_time  # the call's share and its own work
            if output.any_blocked:
                end(job, Failure.BLOCKED, f"content blocked by the safety checker "
                                          f"({sum(output.blocked)} of {len(output.blocked)} images flagged)", used)
                continue
            try:
                job.outcome = _store_results(job, jobs, output, used, len(group), cold_start)
            except StorageError as exc:
                end(job, Failure.STORAGE, f"storing the result failed: {exc}", used)
            except StoreUnavailable:
                raise
            except Exception as exc:  # e.g. encoding: this job's failure only, its batch-mates are done or go on
                log.exception("job %s: storing its result crashed", job.id)
                end(job, Failure.INTERNAL, f"internal error while storing the result ({type(exc).__name__})", used)
    except AllEnded:
        pass  # every job of the group has ended already
    except StoreUnavailable:
        raise  # the dispatcher keeps the jobs and retries once the store works again
    except Exception as exc:  # the pipeline call failed
        culprit = next((job for job in live() if job.params is getattr(exc, "request", None)), None)
        if isinstance(exc, CannotPaint) and culprit is not None:  # that request alone fails, saying why
            failure = Failure.MASK_NOT_FOUND if isinstance(exc, MaskNotFound) else Failure.UNAVAILABLE
            end(culprit, failure, str(exc), share(culprit, time.monotonic() - run_started), mask_time=exc.mask_time)
            if live():  # its batch-mates, still together
                _run_group(live(), jobs, inpainter, timeout, cold_start)
            return
        if in_call and len(live()) > 1:  # one job's bad input must not fail its batch-mates: each runs alone
            log.warning("a batch of %d jobs failed (%s: %s); running its jobs one by one", len(live()),
                        type(exc).__name__, exc)
            for job in live():
                for waiting in live():  # a sign of life for those still waiting, so the lease reaper waits too
                    jobs.records.update(waiting.id, heartbeat_at=time.time())
                _run_group([job], jobs, inpainter, timeout, cold_start)
            return
        log.exception("job %s crashed", ", ".join(job.id for job in live()))
        for job in live():
            end(job, Failure.INTERNAL, f"internal error while running the job ({type(exc).__name__})")
    except BaseException:
        # Not an error of the jobs: Modal's FunctionCall.cancel (InputCancellation) or the process stopping.
        # A cancel ends a job here; anything else leaves it to be retried (restart recovery, lease reaper).
        for job in live():
            if jobs.records.cancel_requested(job.id):
                jobs.lifecycle.fail(job.id, Failure.CANCELLED, "cancelled")
        raise


def _store_results(job: _Job, jobs: JobService, output, used: float, batch_size: int,
                   cold_start: float | None) -> JobOutcome | None:
    """Encode and store the job's images, then complete it, unless it was cancelled meanwhile (a cancel that
    lands after the last denoising step still cancels: it is looked up just before the end). Its GPU seconds are
    `used` (its share of the model call and its own work there) plus the time spent here."""
    started = time.monotonic()
    token = secrets.token_urlsafe(18)
    stored, files = [], []
    output_format = job.params.output_format
    for index, (picture, seed) in enumerate(zip(output.images, output.seeds)):
        data, content_type = encode_image(picture, output_format)
        key = f"{job.id}/{token}/{index}.{output_format}"
        jobs.storage.put(key, data, content_type)
        stored.append(StoredImage(key=key, content_type=content_type, file_size=len(data), seed=seed))
        files.append((data, content_type))
    usage = jobs.lifecycle.usage_fields(used + time.monotonic() - started, batch_size, cold_start)
    if jobs.lifecycle.cancelled(job.id):
        jobs.storage.delete([s.key for s in stored])
        return JobOutcome(jobs.lifecycle.fail(job.id, Failure.CANCELLED, "cancelled", **usage)
                          or jobs.records.get(job.id) or job.record)
    done = jobs.lifecycle.complete(job.id, files=files, inference_time=output.inference_time, images=stored,
                                   seeds=output.seeds, progress_step=output.steps_run,
                                   progress_total=output.steps_run, mask_time=getattr(output, "mask_time", None),
                                   **usage)
    if done is None:  # it ended meanwhile (cancelled, reaped): the stored files are orphans
        jobs.storage.delete([s.key for s in stored])
        current = jobs.records.get(job.id)
        return JobOutcome(current) if current else None
    return JobOutcome(done, files)
