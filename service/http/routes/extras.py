"""Beyond the Segmind API: the playground page, /health and /usage."""

from pathlib import Path

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import HTMLResponse

from service.http.errors import ApiError
from service.jobs.limits import USAGE_DAYS
from service.jobs.errors import StoreUnavailable
from schemas import HealthResponse, UsageResponse
from service.http.routes.deps import caller, jobs_of
from service.http.routes.docs import ERRORS_DOC

router = APIRouter()
PLAYGROUND_HTML = Path(__file__).resolve().parent.parent / "playground.html"


@router.get("/", include_in_schema=False)
def playground():
    """The web playground (no key needed to load it; the page asks for one and keeps it in the browser)."""
    return HTMLResponse(PLAYGROUND_HTML.read_text(encoding="utf-8"))


@router.get("/health", tags=["ops"], operation_id="health", summary="Service health", response_model=HealthResponse,
            description="`status` is ok, loading, degraded or error; `queue_depth` counts jobs queued or running.")
async def health(request: Request):
    jobs = jobs_of(request)
    dispatcher = jobs.dispatcher
    status = {"ready": "ok"}.get(dispatcher.state, dispatcher.state)
    try:
        depth = await jobs.waiting.read(jobs.records.unfinished)
    except StoreUnavailable as exc:
        depth, jobs.lifecycle.fault = None, str(exc)
    if jobs.lifecycle.fault and status == "ok":
        status = "degraded"
    return {
        "status": status,
        "model": jobs.settings.model_name,
        "demo": jobs.settings.demo,
        "device": dispatcher.device,
        "queue_depth": depth,
        "error": dispatcher.error or jobs.lifecycle.fault,
    }


@router.get("/usage", tags=["account"], operation_id="usage", response_model=UsageResponse, responses=ERRORS_DOC,
            summary="Your key's usage per day",
            description="Jobs, images, GPU seconds and their cost in USD per UTC day for the calling key, "
                        "newest first. Cost is priced at the deployment's GPU type; null for a day with jobs that "
                        "have no price, as in their metrics (no GPU type is set, e.g. on CPU).")
async def usage(request: Request, days: int = Query(7, ge=1, le=USAGE_DAYS,
                                                   description=f"How many days back, 1..{USAGE_DAYS}."),
                owner: str = Security(caller)):
    jobs = jobs_of(request)
    return UsageResponse(days=await jobs.waiting.read(jobs.waiting.usage, owner, days))

