"""How a job reaches a Modal GPU container: `Inpainter().run.spawn(job_id)`, the FunctionCall's id kept in the
records Dict under `call:<id>`, and v1's wait on that call.

What a FunctionCall raises decides what happens to the job, so the two kinds are kept apart:
- the call's own outcome (the remote exception, FunctionTimeoutError, OutputExpiredError, InternalFailure,
  RemoteError, ...): the worker is gone and the job ends FAILED (or is retried by the housekeeping);
- this client failing to reach Modal (ConnectionError, ClientClosed, a gRPC status, a broken stream): the job
  may well be running, so it is left alone; v1 retries the wait, and the housekeeping asks again next time
  (its silence bound still ends a job whose worker has really gone).
"""

import asyncio
import logging
import time
from typing import Any, Callable

from service.jobs.errors import CallStateUnknown, WorkerFailed
from service.jobs.records import JobOutcome
from service.jobs.waiting import run_blocking
from schemas import JobStatus
from service.stores.modal_dicts import CALL, HELD, DictRecords

log = logging.getLogger(__name__)

TRANSPORT_RETRY_SECONDS = 1.0  # v1's wait on a call, after this client failed to reach Modal


def is_transport_error(exc: BaseException) -> bool:
    """True when the exception says this client could not talk to Modal, not how the call ended: a lost
    connection, a closed client, a broken stream, or a gRPC status Modal's client itself retries (what it
    raises as ServiceError or InternalError once its retries are spent). A remote exception of another kind,
    or Modal refusing the request (not found, invalid, denied), is the call's outcome."""
    import grpclib
    import grpclib.exceptions
    import modal.exception

    transport = (modal.exception.ConnectionError, modal.exception.ClientClosed, modal.exception.ServiceError,
                 modal.exception.InternalError, grpclib.exceptions.StreamTerminatedError)
    retried = {grpclib.Status.UNAVAILABLE, grpclib.Status.DEADLINE_EXCEEDED, grpclib.Status.CANCELLED,
               grpclib.Status.UNKNOWN, grpclib.Status.INTERNAL}
    return isinstance(exc, transport) or (type(exc) is grpclib.GRPCError and exc.status in retried)


def outcome_to_wire(outcome: JobOutcome | None) -> dict | None:
    """What the GPU method returns to a blocking (v1) caller."""
    return None if outcome is None else outcome.to_wire()


def outcome_from_wire(value: dict | None) -> JobOutcome | None:
    return None if value is None else JobOutcome.from_wire(value)


def describe_call_error(exc: BaseException) -> str:
    name = type(exc).__name__
    return f"the GPU worker failed ({name}: {exc})" if str(exc) else f"the GPU worker failed ({name})"


class ModalDispatcher:
    state = "ready"  # GPU containers start on demand; there is nothing to load in the web tier
    error = None

    def __init__(self, records: DictRecords, spawn: Callable[[str], Any], call_from_id: Callable[[str], Any],
                 gpu: str, batched: bool = False):
        self.records = records
        self.spawn = spawn
        self.call_from_id = call_from_id
        self.device = f"modal:{gpu}"
        # With modal.batched, cancelling one input's FunctionCall cancels the whole batch it runs in (Modal
        # cancels the container's input context, which holds every input of the batch), so calls are never
        # cancelled: a cancelled job's input still reaches a container, finds the job ended and returns at once.
        self.batched = batched

    def submit(self, job_id: str) -> None:
        call = self.spawn(job_id)
        self.records.dict.put(CALL + job_id, {"id": call.object_id, "at": time.time()})

    def hold(self, job_id: str) -> None:
        """A low-priority job is not handed to Modal now: that could start a GPU container. release_held() sends
        it once running containers have room."""
        self.records.dict.put(HELD + job_id, time.time())

    def release_held(self, room: int) -> int:
        """Hand up to `room` held jobs to Modal, oldest first; `room` is what running GPU containers can take
        without Modal starting another (app.py asks Modal). One stream of the active index when there is room
        (then no normal job waits, so it lists little more than the held jobs); none otherwise."""
        released = 0
        if room <= 0:
            return 0
        for job_id in self.records.unfinished_ids(JobStatus.QUEUED):
            if released >= room:
                break
            if self.records.dict.get(HELD + job_id) is None or self.records.dict.get(CALL + job_id) is not None:
                continue
            self.submit(job_id)
            released += 1
        return released

    def _call(self, job_id: str):
        entry = self.records.dict.get(CALL + job_id)
        return self.call_from_id(entry["id"]) if entry else None

    def redispatch(self, job_id: str) -> None:
        self.cancel(job_id)
        self.submit(job_id)

    def cancel(self, job_id: str) -> None:
        if self.batched:
            return
        try:
            call = self._call(job_id)
            if call is not None:
                call.cancel()
        except Exception:
            log.warning("could not cancel the FunctionCall of job %s", job_id, exc_info=True)

    def cancel_running(self, job_id: str) -> None:
        """Nothing: the GPU container reads the job's cancel flag at most every 0.5 s while it runs."""

    def last_dispatch(self, job_id: str) -> float | None:
        entry = self.records.dict.get(CALL + job_id)
        return entry["at"] if entry else self.records.dict.get(HELD + job_id)

    def call_state(self, job_id: str) -> str | None:
        call = self._call(job_id)
        if call is None:
            if self.records.dict.get(HELD + job_id) is not None:
                return None  # held back on purpose (low priority): MAX_QUEUE_SECONDS bounds its wait
            return "the job was never handed to a worker"
        try:
            call.get(timeout=0)
        except TimeoutError:  # the builtin one: the call is still pending or running
            return None
        except BaseException as exc:  # noqa: BLE001 - OutputExpiredError, FunctionTimeoutError, remote errors
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if is_transport_error(exc):
                raise CallStateUnknown(f"{type(exc).__name__}: {exc}") from exc
            return describe_call_error(exc)
        return "the worker returned without finishing the job"

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        """The outcome once the call returns within `timeout`; None while it runs or when Modal cannot be
        reached for that long. WorkerFailed when the call itself failed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                call = await run_blocking(self._call, job_id)
                if call is None:
                    return None
                return outcome_from_wire(await call.get.aio(timeout=max(0.0, deadline - time.monotonic())))
            except TimeoutError:  # the builtin one: still running. Modal's TimeoutError subclasses mean it is gone.
                return None
            except BaseException as exc:  # noqa: BLE001 - remote errors, InputCancellation (a BaseException)
                if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                    raise
                if not is_transport_error(exc):
                    raise WorkerFailed(describe_call_error(exc)) from exc
                log.warning("job %s: waiting on its call failed (%s: %s); retrying", job_id, type(exc).__name__, exc)
                if deadline - time.monotonic() < TRANSPORT_RETRY_SECONDS:
                    return None
                await asyncio.sleep(TRANSPORT_RETRY_SECONDS)
