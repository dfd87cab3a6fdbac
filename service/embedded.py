"""The embedded default on one machine: SQLite records, local (or S3) results, an in-process worker."""

import logging
import secrets
from pathlib import Path

from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.expiry import Sweeper
from service.jobs import SQLiteJobStore
from service.storage import make_storage
from service.webhooks import WebhookSender, new_secret
from service.worker import EmbeddedDispatcher

log = logging.getLogger(__name__)


def local_inpainter_factory(settings: Settings):
    def build():
        from inference import Inpainter  # torch is imported here, in the worker thread, not at web-tier import

        return Inpainter(settings.model_dir, safety_checker=settings.safety_checker, xformers=settings.xformers,
                         compile_unet=settings.torch_compile, feather_px=settings.feather_px)

    return build


def persisted_secret(settings: Settings, name: str, generate) -> str:
    """STATE_DIR/<name>, created with generate() on first use (owner-only), so it is stable across restarts."""
    path = Path(settings.state_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
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


def ensure_webhook_secret(settings: Settings) -> str:
    """WEBHOOK_SECRET, or a generated one kept in STATE_DIR."""
    if not settings.webhook_secret:
        settings.webhook_secret = persisted_secret(settings, "webhook_secret", new_secret)
    return settings.webhook_secret


def build_embedded_app(settings: Settings, inpainter_factory=None) -> FastAPI:
    store = SQLiteJobStore(Path(settings.state_dir) / "jobs.sqlite3")
    storage = make_storage(settings)
    dispatcher = EmbeddedDispatcher(store, storage, inpainter_factory or local_inpainter_factory(settings),
                                    shutdown_grace=settings.shutdown_grace_seconds,
                                    job_timeout=settings.job_timeout_seconds)
    interval = min(settings.sweep_interval_seconds, max(settings.result_ttl_seconds / 2, 1))
    sweeper = Sweeper(store, storage, interval, resubmit=dispatcher.submit, lease=settings.lease_seconds)
    webhooks = WebhookSender(storage, ensure_webhook_secret(settings), settings.allow_private_urls,
                             settings.webhook_attempts, settings.webhook_first_delay_seconds)
    store.on_terminal = webhooks.on_terminal
    app = create_app(settings, store, storage, dispatcher, background=(dispatcher, sweeper, webhooks))
    app.state.store = store
    app.state.dispatcher = dispatcher
    return app
