"""The embedded server's webhook sender.

A delivery is written to the job store when its job ends and leaves it only once delivered or given up, so a
restart resumes what was pending (a delivery cut off mid-attempt is sent again: receivers dedupe on the
webhook-id). Attempts run on one event loop of their own, each under an overall deadline, at most PER_KEY at
once for one key and MAX_IN_FLIGHT in all: one key's slow receivers cannot hold another key's deliveries.
"""

import asyncio
import logging
import threading
import time
from collections import Counter

from service.jobs.bodies import final_body
from service.jobs.ports import JobRecords, PendingWebhooks, ResultStorage
from service.jobs.records import JobRecord, PendingWebhook
from service.jobs.webhooks import ATTEMPT_SECONDS, Undeliverable, attempt, payload_of
from service.logs import log_event, redact_url

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 32
PER_KEY = 2
POLL_SECONDS = 1.0  # how often the store is looked at for retries that came due (a new delivery wakes it)


class WebhookSender:
    def __init__(self, pending: PendingWebhooks, records: JobRecords, storage: ResultStorage, secret: str,
                 allow_private: bool, attempts: int, first_delay: float, deadline: float = ATTEMPT_SECONDS):
        self.pending, self.records, self.storage = pending, records, storage
        self.secret, self.allow_private = secret, allow_private
        self.attempts, self.first_delay, self.deadline = attempts, first_delay, deadline
        self._in_flight: dict[str, str] = {}  # job id -> owner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def on_terminal(self, record: JobRecord) -> None:
        """Called once by whoever ended the job, on any thread."""
        if record.webhook_url:
            self.pending.add(record.id, record.owner, record.webhook_url, time.time())
            self._poke()

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Attempts in flight are abandoned (sent again after a restart); nothing pending is lost."""
        self._stopping = True
        self._poke()
        if self._thread:
            self._thread.join(5)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has closed
                pass

    async def _run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        tasks: set[asyncio.Task] = set()
        while not self._stopping:
            try:
                self._start_due(tasks)
            except Exception:
                log.exception("reading the pending webhooks failed; trying again shortly")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_due(self, tasks: set[asyncio.Task]) -> None:
        busy = Counter(self._in_flight.values())
        for entry in self.pending.due(time.time(), limit=MAX_IN_FLIGHT + len(self._in_flight)):
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                break
            if entry.job_id in self._in_flight or busy[entry.owner] >= PER_KEY:
                continue
            self._in_flight[entry.job_id] = entry.owner
            busy[entry.owner] += 1
            task = asyncio.create_task(self._send(entry))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _send(self, entry: PendingWebhook) -> None:
        msg_id, number = f"msg_{entry.job_id}", entry.attempts + 1
        try:
            record = self.records.get(entry.job_id)
            if record is None:  # expired meanwhile: there is no body to send any more
                log_event("webhook", webhook_id=msg_id, delivered=False, error="the job expired", final=True)
                self.pending.done(entry.job_id)
                return
            payload = payload_of(final_body(record, self.storage))
            failed = await attempt(entry.url, payload, msg_id, self.secret, self.allow_private, self.deadline)
        except Undeliverable as exc:
            log_event("webhook", webhook_id=msg_id, url=redact_url(entry.url), attempt=number, delivered=False,
                      error=str(exc), final=True)
            self.pending.done(entry.job_id)
            return
        except Exception as exc:  # e.g. the store: the attempt counts, and is made again later
            log.exception("webhook %s: attempt %d failed", msg_id, number)
            failed = f"internal error ({type(exc).__name__})"
        finally:
            self._in_flight.pop(entry.job_id, None)
            self._poke()
        self._after(entry, number, failed)

    def _after(self, entry: PendingWebhook, number: int, failed: str | None) -> None:
        gave_up = failed is not None and number >= self.attempts
        log_event("webhook", webhook_id=f"msg_{entry.job_id}", url=redact_url(entry.url), attempt=number,
                  delivered=failed is None, **({"error": failed} if failed else {}), **({"final": True} if gave_up
                                                                                         else {}))
        if failed is None or gave_up:
            self.pending.done(entry.job_id)
        else:
            self.pending.retry(entry.job_id, number, time.time() + self.first_delay * 2 ** (number - 1))
