"""FastAPI dependencies: the job service, the caller (API-key security scheme), the caller's own job."""

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from service.auth import authenticate
from service.job_service import JobService
from service.jobs import JobRecord

# Declared for OpenAPI (the Authorize button); `authenticate` reads the same headers.
API_KEY = APIKeyHeader(name="x-api-key", auto_error=False,
                       description="Your API key (Segmind's header). `Authorization: Bearer <key>` works too.")
BEARER = HTTPBearer(auto_error=False, description="The API key as a bearer token.")


async def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs


def base_url(request: Request) -> str:
    """PUBLIC_BASE_URL; without it (loopback only, see service/__main__.py) the address the request came to."""
    settings = request.app.state.jobs.settings
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


async def caller(request: Request, _key: str | None = Security(API_KEY), _bearer=Security(BEARER)) -> str:
    """The owner id (a hash) of the request's key; kept on the request for the access log. Async on purpose:
    a plain `def` dependency costs a trip through the thread pool for microseconds of work."""
    request.state.owner = authenticate(request, request.app.state.jobs.settings.api_keys)
    return request.state.owner


async def owned_job(request_id: str, request: Request, owner: str = Security(caller)) -> JobRecord:
    request.state.request_id = request_id  # for the access log, found or not
    jobs = request.app.state.jobs
    return await jobs.read(jobs.owned, owner, request_id)
