"""Taking a validated request in: the key's rate, the deployment's daily cap, the key's credits and the queue
cap, then the job stored and handed to a worker. A refused request is never charged."""

import logging
import secrets
import time
import uuid
from typing import Any

from schemas import InpaintParams
from service.config import Settings
from service.jobs.errors import JobError, NoWorker, OutOfCredits, StoreUnavailable, Throttled
from service.jobs.failures import Failure
from service.jobs.idempotency import bind, fingerprint, key_name
from service.jobs.lifecycle import JobLifecycle
from service.jobs.limits import (check_rate, credit_budget, refund_credits, refund_daily, remaining_credits,
                                 spend_credits, spend_daily)
from service.jobs.ports import Counters, Dispatcher, InputBlobs, JobRecords
from service.jobs.records import JobRecord
from service.jobs.tallies import check_spend_cap, count_refused
from service.logs import log_event

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, settings: Settings, records: JobRecords, inputs: InputBlobs, counters: Counters,
                 dispatcher: Dispatcher, lifecycle: JobLifecycle, hand_over_inputs: bool = False):
        self.settings = settings
        self.records, self.inputs, self.counters, self.dispatcher = records, inputs, counters, dispatcher
        self.lifecycle = lifecycle
        # Where this process's dispatcher runs the jobs (embedded), the images decoded at submit go to the worker.
        self.hand_over_inputs = hand_over_inputs
        self.clock = time.time  # what day it is for the spend cap (tests move it)

    def check_rate(self, owner: str) -> None:
        check_rate(self.counters, owner, self.settings.rate_limit_per_second, self.settings.rate_limit_burst)

    def check_room(self) -> None:
        """A cheap early refusal before inputs are fetched; `admit` decides (as atomically as the store can)."""
        if self.settings.max_queue_depth > 0 and self.records.unfinished() >= self.settings.max_queue_depth:
            raise self._queue_full()

    def _queue_full(self) -> Throttled:
        return Throttled(f"the queue is full ({self.settings.max_queue_depth} jobs waiting or running); "
                         f"retry shortly", 5)

    def admit(self, owner: str, params: InpaintParams, image: bytes, mask: bytes, base_url: str,
              idempotency_key: str | None = None, **fields: Any) -> tuple[JobRecord, int | None]:
        """Charge, store and dispatch a validated request. Returns the record and the credits left (or None).
        `idempotency_key`: the caller's Idempotency-Key; the same request sent again with it gets the job it made
        first, charged once (service/jobs/idempotency.py). `fields`: see _admit."""
        job_id = str(uuid.uuid4())
        if idempotency_key is None:
            return self._admit(job_id, owner, params, image, mask, base_url, **fields)
        name = key_name(owner, idempotency_key)
        request = fingerprint(params.model_dump(mode="json"), fields.get("cancel_after"), image, mask)
        if (first := bind(self.records, name, job_id, request)) is not None:
            return first, self._credits_left(owner)
        try:
            return self._admit(job_id, owner, params, image, mask, base_url, key_name=name, **fields)
        except BaseException:
            try:
                self.records.unbind_key(name, job_id)  # no job holds the key: a retry may make one
            except Exception:
                log.warning("could not free the Idempotency-Key of refused request %s", job_id, exc_info=True)
            raise

    def _credits_left(self, owner: str) -> int | None:
        budget = credit_budget(self.settings, owner)
        return None if budget is None else remaining_credits(self.counters, owner, budget)

    def _admit(self, job_id: str, owner: str, params: InpaintParams, image: bytes, mask: bytes, base_url: str,
               decoded: tuple[Any, Any] | None = None, received: float | None = None,
               warnings: list[str] | None = None, cancel_after: float | None = None, key_name: str | None = None,
               **log_fields: Any) -> tuple[JobRecord, int | None]:
        """`decoded`: the image and mask as decoded by validation (handed to this process's worker);
        `received`: when the request arrived (time.monotonic()), for the job's intake time;
        `warnings`: what the caller should know about inputs that were accepted (kept in the record);
        `cancel_after`: seconds from now after which the job, unfinished, ends FAILED (Cancel-After);
        `key_name`: the store's name of its Idempotency-Key.
        `log_fields` go into the job's QUEUED log line."""
        settings = self.settings
        self._check_spend_cap()
        spend_daily(self.counters, params.samples, settings.daily_image_cap)
        try:
            left = spend_credits(self.counters, owner, params.samples, credit_budget(settings, owner))
        except JobError as exc:
            refund_daily(self.counters, params.samples, settings.daily_image_cap)
            if isinstance(exc, OutOfCredits):
                self._count_refused("credits")
            raise
        now = time.time()
        record = JobRecord(id=job_id, owner=owner, params=params.model_dump(mode="json"), created_at=now,
                           expires_at=now + settings.result_ttl_seconds, base_url=base_url,
                           webhook_url=params.webhook_url, inputs_key=f"{job_id}-{secrets.token_urlsafe(16)}",
                           warnings=warnings or [], idempotency_key=key_name, cancel_after=cancel_after,
                           deadline=None if cancel_after is None else now + cancel_after)
        self._store(record, image, mask, received)
        # Logged before the dispatch, so it always precedes the worker's PROCESSING line.
        log_event("job", request_id=record.id, status="QUEUED", owner=owner, samples=params.samples, **log_fields)
        if decoded is not None and self.hand_over_inputs:
            self.lifecycle.decoded.put(record.id, *decoded)
        try:
            (self.dispatcher.hold if record.low_priority else self.dispatcher.submit)(record.id)
        except Exception as exc:
            log.exception("dispatching job %s failed", record.id)
            # fail() gives back the credits and the day's images: the job never ran
            self.lifecycle.fail(record.id, Failure.UNAVAILABLE, f"the job could not be handed to a worker ({exc})")
            raise NoWorker(f"no worker could take the job right now ({type(exc).__name__}); nothing was charged, "
                           f"retry shortly", retry_after=5) from None
        return record, left

    def _check_spend_cap(self) -> None:
        try:
            check_spend_cap(self.counters, self.settings.spend_cap_usd_per_day, self.clock())
        except Throttled:
            self._count_refused("spend_cap")
            raise

    def _count_refused(self, reason: str) -> None:
        try:
            count_refused(self.counters, reason)
        except Exception:  # a metric is not worth failing the answer for
            log.warning("could not count a request refused for %s", reason, exc_info=True)

    def _store(self, record: JobRecord, image: bytes, mask: bytes, received: float | None) -> None:
        """The inputs, then the record under the queue cap; on any refusal the charges are given back."""
        try:
            self.inputs.put(record.inputs_at, image, mask)
            if received is not None:
                record.intake_time = time.monotonic() - received
            created = self.records.create(record, self.settings.max_queue_depth)
        except Exception as exc:  # StoreUnavailable, StorageError, or a networked store's own errors (Modal)
            self.lifecycle.fault = str(exc)
            self._forget(record)
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(f"storing the job failed ({type(exc).__name__}: {exc})") from exc
        self.lifecycle.fault = None
        if not created:
            self._forget(record)
            raise self._queue_full()

    def _forget(self, record: JobRecord) -> None:
        """Undo what a refused request left: its inputs and its charges (best effort when the store is failing)."""
        try:
            self.inputs.delete([record.inputs_at])
        except Exception:
            log.warning("could not delete the inputs of refused request %s", record.id)
        try:
            refund_credits(self.counters, record)
            refund_daily(self.counters, record.samples, self.settings.daily_image_cap)
        except Exception:
            log.warning("could not give back the charges of refused request %s", record.id)
