"""v2: submit (optionally waiting for the end: `Prefer: wait=N`), poll status (with long-poll) or stream it, fetch
the result, cancel."""

import json
import re

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from schemas import CancelResponse, FailedBody, JobStatus, ResultBody, StatusBody, SubmitResponse
from service.jobs.bodies import completed_body, failed_body
from service.http.errors import ApiError
from service.http import submit_headers
from service.http.intake import accept
from service.jobs.service import JobService
from service.jobs.waiting import run_blocking
from service.jobs.records import JobRecord
from service.http.routes.deps import base_url, caller, jobs_of, owned_job, polled_job
from service.http.routes.docs import (CREDITS_HEADER, ERRORS_DOC, PREFER_APPLIED_HEADER, PREFER_PARAM,
                                      REQUEST_BODY_DOC, REQUEST_ID_HEADER, REQUEST_LINKS, SLUG_PARAM, STREAM_DOC,
                                      WARNING_HEADER)

router = APIRouter(prefix="/v2", tags=["v2"])
MAX_LONG_POLL = 30.0
MAX_PREFER_WAIT = 60
PREFER_WAIT = re.compile(r"\s*wait\s*=\s*\"?([^\s\";]*)\"?\s*", re.IGNORECASE)  # RFC 7240: wait=N, N maybe quoted
HEARTBEAT_SECONDS = 15.0  # a comment line on an idle stream, so proxies keep it open
STREAM_SEND_TIMEOUT = 30.0  # a client that takes no bytes for this long is dropped
FAILED_DOC = {422: {"model": FailedBody, "description": "The job FAILED; `error` says why, `failure` as a code."}}


def failed_response(record: JobRecord) -> JSONResponse:
    return JSONResponse(failed_body(record), status_code=422, headers={"x-request-id": record.id})


def preferred_wait(request: Request) -> int | None:
    """N of `Prefer: wait=N` (RFC 7240; other preferences are ignored), None without it. A wait that is not a
    whole number from 1 to MAX_PREFER_WAIT is refused with a 400 before the job is taken in."""
    for preference in ",".join(request.headers.getlist("prefer")).split(","):
        if (match := PREFER_WAIT.fullmatch(preference.split(";")[0])) is None:
            continue
        value = match.group(1)
        if not (value.isascii() and value.isdigit() and len(value) <= 3 and 1 <= int(value) <= MAX_PREFER_WAIT):
            raise ApiError(400, f"header 'Prefer': wait must be a whole number of seconds from 1 to "
                                f"{MAX_PREFER_WAIT}, got {value!r}", field="Prefer")
        return int(value)
    return None


async def status_body(jobs: JobService, record: JobRecord) -> dict:
    waiting = jobs.waiting
    body = await waiting.read(waiting.status, record) if record.status == JobStatus.QUEUED else waiting.status(record)
    return body.model_dump(exclude_none=True, mode="json") | {"metrics": record.metrics()}


@router.post("/{slug}", operation_id="submit_v2", openapi_extra={**REQUEST_BODY_DOC, "parameters": [PREFER_PARAM]},
             summary="Submit a job",
             description="Queue a job and answer at once with its id and URLs to poll. With `Prefer: wait=N` "
                         "(1..60), answer when the job ends (its result body, or 422 when FAILED) or after N "
                         "seconds (the submit body), whichever is first.",
             responses={200: {"model": SubmitResponse | ResultBody, "links": REQUEST_LINKS,
                              "description": "The submit body; with `Prefer: wait=N`, the result body when the "
                                             "job completed within N seconds.",
                              "headers": {**REQUEST_ID_HEADER, **CREDITS_HEADER, **WARNING_HEADER,
                                          **PREFER_APPLIED_HEADER}},
                        **FAILED_DOC, **ERRORS_DOC})
async def submit_v2(request: Request, slug: str = SLUG_PARAM, owner: str = Security(caller),
                    _headers: None = Depends(submit_headers.documented)):
    wait = preferred_wait(request)
    base = base_url(request)
    jobs = jobs_of(request)
    record, headers = await accept(request, slug, owner, jobs, base, sync=False)
    headers = {"x-request-id": record.id, **headers}
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
        outcome = await jobs.waiting.wait_until_done(record.id, wait)
        if outcome is not None and outcome.record.status == JobStatus.FAILED:
            return JSONResponse(failed_body(outcome.record), status_code=422, headers=headers)
        if outcome is not None:
            return JSONResponse(completed_body(outcome.record, jobs.storage, base), headers=headers)
    body = SubmitResponse(request_id=record.id, status_url=f"{base}/v2/requests/{record.id}/status",
                          response_url=f"{base}/v2/requests/{record.id}",
                          cancel_url=f"{base}/v2/requests/{record.id}/cancel")
    return JSONResponse(body.model_dump(mode="json"), headers=headers)


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


@router.get("/requests/{request_id}/status/stream", operation_id="stream_status", summary="Job status as a stream",
            description="Server-sent events: a `status` event with the status body now and at each change "
                        "(queue position, progress, status), ending after the COMPLETED or FAILED event. "
                        "Comment lines keep an idle stream open.",
            response_class=EventSourceResponse, responses={200: STREAM_DOC, **ERRORS_DOC})
async def stream_status(request: Request, record: JobRecord = Depends(polled_job)):
    jobs = jobs_of(request)

    async def events():
        async for current in jobs.waiting.watch(record.id):
            body = failed_body(current) if current.status == JobStatus.FAILED else await status_body(jobs, current)
            yield ServerSentEvent(json.dumps(body), event="status")

    return EventSourceResponse(events(), ping=HEARTBEAT_SECONDS, send_timeout=STREAM_SEND_TIMEOUT,
                               headers={"x-request-id": record.id})


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
