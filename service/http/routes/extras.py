"""Beyond the Segmind API: the playground page, /health and /usage."""

from pathlib import Path

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import HTMLResponse, Response

from service.http.errors import ApiError
from service.jobs.limits import USAGE_DAYS
from service.jobs.tallies import spend_today
from service.jobs.errors import StoreUnavailable
from schemas import HealthResponse, UsageResponse
from service.http.routes.deps import caller, jobs_of
from service.http.routes.docs import ERRORS_DOC

router = APIRouter()
PLAYGROUND_HTML = Path(__file__).resolve().parent.parent / "playground.html"
# A brush over a square, inline so that packaging carries it with the code.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect x="2" y="2" width="28" height="28" rx="6" fill="#3755d6"/>'
    '<path d="M8 23c4-1 5-6 9-7s6 2 7 4" fill="none" stroke="#e0115f" stroke-width="5" stroke-linecap="round"/>'
    '</svg>'
)


@router.get("/", include_in_schema=False)
def playground():
    """The web playground (no key needed to load it; the page asks for one and keeps it in the browser)."""
    return HTMLResponse(PLAYGROUND_HTML.read_text(encoding="utf-8"))


@router.get("/favicon.svg", include_in_schema=False)
@router.get("/favicon.ico", include_in_schema=False)
def favicon():
    """The page's icon (an SVG, also where browsers look by default)."""
    return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"cache-control": "public, max-age=86400"})


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
                        "have no price, as in their metrics (no GPU type is set, e.g. on CPU). Also the whole "
                        "deployment's spend this UTC day and its daily spend cap.")
async def usage(request: Request, days: int = Query(7, ge=1, le=USAGE_DAYS,
                                                   description=f"How many days back, 1..{USAGE_DAYS}."),
                owner: str = Security(caller)):
    jobs = jobs_of(request)
    return UsageResponse(days=await jobs.waiting.read(jobs.waiting.usage, owner, days),
                         spend_today_usd=await jobs.waiting.read(spend_today, jobs.counters, jobs.admission.clock()),
                         spend_cap_usd_per_day=jobs.settings.spend_cap_usd_per_day)

