"""The JSON bodies of a finished job, shared by the HTTP handlers and webhook delivery."""

import time
from typing import Any

from schemas import FailedBody, ImageInfo, ResultBody
from service.jobs.ports import ResultStorage
from service.jobs.records import JobRecord


def failed_body(record: JobRecord) -> dict[str, Any]:
    return FailedBody(request_id=record.id, error=record.error or "failed",
                      failure=record.failure.value if record.failure else None,
                      metrics=record.metrics(), warnings=record.warnings).model_dump(mode="json")


def completed_body(record: JobRecord, storage: ResultStorage, base_url: str) -> dict[str, Any]:
    expires_in = int(record.expires_at - time.time())
    urls = [storage.url(img.key, base_url, expires_in) for img in record.images]
    return ResultBody(
        request_id=record.id,
        status=record.status,
        output=urls[0] if len(urls) == 1 else urls,
        images=[ImageInfo(url=url, content_type=img.content_type, file_size=img.file_size, seed=img.seed,
                          seed_str=str(img.seed)) for url, img in zip(urls, record.images)],
        seed=record.seeds[0] if record.seeds else None,
        seed_str=str(record.seeds[0]) if record.seeds else None,
        metrics=record.metrics(),
        warnings=record.warnings,
    ).model_dump(mode="json")


def final_body(record: JobRecord, storage: ResultStorage) -> dict[str, Any]:
    """What GET /v2/requests/{id} answers for a finished job (and what a webhook receives)."""
    if record.status.value == "COMPLETED":
        return completed_body(record, storage, record.base_url)
    return failed_body(record)
