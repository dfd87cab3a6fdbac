"""The embedded backend's composition root (`python -m service`): SQLite, input files, local or S3 results, the
worker (a process of its own, or a thread of this one), the sweep and the webhook sender."""

import secrets
from pathlib import Path
from typing import Any, Callable

from service.backend import Backend
from service.config import Settings
from service.jobs.service import JobService
from service.stores.results import make_storage


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


def build_embedded(settings: Settings, make_inpainter: Callable[[], Any] | None = None) -> Backend:
    """SQLite records and counters, input files, local (or S3) results, a worker and the sweep.
    The worker runs in a process of its own, which loads the model from the settings (`python -m service`): the
    HTTP handlers and the model then share no interpreter lock, so polling clients cannot slow a job. With
    `make_inpainter`, a model factory, it runs on a thread of this process instead (tests, embedding). Either way
    the images decoded at submit are handed to it rather than decoded again (service/jobs/handover.py)."""
    from service.jobs.housekeeping import Sweeper
    from service.jobs.webhook_sender import WebhookSender
    from service.jobs.webhooks import new_secret
    from service.jobs.worker_thread import EmbeddedDispatcher
    from service.stores.sqlite import FileInputs, SQLiteState, SQLiteWebhooks

    state_dir = Path(settings.state_dir)
    state = SQLiteState(state_dir / "jobs.sqlite3")
    storage = make_storage(settings)
    if not settings.webhook_secret:
        settings.webhook_secret = persisted_secret(settings, "webhook_secret", new_secret)
    if make_inpainter is None:
        from service.jobs.worker_process import ProcessDispatcher
        from service.worker_main import main as worker_main

        dispatcher = ProcessDispatcher(worker_main, settings.model_dump(mode="json"), settings.shutdown_grace_seconds)
    else:
        dispatcher = EmbeddedDispatcher(make_inpainter, shutdown_grace=settings.shutdown_grace_seconds,
                                        job_timeout=settings.job_timeout_seconds,
                                        batch_max_images=settings.batch_max_images,
                                        batch_wait_ms=settings.batch_wait_ms)
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
