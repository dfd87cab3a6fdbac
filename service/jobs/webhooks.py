"""Signed webhooks (the Standard Webhooks scheme, as Replicate uses), one attempt at a time.

Each delivery is a POST of the job's final body with headers
  webhook-id:        msg_<request id> (the same on every retry, so receivers can dedupe)
  webhook-timestamp: unix seconds
  webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
where key is the base64-decoded part of the deployment secret after "whsec_".
An attempt re-checks the URL against the SSRF rules, connects to the checked address, and has one overall
deadline: a receiver that answers slowly, a byte at a time, cannot hold a sender longer than that. Only the
status line and headers are read. Retries, with exponential backoff, are the caller's: `deliver` below (the
Modal function), or the embedded server's durable sender (service/jobs/webhook_sender.py).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time

import httpx

from service.jobs.errors import BadInput
from service.jobs.safe_urls import check_url_shape, pinned_url, resolve_checked_sync
from service.logs import log_event, redact_url

log = logging.getLogger(__name__)

ATTEMPT_SECONDS = 15.0  # one attempt, connecting to reading the answer's headers


class Undeliverable(Exception):
    """Retrying cannot help: the URL is refused by the SSRF guard or is not a URL httpx can send to."""


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


def payload_of(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def attempt(url: str, payload: bytes, msg_id: str, secret: str, allow_private: bool,
                  deadline: float = ATTEMPT_SECONDS) -> str | None:
    """One signed POST. None when the receiver answered 2xx; else why not (retry later). Undeliverable when
    retrying cannot help."""
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, msg_id, timestamp, payload)}
    try:
        parts, port = check_url_shape(url, "webhook_url")
        async with asyncio.timeout(deadline):
            ip = await asyncio.to_thread(resolve_checked_sync, parts.hostname, port, "webhook_url", allow_private)
            headers["host"] = parts.netloc.rsplit("@", 1)[-1]
            async with httpx.AsyncClient(timeout=deadline, follow_redirects=False, trust_env=False) as client:
                async with client.stream("POST", pinned_url(parts, ip, port), content=payload, headers=headers,
                                         extensions={"sni_hostname": parts.hostname}) as response:
                    status = response.status_code  # the body is never read: nothing a receiver sends holds us
    except BadInput as exc:
        raise Undeliverable(exc.message) from None
    except httpx.InvalidURL as exc:  # e.g. a URL longer than httpx takes
        raise Undeliverable(f"not a URL that can be sent to ({exc})") from None
    except TimeoutError:
        return f"no answer within {deadline:g}s"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"


def logged_attempt(url: str, payload: bytes, msg_id: str, secret: str, allow_private: bool, number: int,
                   deadline: float = ATTEMPT_SECONDS) -> str | None:
    """`attempt` run to its end on this thread, with its log line."""
    try:
        failed = asyncio.run(attempt(url, payload, msg_id, secret, allow_private, deadline))
    except Undeliverable as exc:
        log_event("webhook", webhook_id=msg_id, url=redact_url(url), attempt=number, delivered=False,
                  error=str(exc), final=True)
        raise
    log_event("webhook", webhook_id=msg_id, url=redact_url(url), attempt=number, delivered=failed is None,
              **({"error": failed} if failed else {}))
    return failed


def deliver(url: str, body: dict, msg_id: str, secret: str, allow_private: bool = False, attempts: int = 5,
            first_delay: float = 1.0, deadline: float = ATTEMPT_SECONDS) -> bool:
    """Up to `attempts` attempts with exponential backoff (Modal's deliver_webhook function)."""
    payload, delay = payload_of(body), first_delay
    for number in range(1, attempts + 1):
        try:
            if logged_attempt(url, payload, msg_id, secret, allow_private, number, deadline) is None:
                return True
        except Undeliverable:
            return False
        if number < attempts:
            time.sleep(delay)
            delay *= 2
    return False
