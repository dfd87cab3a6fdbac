"""The FastAPI app: CONTRACT.md over HTTP. Backends (job store, dispatcher, storage) are passed in."""

import asyncio
import base64
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from schemas import MODEL_SLUG, InpaintRequest, JobStatus, describe_validation_error
from schemas.responses import ErrorBody, Progress, ResultBody, StatusBody, SubmitResponse
from service.auth import authenticate
from service.bodies import completed_body, failed_body
from service.config import Settings
from service.docs_ui import install_docs
from service.errors import ApiError, install_error_handlers
from service.inputs import FetchLimits, check_webhook_url, load_input, make_client
from service.jobs import JobRecord, JobStore, params_of
from service.limits import check_queue, check_rate, refund_credits, spend_credits, spend_daily
from service.logs import install_access_log, log_event, redact_url
from service.storage import LocalStorage, ResultStorage
from service.worker import Dispatcher

log = logging.getLogger(__name__)

# 8x8 PNGs, so the documented example is a request that really runs.
EXAMPLE_IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4f4ABK2IYlRhQCQCxBMyEZ4uU0wAAAABJRU5ErkJggg=="
EXAMPLE_MASK = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEElEQVR4nGP8zwABTAwUMQBJQQEPeWDz+AAAAABJRU5ErkJggg=="
REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {
            "schema": InpaintRequest.model_json_schema(),
            "example": {"image": EXAMPLE_IMAGE, "mask": EXAMPLE_MASK, "prompt": "a red armchair", "seed": 1},
        }},
    },
}
# Documented as an enum; any other slug is still routed here and answered 404 as the contract says.
SLUG_PARAM = PathParam(description="the model", json_schema_extra={"enum": [MODEL_SLUG]})
PLAYGROUND_HTML = Path(__file__).with_name("playground.html")
MAX_LONG_POLL = 30.0
STORE_POLL_INTERVAL = 0.1  # long-poll cadence where the store cannot notify (Modal)
REQUEST_LINKS = {
    name: {"operationId": op, "parameters": {"request_id": "$response.body#/request_id"}}
    for name, op in (("GetStatus", "get_status"), ("GetResult", "get_result"), ("Cancel", "cancel"))
}
ERRORS_DOC = {code: {"model": ErrorBody} for code in (400, 401, 404, 406, 413, 422, 429, 500, 502)}


def create_app(
    settings: Settings,
    store: JobStore,
    storage: ResultStorage,
    dispatcher: Dispatcher,
    background: tuple = (),
) -> FastAPI:
    """`background`: objects with start()/stop() run for the app's lifetime (worker, expiry sweep)."""
    limits = FetchLimits(
        max_bytes=settings.input_max_bytes,
        max_pixels=settings.input_max_pixels,
        connect_timeout=settings.fetch_connect_timeout,
        read_timeout=settings.fetch_read_timeout,
        max_redirects=settings.fetch_max_redirects,
        allow_private=settings.allow_private_urls,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for item in background:
            item.start()
        app.state.http = make_client(limits)
        try:
            yield
        finally:
            await app.state.http.aclose()
            for item in reversed(background):
                item.stop()

    app = FastAPI(
        title="inpaint",
        version="0.1.0",
        description="Stable Diffusion 1.5 inpainting, compatible with Segmind's sd1.5-inpainting API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    install_access_log(app)

    # ---- helpers -------------------------------------------------------------------------

    def base_url(request: Request) -> str:
        return (settings.public_base_url or str(request.base_url)).rstrip("/")

    def owner_of(request: Request) -> str:
        """Authenticate; the owner (a key hash) is kept on the request for the access log."""
        request.state.owner = authenticate(request, settings.api_keys)
        return request.state.owner

    def owned_record(request: Request, request_id: str) -> JobRecord:
        owner = owner_of(request)
        record = store.get(request_id)
        if record is None or record.owner != owner:  # another key's job reads exactly like an unknown one
            raise ApiError(404, f"request {request_id} not found (unknown, expired, or not yours)")
        return record

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise ApiError(413, f"request body is larger than {limit} bytes")
        return bytes(body)

    async def accept(request: Request, slug: str, sync: bool) -> tuple[JobRecord, dict[str, str]]:
        """Validate, limit, fetch inputs, charge, store, dispatch. Returns the record and extra headers."""
        owner = owner_of(request)
        if slug != MODEL_SLUG:
            raise ApiError(404, f"model {slug!r} not found (this deployment serves {MODEL_SLUG!r})")
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type.lower():
            raise ApiError(400, f"request body must be JSON (Content-Type: application/json), got {content_type!r}")
        body = await read_body(request)
        if not body.strip():
            raise ApiError(400, "request body is empty: send a JSON object with image, mask and prompt")
        try:
            inpaint = InpaintRequest.model_validate_json(body)
        except ValidationError as exc:
            message, field = describe_validation_error(exc)
            if any(e["type"] in ("json_invalid", "model_type") for e in exc.errors()):
                message, field = "request body must be a JSON object: " + exc.errors()[0]["msg"], None
            raise ApiError(400, message, field=field) from None
        if inpaint.webhook_url is not None:
            if sync:
                raise ApiError(400, "parameter 'webhook_url': webhooks are for the v2 API only", field="webhook_url")
            await check_webhook_url(inpaint.webhook_url, settings.allow_private_urls)
        if dispatcher.state == "error":
            raise ApiError(502, f"the worker tier is unavailable: {dispatcher.error}")
        check_rate(store, owner, settings.rate_limit_per_second, settings.rate_limit_burst)
        check_queue(store, settings.max_queue_depth)
        client = request.app.state.http
        image, mask = await asyncio.gather(
            load_input(inpaint.image, "image", limits, client),
            load_input(inpaint.mask, "mask", limits, client),
        )
        spend_daily(store, inpaint.samples, settings.daily_image_cap)
        left = spend_credits(store, owner, inpaint.samples, settings.budget_for(owner))
        headers = {} if left is None else {"x-remaining-credits": str(left)}
        now = time.time()
        record = JobRecord(
            id=str(uuid.uuid4()),
            owner=owner,
            params=params_of(inpaint.model_dump()),
            created_at=now,
            expires_at=now + settings.result_ttl_seconds,
            base_url=base_url(request),
            webhook_url=inpaint.webhook_url,
        )
        store.create(record, image, mask)
        log_event("job", request_id=record.id, status="QUEUED", owner=owner, api="v1" if sync else "v2",
                  image=redact_url(inpaint.image), mask=redact_url(inpaint.mask), samples=inpaint.samples)
        dispatcher.submit(record.id)
        return record, headers

    async def wait_for_change(record: JobRecord, wait: float) -> JobRecord:
        """Return as soon as the job's status differs from `record`'s, or after `wait` seconds."""
        deadline = time.monotonic() + wait
        changes = getattr(store, "changes", None)
        if changes is None:  # no in-process notifications (Modal): poll the store
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(STORE_POLL_INTERVAL, left))
                current = store.get(record.id)
                if current is None or current.status != record.status:
                    return current or record
            return store.get(record.id) or record
        with changes.subscribe(record.id) as subscription:
            current = store.get(record.id) or record
            while current.status == record.status and (left := deadline - time.monotonic()) > 0:
                await subscription.wait(left)
                current = store.get(record.id) or current
        return current

    def status_body(record: JobRecord) -> dict[str, Any]:
        body = StatusBody(request_id=record.id, status=record.status, metrics=record.metrics(), error=record.error)
        if record.status == JobStatus.QUEUED:
            body.queue_position = store.queue_position(record.id)
        if record.status == JobStatus.PROCESSING and record.progress_total:
            body.progress = Progress(step=record.progress_step or 0, total=record.progress_total)
        return body.model_dump(exclude_none=True, mode="json") | {"metrics": record.metrics()}

    def failed_response(record: JobRecord) -> JSONResponse:
        return JSONResponse(failed_body(record), status_code=422)

    # ---- routes --------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def playground():
        """The web playground (no key needed to load it; the page asks for one and keeps it in the browser)."""
        return HTMLResponse(PLAYGROUND_HTML.read_text(encoding="utf-8"))

    @app.get("/health", tags=["ops"], operation_id="health")
    def health():
        return {
            "status": {"ready": "ok"}.get(dispatcher.state, dispatcher.state),
            "model": settings.model_name,
            "demo": settings.demo,
            "device": dispatcher.device,
            "queue_depth": store.count_unfinished(),
            "error": dispatcher.error,
        }

    @app.post("/v2/{slug}", tags=["v2"], openapi_extra=REQUEST_BODY_DOC, operation_id="submit_v2",
              responses={200: {"model": SubmitResponse, "links": REQUEST_LINKS}, **ERRORS_DOC})
    async def submit_v2(request: Request, slug: str = SLUG_PARAM):
        record, headers = await accept(request, slug, sync=False)
        base = base_url(request)
        body = SubmitResponse(
            request_id=record.id,
            status_url=f"{base}/v2/requests/{record.id}/status",
            response_url=f"{base}/v2/requests/{record.id}",
            cancel_url=f"{base}/v2/requests/{record.id}/cancel",
        ).model_dump(mode="json")
        return JSONResponse(body, headers={"x-request-id": record.id, **headers})

    @app.get("/v2/requests/{request_id}/status", tags=["v2"], operation_id="get_status",
             responses={200: {"model": StatusBody}, **ERRORS_DOC})
    async def get_status(request_id: str, request: Request,
                         wait: float = Query(0, ge=0, le=MAX_LONG_POLL,
                                             description="extension: long-poll up to this many seconds for a "
                                                         "status change")):
        record = owned_record(request, request_id)
        if wait > 0 and not record.status.terminal:
            record = await wait_for_change(record, wait)
        if record.status == JobStatus.FAILED:
            return failed_response(record)
        return status_body(record)

    @app.get("/v2/requests/{request_id}", tags=["v2"], operation_id="get_result",
             responses={200: {"model": ResultBody}, 202: {"model": StatusBody}, **ERRORS_DOC})
    def get_result(request_id: str, request: Request):
        record = owned_record(request, request_id)
        if record.status == JobStatus.FAILED:
            return failed_response(record)
        if record.status != JobStatus.COMPLETED:
            return JSONResponse(status_body(record), status_code=202)
        return completed_body(record, storage, base_url(request))

    @app.post("/v2/requests/{request_id}/cancel", tags=["v2"], operation_id="cancel", responses=ERRORS_DOC)
    def cancel(request_id: str, request: Request):
        record = owned_record(request, request_id)
        if record.status.terminal:
            return {"request_id": record.id, "status": record.status.value,
                    "message": "the job had already finished; nothing to cancel"}
        store.request_cancel(request_id)
        if record.status == JobStatus.QUEUED:
            dispatcher.cancel(request_id)
            failed = store.update(request_id, status=JobStatus.FAILED, error="cancelled", finished_at=time.time())
            if failed is not None:
                store.delete_inputs(request_id)
                refund_credits(store, failed)
                log_event("job", request_id=request_id, status="FAILED", error="cancelled")
                return {"request_id": record.id, "status": "CANCELLED", "message": "the job had not started; it will not run"}
        return {"request_id": record.id, "status": "CANCELLING",
                "message": "the job is running; it stops at the next denoising step and then reads FAILED 'cancelled'"}

    @app.post("/v1/{slug}", tags=["v1"], openapi_extra=REQUEST_BODY_DOC, operation_id="run_v1",
              responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}}, 504: {"model": ErrorBody},
                         **ERRORS_DOC})
    async def run_v1(request: Request, slug: str = SLUG_PARAM):
        record, credit_headers = await accept(request, slug, sync=True)
        outcome = await asyncio.to_thread(dispatcher.wait, record.id, settings.v1_timeout_seconds)
        if outcome is None:
            base = base_url(request)
            raise ApiError(
                504,
                f"the request did not finish within {settings.v1_timeout_seconds:g}s. It is still running as "
                f"request {record.id}: poll {base}/v2/requests/{record.id}/status, and use the v2 API "
                f"(POST {base}/v2/{MODEL_SLUG}) for long jobs",
                headers={"x-request-id": record.id, **credit_headers},
            )
        done = outcome.record
        if done.status == JobStatus.FAILED:
            status = 422 if done.error and ("safety checker" in done.error or done.error == "cancelled") else 500
            return JSONResponse({"error": done.error, "request_id": done.id}, status_code=status,
                                headers={"x-request-id": done.id, **credit_headers})
        files = outcome.files or [(storage.read(img.key), img.content_type) for img in done.images]
        headers = {
            "x-request-id": done.id,
            "x-seed-value": ",".join(str(s) for s in done.seeds),
            "x-generation-time": f"{done.inference_time or 0:.3f}",
            **credit_headers,
        }
        if len(files) > 1:
            return JSONResponse({"images": [base64.b64encode(data).decode() for data, _ in files],
                                 "seeds": done.seeds, "content_type": files[0][1], "request_id": done.id},
                                headers=headers)
        data, content_type = files[0]
        if done.params.get("base64"):
            return JSONResponse({"image": base64.b64encode(data).decode(), "seed": done.seeds[0],
                                 "content_type": content_type, "request_id": done.id}, headers=headers)
        return Response(data, media_type=content_type, headers=headers)

    if isinstance(storage, LocalStorage):
        @app.get("/files/{request_id}/{token}/{name}", tags=["results"], include_in_schema=False)
        def get_file(request_id: str, token: str, name: str):
            record = store.get(request_id)
            key = f"{request_id}/{token}/{name}"
            match = record and next((img for img in record.images if img.key == key), None)
            path = storage.path_for(key) if match else None
            if not match or path is None or not path.is_file():
                raise ApiError(404, "file not found or expired")
            return FileResponse(path, media_type=match.content_type,
                                headers={"cache-control": "private, max-age=3600"})

    return app
