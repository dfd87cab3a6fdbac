"""GET /metrics: the Prometheus text format, for any API key or the METRICS_TOKEN."""

import hmac

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE

from service.http.auth import authenticate, presented_key
from service.http.errors import ApiError
from service.http.routes.deps import API_KEY
from service.http.routes.docs import ERRORS_DOC
from service.jobs.waiting import run_blocking

router = APIRouter()
# Declared for OpenAPI; `scraper` reads the header itself.
METRICS_BEARER = HTTPBearer(auto_error=False, scheme_name="MetricsToken",
                            description="METRICS_TOKEN (or any API key) as `Authorization: Bearer <token>`.")


async def scraper(request: Request, _key: str | None = Security(API_KEY),
                  _token: HTTPAuthorizationCredentials | None = Security(METRICS_BEARER)) -> None:
    """The METRICS_TOKEN, or any API key; else 401 (constant-time compare)."""
    settings = request.app.state.jobs.settings
    presented = presented_key(request)
    if settings.metrics_token and presented and hmac.compare_digest(presented.encode(), settings.metrics_token.encode()):
        return
    try:
        authenticate(request, settings.api_keys)
    except ApiError as exc:
        raise ApiError(401, f"{exc.message}; GET /metrics also takes the METRICS_TOKEN setting's token") from None


@router.get("/metrics", tags=["ops"], operation_id="metrics", summary="Prometheus metrics",
            dependencies=[Security(scraper)], response_class=Response,
            responses={200: {"description": "The Prometheus text exposition format (version 0.0.4).",
                             "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
                       401: ERRORS_DOC[401], 500: ERRORS_DOC[500], 503: ERRORS_DOC[503]},
            description="Jobs ended by status and failure kind, queue depth, inference time and batch size "
                        "histograms, GPU seconds and cost, refused submissions, cold starts, the day's spend and "
                        "the spend cap: deployment-wide totals read from the job store. The request latency "
                        "histogram is the answering web process's own. Readable with any API key or with the "
                        "METRICS_TOKEN (`Authorization: Bearer`).")
async def metrics(request: Request):
    body = await run_blocking(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
