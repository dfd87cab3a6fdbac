"""Signed webhooks (the Standard Webhooks scheme, as Replicate uses).

Each delivery is a POST of the job's final body with headers
  webhook-id:        msg_<request id> (the same on every retry, so receivers can dedupe)
  webhook-timestamp: unix seconds
  webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
where key is the base64-decoded part of the deployment secret after "whsec_".
Delivery re-checks the URL against the SSRF rules, connects to the checked
address, and retries non-2xx answers and network errors with exponential backoff.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from service.jobs.bodies import final_body
from service.jobs.errors import BadInput
from service.jobs.records import JobRecord
from service.logs import log_event, redact_url
from service.jobs.ports import ResultStorage
from service.jobs.safe_urls import check_url_shape, pinned_url, resolve_checked_sync

log = logging.getLogger(__name__)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: dict, body: bytes, tolerance: int = 300, now: float | None = None) -> bool:
    """Receiver-side check: signature matches and the timestamp is recent."""
    timestamp = int(headers["webhook-timestamp"])
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, headers["webhook-id"], timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in headers["webhook-signature"].split())


def deliver(url: str, body: dict, msg_id: str, secret: str, allow_private: bool = False,
            attempts: int = 5, first_delay: float = 1.0, timeout: float = 10.0) -> bool:
    payload = json.dumps(body, separators=(",", ":")).encode()
    delay = first_delay
    for attempt in range(1, attempts + 1):
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(timestamp), "webhook-signature": sign(secret, msg_id, timestamp, payload)}
        outcome = ""
        try:
            parts, port = check_url_shape(url, "webhook_url")
            ip = resolve_checked_sync(parts.hostname, port, "webhook_url", allow_private)
            headers["host"] = parts.netloc.rsplit("@", 1)[-1]
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                response = client.post(pinned_url(parts, ip, port), content=payload, headers=headers,
                                       extensions={"sni_hostname": parts.hostname})
            if 200 <= response.status_code < 300:
                log_event("webhook", webhook_id=msg_id, url=redact_url(url), status=response.status_code,
                          attempt=attempt, delivered=True)
                return True
            outcome = f"HTTP {response.status_code}"
        except BadInput as exc:
            log_event("webhook", webhook_id=msg_id, url=redact_url(url), delivered=False, error=exc.message)
            return False  # refused by the SSRF guard: retrying will not help
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        log_event("webhook", webhook_id=msg_id, url=redact_url(url), attempt=attempt, delivered=False, error=outcome)
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    return False


class WebhookSender:
    """Delivers webhooks of finished jobs on background threads (embedded default)."""

    def __init__(self, storage: ResultStorage, secret: str, allow_private: bool, attempts: int,
                 first_delay: float):
        self.storage, self.secret, self.allow_private = storage, secret, allow_private
        self.attempts, self.first_delay = attempts, first_delay
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")

    def on_terminal(self, record: JobRecord) -> None:
        if record.webhook_url:
            try:
                self.pool.submit(self.send, record)
            except RuntimeError:  # shutting down: deliver on the caller's thread rather than drop it
                self.send(record)

    def send(self, record: JobRecord) -> bool:
        return deliver(record.webhook_url, final_body(record, self.storage), f"msg_{record.id}", self.secret,
                       self.allow_private, self.attempts, self.first_delay)

    def start(self) -> None: ...

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=False)

