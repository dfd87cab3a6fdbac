"""Structured logs: one JSON line per HTTP request and per job state change.

API keys are never logged (only a hash, `owner`); URLs lose their query string,
fragment and credentials, where signed URLs keep their secrets.
"""

import json
import logging
import time
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI

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


def log_path(path: str) -> str:
    """The path as logged: a result file's token is its credential, so it is never written down."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "files":
        parts[3] = "<token>"
    return "/".join(parts)


def log_event(event: str, **fields) -> None:
    events.info(json.dumps({"event": event, **fields}, default=str, separators=(",", ":")))


class AccessLog:
    """Plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot status path)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        seen = {"status": 500, "request_id": None}

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        seen["request_id"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            state = scope.get("state") or {}
            fields = {"request_id": seen["request_id"] or state.get("request_id"), "owner": state.get("owner")}
            if seen["status"] >= 400 and state.get("error"):
                fields["error"] = state["error"]  # why it was refused, in the same line
            log_event("request", method=scope["method"], path=log_path(scope["path"]), status=seen["status"],
                      ms=round((time.perf_counter() - started) * 1000, 2),
                      **{k: v for k, v in fields.items() if v is not None})


def install_access_log(app: FastAPI) -> None:
    app.add_middleware(AccessLog)
