"""Taking a submission in (v1 and v2 alike): read and validate the body, fetch the inputs, admit the job."""

import asyncio
import io
import time

import httpx
from fastapi import Request
from PIL import Image
from pydantic import ValidationError

from schemas import MODEL_SLUG, InpaintRequest, describe_validation_error
from service.http.errors import ApiError
from service.http.submit_headers import cancel_after, idempotency_key
from service.jobs.errors import NoWorker, size_text
from service.http.inputs import (FetchLimits, check_extended_size, check_webhook_url, extend_warnings, fetch_url,
                                 looks_like_url, mask_warnings, read_input)
from service.jobs.service import JobService
from service.jobs.waiting import run_blocking
from service.jobs.records import JobRecord
from service.logs import redact_url

WARNING_HEADER = "x-inpaint-warning"


def _black_pixel_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 0).save(buffer, format="PNG")
    return buffer.getvalue()


# A request without a mask (mask_prompt or extend_* only) is stored with this one: nothing drawn, which the worker
# stretches over the image like any mask. Every store then keeps two non-empty inputs per job, as before.
NO_MASK_PNG = _black_pixel_png()


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than {size_text(limit)}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise ApiError(413, f"request body is larger than {size_text(limit)}")
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
    Returns the record and extra headers (credits left, warnings about the inputs)."""
    received = time.monotonic()
    settings = jobs.settings
    key, deadline_after = idempotency_key(request), cancel_after(request)
    inpaint = await parse_request(request, slug, settings.max_body_bytes)
    if inpaint.webhook_url is not None:
        if sync:
            raise ApiError(400, "parameter 'webhook_url': webhooks are for the v2 API only", field="webhook_url")
        await check_webhook_url(inpaint.webhook_url, settings.allow_private_urls)
    if jobs.dispatcher.state == "error":
        raise NoWorker(f"the worker tier is unavailable: {jobs.dispatcher.error}")

    def early_checks() -> None:
        jobs.admission.check_rate(owner)
        jobs.admission.check_room()

    limits = request.app.state.fetch_limits
    urls = {field: value for field, value in (("image", inpaint.image), ("mask", inpaint.mask))
            if value is not None and looks_like_url(value)}
    fetched: dict[str, bytes] = {}
    if urls:  # refuse a limited caller before fetching anything for them
        await run_blocking(early_checks)
        fetch_started = time.monotonic()
        fetched = await fetch_inputs(urls, limits, request.app.state.http, deadline, settings.v1_timeout_seconds)
        received += time.monotonic() - fetch_started  # the remote host's time is not the service's own

    def take_in() -> tuple[JobRecord, int | None]:
        """All the blocking work of a submit, in one thread hop: limits, decoding the inputs, storing the job."""
        if not urls:
            early_checks()
        image_bytes, image = read_input(inpaint.image, "image", limits, fetched.get("image"))
        mask_bytes, mask = NO_MASK_PNG, None
        if inpaint.mask is not None:
            mask_bytes, mask = read_input(inpaint.mask, "mask", limits, fetched.get("mask"))
        check_extended_size(inpaint, image, limits)
        params = inpaint.params()
        warnings = ([] if mask is None else mask_warnings(image, mask)) + extend_warnings(params, image)
        return jobs.admission.admit(owner, params, image_bytes, mask_bytes, base_url,
                          decoded=(image, mask or Image.open(io.BytesIO(NO_MASK_PNG))),
                          received=received, idempotency_key=key, cancel_after=deadline_after, warnings=warnings,
                          api="v1" if sync else "v2", image_from=redact_url(inpaint.image),
                          mask_from=None if inpaint.mask is None else redact_url(inpaint.mask))

    record, left = await run_blocking(take_in)
    request.state.request_id = record.id
    headers = {} if left is None else {"x-remaining-credits": str(left)}
    if record.warnings:
        headers[WARNING_HEADER] = "; ".join(record.warnings)
    return record, headers


async def fetch_inputs(urls: dict[str, str], limits: FetchLimits, client: httpx.AsyncClient,
                       deadline: float | None, v1_timeout: float) -> dict[str, bytes]:
    """The bytes behind the inputs given as URLs, fetched concurrently on the event loop."""
    fetching = asyncio.gather(*(fetch_url(url, field, limits, client) for field, url in urls.items()))
    try:
        async with asyncio.timeout_at(None if deadline is None else asyncio.get_running_loop().time()
                                      + (deadline - time.monotonic())):
            return dict(zip(urls, await fetching))
    except TimeoutError:
        raise ApiError(504, "fetching the image and mask took longer than the request's time budget "
                            f"({v1_timeout:g}s for v1); use smaller or faster inputs, or v2") from None
