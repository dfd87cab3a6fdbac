"""Job inputs as objects in the result storage (the S3 bucket on Modal): a modal.Dict is no place for up to
2 x INPUT_MAX_BYTES per job times every unfinished job. Written once at submit, deleted when the job ends
(and by the expiry sweep, should that delete have failed)."""

from service.jobs.ports import ResultStorage

PREFIX = "inputs/"  # beside the results under S3_PREFIX; result keys start with a job id, never with this


class ObjectInputs:
    """InputBlobs over a ResultStorage."""

    def __init__(self, storage: ResultStorage):
        self.storage = storage

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str]:
        return f"{PREFIX}{job_id}/image", f"{PREFIX}{job_id}/mask"

    def put(self, job_id: str, image: bytes, mask: bytes) -> None:
        for key, data in zip(self._keys(job_id), (image, mask)):
            self.storage.put(key, data, "application/octet-stream")

    def get(self, job_id: str) -> tuple[bytes, bytes] | None:
        try:
            image, mask = (self.storage.read(key) for key in self._keys(job_id))
        except FileNotFoundError:
            return None
        return image, mask

    def delete(self, job_ids: list[str]) -> None:
        self.storage.delete([key for job_id in job_ids for key in self._keys(job_id)])
