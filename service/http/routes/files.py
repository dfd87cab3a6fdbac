"""Result files served by the web tier: from local disk (embedded) or from the modal.Volume (Modal's default).
With S3 the clients fetch from the bucket and this route is not mounted."""

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from service.http.errors import ApiError
from service.http.routes.deps import jobs_of
from service.jobs.waiting import run_blocking
from service.stores.results import LocalStorage

router = APIRouter()
CACHE_CONTROL = {"cache-control": "private, max-age=3600"}


@router.get("/files/{request_id}/{token}/{name}", tags=["results"], include_in_schema=False)
async def get_file(request_id: str, token: str, name: str, request: Request):
    """The random token in the path is the credential; a file is served while its job's record lives."""
    jobs = jobs_of(request)
    record = await jobs.waiting.read(jobs.records.get, request_id)
    key = f"{request_id}/{token}/{name}"
    match = record and next((img for img in record.images if img.key == key), None)
    if not match:
        raise ApiError(404, "file not found or expired")
    if isinstance(jobs.storage, LocalStorage):
        path = jobs.storage.path_for(key)
        if path is None or not path.is_file():
            raise ApiError(404, "file not found or expired")
        return FileResponse(path, media_type=match.content_type, headers=CACHE_CONTROL)
    try:
        data = await run_blocking(jobs.storage.read, key)
    except FileNotFoundError:
        raise ApiError(404, "file not found or expired") from None
    return Response(data, media_type=match.content_type, headers=CACHE_CONTROL)
