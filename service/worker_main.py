"""The embedded worker process (started by service/jobs/worker_process.py): a composition root of its own.

It opens the same job store, loads the model, and runs the jobs it is sent with the same worker the thread
mode uses (service/jobs/worker_thread.py). What the server must hear at once goes back on the events queue.
"""

import ctypes
import logging
import multiprocessing
import queue
import signal
import sys
from typing import Any

from service.config import Settings
from service.jobs.changes import Changes
from service.logs import configure_logging

log = logging.getLogger(__name__)


class ForwardedChanges(Changes):
    """Job changes made here, told to the server, whose long-polls wait on them."""

    def __init__(self, events: Any):
        super().__init__()
        self.events = events

    def notify(self, job_id: str) -> None:
        self.events.put(("changed", job_id))

    def notify_all(self) -> None:
        self.events.put(("changed", None))


def load_model(settings: Settings):
    """The model, and on a GPU its warm-up job (while the server says "loading", not on the first request)."""
    from inference import Inpainter

    model = Inpainter.from_settings(settings)
    if model.device.startswith("cuda"):
        model.warm_up()
    return model


PARENT_CHECK_SECONDS = 1.0


def die_with_the_server() -> None:
    """A worker whose server is gone (killed outright) must not go on running jobs, holding the model: on Linux
    the kernel ends it with its parent; elsewhere the command loop notices within PARENT_CHECK_SECONDS."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main(config: dict, commands: Any, events: Any) -> None:
    from pathlib import Path

    from service.jobs.handover import from_wire
    from service.jobs.service import JobService
    from service.jobs.worker_thread import EmbeddedDispatcher
    from service.stores.results import make_storage
    from service.stores.sqlite import FileInputs, SQLiteState, SQLiteWebhooks

    die_with_the_server()
    configure_logging()
    settings = Settings(**config)
    state_dir = Path(settings.state_dir)
    state = SQLiteState(state_dir / "jobs.sqlite3", changes=ForwardedChanges(events))
    webhooks = SQLiteWebhooks(state.db)

    def queue_webhook(record) -> None:  # the server's sender delivers it; the job store keeps it until then
        if record.webhook_url:  # due at once; the server's sender looks at the store every second
            webhooks.add(record.id, record.owner, record.webhook_url, record.finished_at or 0.0)

    dispatcher = EmbeddedDispatcher(lambda: load_model(settings), shutdown_grace=settings.shutdown_grace_seconds,
                                    job_timeout=settings.job_timeout_seconds,
                                    batch_max_images=settings.batch_max_images, batch_wait_ms=settings.batch_wait_ms)
    jobs = JobService(settings, state, FileInputs(state_dir / "inputs"), state, make_storage(settings), dispatcher,
                      changes=state.changes, on_terminal=queue_webhook)
    dispatcher.bind(jobs)
    jobs.lifecycle.on_ended = lambda outcome: events.put(("ended", outcome.to_wire()))
    dispatcher.on_state = lambda: events.put(("state", (dispatcher.state, dispatcher.error, dispatcher.device)))
    dispatcher.on_start = lambda job_id: events.put(("started", job_id))
    dispatcher.start()
    server = multiprocessing.parent_process()
    while server is None or server.is_alive():
        try:
            kind, value = commands.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            continue
        if kind == "run":
            job_id, images = value
            if images is not None:  # decoded at submit: no need to decode the stored bytes again
                jobs.lifecycle.decoded.put(job_id, *from_wire(images))
            dispatcher.submit(job_id)
        elif kind == "cancel":
            jobs.lifecycle.note_cancel(value)
        elif kind == "stop":
            break
    dispatcher.stop()
