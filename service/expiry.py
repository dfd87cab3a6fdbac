"""Retention: records and result files are deleted once they expire."""

import logging
import threading
import time

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


class Sweeper:
    """Runs sweep_expired every `interval` seconds on a daemon thread (embedded default)."""

    def __init__(self, store: JobStore, storage: ResultStorage, interval: float):
        self.store, self.storage, self.interval = store, storage, interval
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
            except Exception:
                log.exception("expiry sweep failed")
