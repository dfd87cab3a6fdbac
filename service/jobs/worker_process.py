"""The embedded server's worker in a process of its own, as on Modal: HTTP handlers and the model never share
an interpreter lock, so polling clients cannot slow a job.

Jobs cross through the job store (SQLite, which both processes open); two queues carry what must be instant:
- to the worker: new jobs, cancels, stop;
- from the worker: its state (loading, ready, error), each job's start, every change of a job (so long-polls
  wake at once), each ended job's outcome with its image bytes (so v1 need not read them back).

The worker process is started on `start()` and started again if it dies; a job it died in the middle of is
retried once by its successor's recovery, then FAILED, as after a restart.
"""

import logging
import multiprocessing
import os
import queue
import threading
import time
from typing import Any, Callable

from service.jobs.handover import to_wire
from service.jobs.records import JobOutcome
from service.jobs.service import JobService
from service.jobs.worker_thread import OutcomeHandover

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0  # before starting a worker process again after one died
# How far the server's request handling steps back from the worker when every core is busy (a nice value): a
# separate process frees the job from the server's interpreter lock, not from sharing cores with it, and on a
# small machine a flood of polls would otherwise still take a share of the worker's core. No effect while a
# core is free.
WEB_NICENESS = 10


def step_back_from_worker() -> None:
    """Lower this thread's priority, and that of the threads it starts later (Linux keeps nice values per
    thread: the worker process and this dispatcher's reader thread, which starts its successors, keep theirs)."""
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + WEB_NICENESS)
    except (AttributeError, OSError) as exc:  # not on Linux, or not permitted: an optimisation only
        log.info("could not lower the web tier's priority (%s)", exc)


class ProcessDispatcher:
    """Dispatcher for a worker process running `target(config, commands, events)` (service/worker_main.py)."""

    def __init__(self, target: Callable[..., None], config: dict, shutdown_grace: float = 10.0):
        self.target, self.config, self.shutdown_grace = target, config, shutdown_grace
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads forked
        self.commands = self._context.Queue()
        self.events = self._context.Queue()
        self.jobs: JobService | None = None
        self.handover: OutcomeHandover | None = None
        self.state, self.error, self.device = "loading", None, None
        self.dispatched: dict[str, float] = {}  # sent to the worker, not yet started there
        self._process: Any = None
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None

    def bind(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.handover = OutcomeHandover(jobs)
        jobs.lifecycle.on_ended = self.handover.give  # jobs ended here (a queued job cancelled, expired, reaped)

    def start(self) -> None:
        """Called on the server's event loop thread, which then steps back from the worker."""
        self._spawn()
        self._reader = threading.Thread(target=self._read_events, name="worker-events", daemon=True)
        self._reader.start()
        step_back_from_worker()

    def _spawn(self) -> None:
        self.state = "loading"
        self._process = self._context.Process(target=self.target, args=(self.config, self.commands, self.events),
                                              name="inpaint-worker", daemon=True)
        self._process.start()

    def stop(self) -> None:
        """The worker finishes the job in hand (up to the grace time; an unfinished one is retried at the next
        start), then exits."""
        self._stopping.set()
        self.commands.put(("stop", None))
        if self._process is not None:
            self._process.join(self.shutdown_grace + 10)
            if self._process.is_alive():
                self._process.terminate()
        if self._reader is not None:
            self._reader.join(5)
        for channel in (self.commands, self.events):  # their semaphores go with them, not at exit
            channel.close()
            channel.join_thread()

    # ---- the Dispatcher port -----------------------------------------------------------------------------

    def submit(self, job_id: str) -> None:
        """The job, with its images as decoded at submit when they were handed over and fit the wire."""
        self.dispatched[job_id] = time.time()
        self.commands.put(("run", (job_id, to_wire(self.jobs.lifecycle.decoded.take(job_id)))))

    redispatch = hold = submit  # the worker's queue reads the job's priority

    def cancel(self, job_id: str) -> None:
        self.commands.put(("cancel", job_id))

    cancel_running = cancel

    def last_dispatch(self, job_id: str) -> float | None:
        return self.dispatched.get(job_id)

    def call_state(self, job_id: str) -> str | None:
        if job_id in self.dispatched:  # still waiting in the worker's queue
            return None
        return "the worker stopped responding"  # taken by the worker, then silent: stuck or gone

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        return await self.handover.wait(job_id, timeout)

    # ---- what the worker says ------------------------------------------------------------------------------

    def _read_events(self) -> None:
        while not self._stopping.is_set():
            try:
                kind, value = self.events.get(timeout=0.5)
            except queue.Empty:
                if not self._stopping.is_set() and not self._process.is_alive():
                    self._restart()
                continue
            except (EOFError, OSError):
                return
            try:
                self._handle(kind, value)
            except Exception:
                log.exception("handling the worker's %r event failed", kind)

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "changed":  # a job changed in the worker: wake its long-polls (None: every job's)
            if value is None:
                self.jobs.changes.notify_all()
            else:
                self.jobs.changes.notify(value)
        elif kind == "started":
            self.dispatched.pop(value, None)
            self.handover.running.add(value)
        elif kind == "ended":
            outcome = JobOutcome.from_wire(value)
            self.handover.running.discard(outcome.record.id)
            self.handover.give(outcome)
        elif kind == "state":
            self.state, self.error, self.device = value

    def _restart(self) -> None:
        log.error("the worker process ended (exit code %s); starting another", self._process.exitcode)
        self.error = f"the worker process ended (exit code {self._process.exitcode}); restarting it"
        self.handover.running.clear()
        if not self._stopping.wait(RESTART_DELAY_SECONDS):
            self._spawn()
