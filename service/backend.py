"""The one composition root: from Settings to a job service with its store, storage, dispatcher and hooks.

`python -m service` builds the embedded backend; app.py builds the Modal one from
the same pieces, so a setting honoured in one place is honoured in the other.
"""

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from service.config import Settings
from service.jobs.service import JobService
from service.stores.results import make_storage

log = logging.getLogger(__name__)


@dataclass
class Backend:
    settings: Settings
    jobs: JobService
    background: tuple = field(default=())  # objects with start()/stop(), run for the app's lifetime


def persisted_secret(settings: Settings, name: str, generate) -> str:
    """STATE_DIR/<name>, created with generate() on first use (owner-only), so it is stable across restarts."""
    path = Path(settings.state_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (path.is_file() and path.read_text().strip()):
        path.write_text(generate() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def ensure_api_key(settings: Settings) -> str | None:
    """With no API_KEYS, use a generated key kept in STATE_DIR. Returns it if generated."""
    if settings.api_keys:
        return None
    key = persisted_secret(settings, "api_key", lambda: "sk-local-" + secrets.token_urlsafe(24))
    settings.api_keys = [key]
    return key


def build_embedded(settings: Settings, make_inpainter: Callable[[], Any]) -> Backend:
    """SQLite records and counters, input files, local (or S3) results, an in-process worker and sweep.
    `make_inpainter` loads the model (called on the worker thread, so the server answers while it loads)."""
    from service.jobs.housekeeping import Sweeper
    from service.jobs.webhook_sender import WebhookSender
    from service.jobs.webhooks import new_secret
    from service.jobs.worker_thread import EmbeddedDispatcher
    from service.stores.sqlite import FileInputs, SQLiteState, SQLiteWebhooks

    state_dir = Path(settings.state_dir)
    state = SQLiteState(state_dir / "jobs.sqlite3")
    storage = make_storage(settings)
    dispatcher = EmbeddedDispatcher(make_inpainter,
                                    shutdown_grace=settings.shutdown_grace_seconds,
                                    job_timeout=settings.job_timeout_seconds,
                                    batch_max_images=settings.batch_max_images, batch_wait_ms=settings.batch_wait_ms)
    if not settings.webhook_secret:
        settings.webhook_secret = persisted_secret(settings, "webhook_secret", new_secret)
    webhooks = WebhookSender(SQLiteWebhooks(state.db), state, storage, settings.webhook_secret,
                             settings.allow_private_urls, settings.webhook_attempts,
                             settings.webhook_first_delay_seconds, settings.webhook_timeout_seconds)
    jobs = JobService(settings, state, FileInputs(state_dir / "inputs"), state, storage, dispatcher,
                      changes=state.changes, on_terminal=webhooks.on_terminal, inline_reads=True,
                      hand_over_inputs=True)
    dispatcher.bind(jobs)
    interval = min(settings.sweep_interval_seconds, max(settings.result_ttl_seconds / 2, 1))
    sweeper = Sweeper(jobs, interval, lease=settings.lease_seconds, check=state.problem)
    # Started in this order, stopped in reverse: webhooks outlive the worker that triggers them.
    return Backend(settings, jobs, background=(webhooks, dispatcher, sweeper))


def build_modal(settings: Settings, dicts: dict[str, Any], spawn: Callable[[str], Any] | None = None,
                call_from_id: Callable[[str], Any] | None = None, gpu: str = "",
                on_terminal: Callable[[Any], None] | None = None) -> Backend:
    """modal.Dicts for state (`records`, `active`, `expiry`, `counters`), inputs and results in the result
    storage (S3), dispatch by spawn. The GPU containers build it without spawn (they never dispatch)."""
    from service.stores.modal_dicts import DictCounters, DictRecords
    from service.stores.modal_dispatch import ModalDispatcher
    from service.stores.object_inputs import ObjectInputs

    records = DictRecords(dicts["records"], dicts["active"], dicts["expiry"])
    dispatcher = ModalDispatcher(records, spawn, call_from_id, gpu, batched=(settings.batch_max_images or 1) > 1)
    storage = make_storage(settings)
    jobs = JobService(settings, records, ObjectInputs(storage), DictCounters(dicts["counters"]), storage,
                      dispatcher, on_terminal=on_terminal)
    return Backend(settings, jobs)
