"""v1: run a job and answer with the image itself (or JSON with base64 images)."""

import base64
import time

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse, Response

from schemas import MODEL_SLUG, ErrorBody, JobStatus, V1Base64Response, V1MultiResponse
from service.http import submit_headers
from service.http.errors import ApiError, v1_status
from service.http.intake import accept
from service.jobs.bodies import failed_body
from service.jobs.records import JobOutcome
from service.jobs.service import JobService
from service.jobs.waiting import run_blocking
from service.http.routes.deps import base_url, caller, jobs_of
from service.http.routes.docs import ERRORS_DOC, REQUEST_BODY_DOC, SLUG_PARAM, V1_HEADERS

router = APIRouter(prefix="/v1", tags=["v1"])
IMAGE_TYPES = {"image/jpeg": {}, "image/png": {}, "image/webp": {}}
V1_RESPONSES = {
    200: {"description": "The image bytes; JSON with base64 (`V1Base64Response`) when base64=true, or "
                         "`V1MultiResponse` when samples > 1.",
          "content": {**IMAGE_TYPES, "application/json": {"schema": {"anyOf": [
              {"$ref": "#/components/schemas/V1Base64Response"}, {"$ref": "#/components/schemas/V1MultiResponse"}]}}},
          "headers": V1_HEADERS},
    **ERRORS_DOC,
    422: {"description": "The job FAILED (cancelled, blocked by the safety checker): `FailedBody`; or this "
                         "Idempotency-Key was used with another body: `ErrorBody`.",
          "content": {"application/json": {"schema": {"anyOf": [
              {"$ref": "#/components/schemas/FailedBody"}, {"$ref": "#/components/schemas/ErrorBody"}]}}}},
    504: {"model": ErrorBody, "description": "Not finished in time; the job goes on: poll it with v2."},
}


@router.post("/{slug}", operation_id="run_v1", openapi_extra=REQUEST_BODY_DOC, responses=V1_RESPONSES,
             summary="Run a job and wait for the image",
             description="Blocks until the image is ready (up to the deployment's v1 timeout, counted from the "
                         "moment the request arrived). Longer jobs: use v2.")
async def run_v1(request: Request, slug: str = SLUG_PARAM, owner: str = Security(caller),
                 _headers: None = Depends(submit_headers.documented)):
    jobs = jobs_of(request)
    timeout = jobs.settings.v1_timeout_seconds
    deadline = time.monotonic() + timeout
    base = base_url(request)
    record, credit_headers = await accept(request, slug, owner, jobs, base, sync=True, deadline=deadline)
    outcome = await jobs.waiting.wait_until_done(record.id, max(0.0, deadline - time.monotonic()))
    if outcome is None:
        raise ApiError(
            504,
            f"the request did not finish within {timeout:g}s. It is still running as request {record.id}: "
            f"poll {base}/v2/requests/{record.id}/status, and use the v2 API (POST {base}/v2/{MODEL_SLUG}) "
            f"for long jobs",
            headers={"x-request-id": record.id, **credit_headers},
        )
    return await v1_answer(outcome, jobs, credit_headers)


def cost_headers(done) -> dict[str, str]:
    """What the job used of the GPU (metrics.gpu_seconds, metrics.cost_usd) as headers, where known."""
    headers = {}
    if done.gpu_seconds is not None:
        headers["x-gpu-seconds"] = f"{done.gpu_seconds:.4f}"
    if done.cost_usd is not None:
        headers["x-cost-usd"] = f"{done.cost_usd:.8f}"
    return headers


async def v1_answer(outcome: JobOutcome, jobs: JobService, credit_headers: dict[str, str]) -> Response:
    done = outcome.record
    if done.status == JobStatus.FAILED:
        return JSONResponse(failed_body(done), status_code=v1_status(done.failure),
                            headers={"x-request-id": done.id, **credit_headers})
    files = outcome.files or await run_blocking(
        lambda: [(jobs.storage.read(img.key), img.content_type) for img in done.images])
    headers = {"x-request-id": done.id, "x-seed-value": ",".join(str(s) for s in done.seeds),
               "x-generation-time": f"{done.inference_time or 0:.3f}", **cost_headers(done), **credit_headers}
    content_type = files[0][1]
    if len(files) > 1:
        body = V1MultiResponse(images=[base64.b64encode(data).decode() for data, _ in files], seeds=done.seeds,
                               seeds_str=[str(s) for s in done.seeds], content_type=content_type,
                               request_id=done.id)
        return JSONResponse(body.model_dump(mode="json"), headers=headers)
    if done.params.get("base64"):
        body = V1Base64Response(image=base64.b64encode(files[0][0]).decode(), seed=done.seeds[0],
                                seed_str=str(done.seeds[0]), content_type=content_type, request_id=done.id)
        return JSONResponse(body.model_dump(mode="json"), headers=headers)
    return Response(files[0][0], media_type=content_type, headers=headers)
