"""v2: submit, poll status (with long-poll), fetch the result, cancel."""

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import JSONResponse

from schemas import CancelResponse, FailedBody, JobStatus, ResultBody, StatusBody, SubmitResponse
from service.jobs.bodies import completed_body, failed_body
from service.http import submit_headers
from service.http.intake import accept
from service.jobs.service import JobService
from service.jobs.waiting import run_blocking
from service.jobs.records import JobRecord
from service.http.routes.deps import base_url, caller, jobs_of, owned_job, polled_job
from service.http.routes.docs import (CREDITS_HEADER, ERRORS_DOC, REQUEST_BODY_DOC, REQUEST_ID_HEADER, REQUEST_LINKS,
                                      SLUG_PARAM, WARNING_HEADER)

router = APIRouter(prefix="/v2", tags=["v2"])
MAX_LONG_POLL = 30.0
FAILED_DOC = {422: {"model": FailedBody, "description": "The job FAILED; `error` says why, `failure` as a code."}}


def failed_response(record: JobRecord) -> JSONResponse:
    return JSONResponse(failed_body(record), status_code=422, headers={"x-request-id": record.id})


async def status_body(jobs: JobService, record: JobRecord) -> dict:
    waiting = jobs.waiting
    body = await waiting.read(waiting.status, record) if record.status == JobStatus.QUEUED else waiting.status(record)
    return body.model_dump(exclude_none=True, mode="json") | {"metrics": record.metrics()}


@router.post("/{slug}", operation_id="submit_v2", openapi_extra=REQUEST_BODY_DOC,
             summary="Submit a job", description="Queue a job and answer at once with its id and URLs to poll.",
             responses={200: {"model": SubmitResponse, "links": REQUEST_LINKS,
                              "headers": {**REQUEST_ID_HEADER, **CREDITS_HEADER, **WARNING_HEADER}}, **ERRORS_DOC})
async def submit_v2(request: Request, slug: str = SLUG_PARAM, owner: str = Security(caller),
                    _headers: None = Depends(submit_headers.documented)):
    base = base_url(request)
    record, headers = await accept(request, slug, owner, jobs_of(request), base, sync=False)
    body = SubmitResponse(request_id=record.id, status_url=f"{base}/v2/requests/{record.id}/status",
                          response_url=f"{base}/v2/requests/{record.id}",
                          cancel_url=f"{base}/v2/requests/{record.id}/cancel")
    return JSONResponse(body.model_dump(mode="json"), headers={"x-request-id": record.id, **headers})


@router.get("/requests/{request_id}/status", operation_id="get_status", summary="Job status",
            description="QUEUED (with `queue_position`, 0 = next), PROCESSING (with `progress`), COMPLETED, or "
                        "FAILED (HTTP 422). With `wait`, answers as soon as the status or progress changes.",
            responses={200: {"model": StatusBody}, **FAILED_DOC, **ERRORS_DOC})
async def get_status(request: Request, record: JobRecord = Depends(polled_job),
                     wait: float = Query(0, ge=0, le=MAX_LONG_POLL,
                                         description="extension: long-poll up to this many seconds for a change "
                                                     "of status or progress")):
    jobs = jobs_of(request)
    if wait > 0 and not record.status.terminal:
        record = await jobs.waiting.wait_for_change(record, wait)
    if record.status == JobStatus.FAILED:
        return failed_response(record)
    return await status_body(jobs, record)


@router.get("/requests/{request_id}", operation_id="get_result", summary="Job result",
            description="The image URLs once COMPLETED; 202 with the status body before; 422 when FAILED.",
            responses={200: {"model": ResultBody}, 202: {"model": StatusBody}, **FAILED_DOC, **ERRORS_DOC})
async def get_result(request: Request, record: JobRecord = Depends(polled_job)):
    jobs = jobs_of(request)
    if record.status == JobStatus.FAILED:
        return failed_response(record)
    if record.status != JobStatus.COMPLETED:
        return JSONResponse(await status_body(jobs, record), status_code=202)
    return completed_body(record, jobs.storage, base_url(request))


@router.post("/requests/{request_id}/cancel", operation_id="cancel", summary="Cancel a job",
             description="A queued job never runs; a running one stops at its next denoising step. Either way "
                         "it then reads FAILED 'cancelled' and its credits are given back.",
             responses={200: {"model": CancelResponse}, **ERRORS_DOC})
async def cancel(request: Request, record: JobRecord = Depends(owned_job)) -> CancelResponse:
    return await run_blocking(jobs_of(request).lifecycle.cancel, record)
