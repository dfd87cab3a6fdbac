"""Structured logs: one JSON line per HTTP request and per job state change, set up the same way by every
entry point (`python -m service` and each Modal function). No web framework here.

API keys are never logged (only a hash, `owner`); URLs lose their query string,
fragment and credentials, where signed URLs keep their secrets.
"""

import json
import logging
import sys
from urllib.parse import urlsplit, urlunsplit

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


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr: `inpaint.events` lines are JSON already; the rest get a short prefix."""
    root = logging.getLogger()
    if any(getattr(h, "_inpaint", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._inpaint = True
    root.addHandler(handler)
    root.setLevel(level)
