"""Every error leaves as {"error": "..."} with the contract's status code. The job layer's refusals
(service/jobs/errors.py) and the reasons a job failed (service/jobs/failures.py) get theirs from the two
tables here."""

import logging
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.jobs.errors import (BadInput, JobError, KeyInUse, KeyReused, NoWorker, NotFound, OutOfCredits,
                                 StoreUnavailable, Throttled, size_text)
from service.jobs.failures import Failure

log = logging.getLogger(__name__)

JOB_ERROR_STATUS: dict[type[JobError], int] = {
    BadInput: 400,
    NotFound: 404,
    OutOfCredits: 406,
    KeyInUse: 409,
    KeyReused: 422,
    Throttled: 429,
    NoWorker: 503,
}


# v1 answers a FAILED job with this status (v2 answers every FAILED job with 422 and the code in `failure`).
FAILURE_STATUS: dict[Failure, int] = {
    Failure.CANCELLED: 422,
    Failure.BLOCKED: 422,
    Failure.TIMED_OUT: 504,
    Failure.STORAGE: 502,
    Failure.UNAVAILABLE: 503,
    Failure.WORKER_LOST: 502,
    Failure.EXPIRED: 504,
    Failure.MASK_NOT_FOUND: 422,
    Failure.INTERNAL: 500,
}


def v1_status(failure: Failure | None) -> int:
    return FAILURE_STATUS[failure or Failure.INTERNAL]


class ApiError(Exception):
    """An HTTP answer decided by the HTTP layer itself (authentication, body size, unknown model, v1 timeout)."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_error_status(exc: JobError) -> tuple[int, dict[str, str]]:
    """The status code and headers of a job-layer refusal."""
    status = next(JOB_ERROR_STATUS[kind] for kind in type(exc).__mro__ if kind in JOB_ERROR_STATUS)
    headers = {}
    if isinstance(exc, Throttled):
        headers = {"Retry-After": str(exc.retry_after), "x-rate-limit-reset-at-utc": _utc(exc.reset_at)}
    elif isinstance(exc, OutOfCredits):
        headers = {"x-remaining-credits": str(exc.remaining)}
    elif isinstance(exc, (NoWorker, KeyInUse)) and exc.retry_after:
        headers = {"Retry-After": str(exc.retry_after)}
    return status, headers


MAX_HEADER_BYTES = 64 * 1024


class HeaderLimit:
    """431 for requests whose headers add up to more than MAX_HEADER_BYTES (uvicorn sets no such limit).
    Plain ASGI middleware: it runs before routing and costs one sum per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            response = error_response(431, f"request headers are larger than {size_text(MAX_HEADER_BYTES)}")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(HeaderLimit)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        request.state.error = exc.message  # the access log line says why
        return error_response(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError):
        request.state.error = exc.message
        status, headers = job_error_status(exc)
        return error_response(status, exc.message, exc.field, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for item in exc.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("path", "query", "body"))
            parts.append(f"parameter '{where}': {item.get('msg')}")
        request.state.error = "; ".join(parts) or "invalid request"
        return error_response(400, request.state.error)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable):
        log.error("store unavailable on %s %s: %s", request.method, request.url.path, exc)
        request.app.state.jobs.lifecycle.fault = str(exc)  # /health shows it until a write succeeds again
        return error_response(503, "the server cannot store jobs right now (its storage is full or failing); "
                                   "nothing was charged, retry later", headers={"Retry-After": "10"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")
