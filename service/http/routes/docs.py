"""OpenAPI pieces shared by the routers: the request body with a runnable example, error responses, links."""

from fastapi import Path as PathParam

from schemas import MODEL_SLUG, ErrorBody, InpaintRequest

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
# Documented as an enum; any other slug is still routed here and answered 404.
SLUG_PARAM = PathParam(description="the model", json_schema_extra={"enum": [MODEL_SLUG]})
REQUEST_LINKS = {
    name: {"operationId": op, "parameters": {"request_id": "$response.body#/request_id"}}
    for name, op in (("GetStatus", "get_status"), ("StreamStatus", "stream_status"), ("GetResult", "get_result"),
                     ("Cancel", "cancel"))
}
ERROR_MEANINGS = {
    400: "A parameter is missing or invalid; the message names it.",
    401: "Missing or unknown API key.",
    404: "Unknown model slug, or a request id that is unknown, expired or another key's.",
    406: "This key's image credits are used up.",
    409: "Submits: the request first sent with this Idempotency-Key is still being taken in; retry shortly.",
    413: "The request body is too large.",
    422: "The job FAILED (cancelled, blocked by the safety checker, ...), or an Idempotency-Key was reused with "
         "another body.",
    429: "Rate limit, full queue, daily image cap or daily spend cap; see Retry-After.",
    500: "Internal error.",
    502: "A worker or the result storage failed.",
    503: "No worker can take jobs right now; retry after Retry-After.",
    504: "v1 only: the job did not finish in time; it goes on running, poll it with v2.",
}
ERRORS_DOC = {code: {"model": ErrorBody, "description": text} for code, text in ERROR_MEANINGS.items()}

REQUEST_ID_HEADER = {"x-request-id": {"description": "The job's id.", "schema": {"type": "string"}}}
CREDITS_HEADER = {"x-remaining-credits": {"description": "Image credits this key has left (only when the key "
                                                         "has a budget).", "schema": {"type": "integer"}}}
WARNING_HEADER = {"x-inpaint-warning": {
    "description": "Extension: what you should know about inputs that were accepted as they are (e.g. a mask of "
                   "another aspect ratio than the image, stretched to fit); several are separated by '; '. Absent "
                   "when there is none. The same text is in the v2 bodies' `warnings`.",
    "schema": {"type": "string"}}}
PREFER_PARAM = {
    "name": "Prefer", "in": "header", "required": False, "example": "wait=10",
    "description": "Extension (RFC 7240): `wait=N`, N a whole number of seconds from 1 to 60, answers when the job "
                   "ends (the result body, or 422 when FAILED) or after N seconds (the submit body), whichever is "
                   "first. A wait outside 1..60 is a 400; other preferences are ignored.",
    "schema": {"type": "string"},
}
PREFER_APPLIED_HEADER = {"Preference-Applied": {
    "description": "`wait=N` when the request asked for `Prefer: wait=N` and the answer waited for it.",
    "schema": {"type": "string"}}}
STREAM_DOC = {
    "description": "`text/event-stream`: `event: status` with the status body (a `FailedBody` when FAILED) as "
                   "`data`, once now and at each change; the stream ends after the COMPLETED or FAILED event. "
                   "Lines starting with `:` are heartbeats.",
    "content": {"text/event-stream": {"schema": {  # one event, as schemathesis and OpenAPI 3.2 read SSE
        "type": "object", "required": ["event", "data"],
        "properties": {"event": {"const": "status"},
                       "data": {"type": "string", "contentMediaType": "application/json",
                                "contentSchema": {"type": "object", "required": ["request_id", "status"]}}}}}},
    "headers": REQUEST_ID_HEADER,
}
V1_HEADERS = {
    **REQUEST_ID_HEADER,
    "x-seed-value": {"description": "The seed of each image, comma-separated.", "schema": {"type": "string"}},
    "x-generation-time": {"description": "Seconds spent in the denoising pipeline.", "schema": {"type": "string"}},
    "x-gpu-seconds": {"description": "Extension: the job's share of the worker's busy time (metrics.gpu_seconds).",
                      "schema": {"type": "string"}},
    "x-cost-usd": {"description": "Extension: gpu_seconds priced at the deployment's GPU type (metrics.cost_usd); "
                                  "absent when no GPU type is set.", "schema": {"type": "string"}},
    **CREDITS_HEADER,
    **WARNING_HEADER,
}
