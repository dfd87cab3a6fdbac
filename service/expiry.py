"""Housekeeping: expired records and files are deleted; jobs whose worker went silent are retried or failed."""

import logging
import threading
import time
from typing import Callable

from schemas import JobStatus
from service.jobs import JobStore
from service.storage import ResultStorage

log = logging.getLogger(__name__)


def sweep_expired(store: JobStore, storage: ResultStorage, now: float | None = None) -> int:
    """Delete expired records and their files. Returns how many records went."""
    now = time.time() if now is None else now
    removed = 0
    for record in store.expired(now):
        try:
            storage.delete([image.key for image in record.images])
        except Exception:
            log.exception("could not delete the files of expired job %s; will retry", record.id)
            continue
        store.delete(record.id)
        removed += 1
    if removed:
        log.info("expiry sweep removed %d job(s)", removed)
    return removed


def reap_stale(store: JobStore, resubmit: Callable[[str], None], lease: float, now: float | None = None) -> int:
    """PROCESSING jobs with no heartbeat for `lease` seconds (their worker died or hung): dispatch again
    once, then FAILED. lease=0 takes every PROCESSING job. Returns how many were handled."""
    from service.worker import _fail

    now = time.time() if now is None else now
    handled = 0
    for job_id in store.ids_with_status(JobStatus.PROCESSING):
        record = store.get(job_id)
        if record is None:
            continue
        last_seen = record.heartbeat_at or record.started_at or record.created_at
        if lease > 0 and now - last_seen <= lease:
            continue
        handled += 1
        if record.attempts >= 2:
            silence = f", silent for over {lease:g}s" if lease > 0 else ""
            _fail(store, job_id, f"the worker stopped responding while running this job (retried once{silence})")
        else:
            log.warning("job %s: worker silent for %.0fs; dispatching it again", job_id, now - last_seen)
            store.update(job_id, heartbeat_at=now)
            resubmit(job_id)
    return handled


class Sweeper:
    """Runs sweep_expired (and reap_stale when given a resubmit) every `interval` seconds on a daemon thread."""

    def __init__(self, store: JobStore, storage: ResultStorage, interval: float,
                 resubmit: Callable[[str], None] | None = None, lease: float = 120.0):
        self.store, self.storage, self.interval = store, storage, interval
        self.resubmit, self.lease = resubmit, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="expiry-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep_expired(self.store, self.storage)
                if self.resubmit is not None:
                    reap_stale(self.store, self.resubmit, self.lease)
            except Exception:
                log.exception("housekeeping sweep failed")
