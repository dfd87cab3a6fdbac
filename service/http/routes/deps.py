"""FastAPI dependencies: the caller (an API-key security scheme) and the caller's own job.

Kept to two small async dependencies: each one costs FastAPI's resolver tens of microseconds per request,
which the status endpoint pays on every poll. The job service is read from app.state, not injected.
"""

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.http.auth import authenticate
from service.jobs.service import JobService
from service.jobs.records import JobRecord

# Declared for OpenAPI (the Authorize button); `authenticate` reads the same header, or Authorization: Bearer.
API_KEY = APIKeyHeader(name="x-api-key", auto_error=False,
                       description="Your API key (Segmind's header). `Authorization: Bearer <key>` works too.")


def jobs_of(request: Request) -> JobService:
    return request.app.state.jobs


def base_url(request: Request) -> str:
    """PUBLIC_BASE_URL; without it (loopback only, see service/__main__.py) the address the request came to."""
    settings = request.app.state.jobs.settings
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


async def caller(request: Request, _key: str | None = Security(API_KEY)) -> str:
    """The owner id (a hash) of the request's key; kept on the request for the access log. Async on purpose:
    a plain `def` dependency costs a trip through the thread pool for microseconds of work."""
    request.state.owner = authenticate(request, request.app.state.jobs.settings.api_keys)
    return request.state.owner


async def owned_job(request_id: str, request: Request, owner: str = Security(caller)) -> JobRecord:
    request.state.request_id = request_id  # for the access log, found or not
    jobs = request.app.state.jobs
    return await jobs.waiting.read(jobs.waiting.owned, owner, request_id)


async def polled_job(request_id: str, request: Request, owner: str = Security(caller)) -> JobRecord:
    """owned_job for the status and result polls, under the key's poll limit (checked before any store read)."""
    request.app.state.poll_limit.take(owner)
    return await owned_job(request_id, request, owner)
