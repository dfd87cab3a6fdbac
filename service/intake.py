"""Taking a submission in (v1 and v2 alike): read and validate the body, fetch the inputs, admit the job."""

import asyncio
import time

from fastapi import Request
from pydantic import ValidationError

from schemas import MODEL_SLUG, InpaintRequest, describe_validation_error
from service.errors import ApiError
from service.inputs import check_webhook_url, load_input
from service.job_service import JobService, run_blocking
from service.jobs import JobRecord
from service.logs import redact_url


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
    return bytes(body)


async def parse_request(request: Request, slug: str, limit: int) -> InpaintRequest:
    if slug != MODEL_SLUG:
        raise ApiError(404, f"model {slug!r} not found (this deployment serves {MODEL_SLUG!r})")
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.lower():
        raise ApiError(400, f"request body must be JSON (Content-Type: application/json), got {content_type!r}")
    body = await read_body(request, limit)
    if not body.strip():
        raise ApiError(400, "request body is empty: send a JSON object with image, mask and prompt")
    try:
        return InpaintRequest.model_validate_json(body)
    except ValidationError as exc:
        message, field = describe_validation_error(exc)
        if any(e["type"] in ("json_invalid", "model_type") for e in exc.errors()):
            message, field = "request body must be a JSON object: " + exc.errors()[0]["msg"], None
        raise ApiError(400, message, field=field) from None


async def accept(request: Request, slug: str, owner: str, jobs: JobService, base_url: str, sync: bool,
                 deadline: float | None = None) -> tuple[JobRecord, dict[str, str]]:
    """Validate, limit, fetch inputs (within `deadline`, a monotonic time), charge, store, dispatch.
    Returns the record and extra headers."""
    settings = jobs.settings
    inpaint = await parse_request(request, slug, settings.max_body_bytes)
    if inpaint.webhook_url is not None:
        if sync:
            raise ApiError(400, "parameter 'webhook_url': webhooks are for the v2 API only", field="webhook_url")
        await check_webhook_url(inpaint.webhook_url, settings.allow_private_urls)
    if jobs.dispatcher.state == "error":
        raise ApiError(503, f"the worker tier is unavailable: {jobs.dispatcher.error}")

    def early_checks() -> None:
        jobs.check_rate(owner)
        jobs.check_room()

    await run_blocking(early_checks)
    limits, client = request.app.state.fetch_limits, request.app.state.http
    fetching = asyncio.gather(load_input(inpaint.image, "image", limits, client),
                              load_input(inpaint.mask, "mask", limits, client))
    try:
        async with asyncio.timeout_at(None if deadline is None else asyncio.get_running_loop().time()
                                      + (deadline - time.monotonic())):
            image, mask = await fetching
    except TimeoutError:
        raise ApiError(504, "fetching the image and mask took longer than the request's time budget "
                            f"({settings.v1_timeout_seconds:g}s for v1); use smaller or faster inputs, or v2") from None
    record, left = await run_blocking(
        lambda: jobs.admit(owner, inpaint.params(), image, mask, base_url, api="v1" if sync else "v2",
                           image_from=redact_url(inpaint.image), mask_from=redact_url(inpaint.mask)))
    request.state.request_id = record.id
    return record, ({} if left is None else {"x-remaining-credits": str(left)})
