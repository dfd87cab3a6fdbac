"""Structured logs: one JSON line per HTTP request and per job state change.

API keys are never logged (only a hash, `owner`); URLs lose their query string,
fragment and credentials, where signed URLs keep their secrets.
"""

import json
import logging
import time
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI, Request

events = logging.getLogger("inpaint.events")


def redact_url(value: str) -> str:
    """scheme://host/path of a URL, or a short description of an inline payload."""
    if "://" not in value[:16]:
        return f"<inline {len(value)} chars>"
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def log_event(event: str, **fields) -> None:
    events.info(json.dumps({"event": event, **fields}, default=str, separators=(",", ":")))


def install_access_log(app: FastAPI) -> None:
    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        log_event(
            "request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 2),
            request_id=response.headers.get("x-request-id"),
            owner=getattr(request.state, "owner", None),
        )
        return response
