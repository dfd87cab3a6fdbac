"""Job inputs as objects in the result storage (the S3 bucket on Modal): a modal.Dict is no place for up to
2 x INPUT_MAX_BYTES per job times every unfinished job. Written once at submit, deleted when the job ends
(and by the expiry sweep, should that delete have failed)."""

from service.jobs.ports import ResultStorage

PREFIX = "inputs/"  # beside the results under S3_PREFIX; result keys start with a job id, never with this


class ObjectInputs:
    """InputBlobs over a ResultStorage. The key holds a random token: with S3_PUBLIC_BASE_URL the bucket may be
    readable by anyone with a URL, and a result's URL names its job."""

    def __init__(self, storage: ResultStorage):
        self.storage = storage

    @staticmethod
    def _objects(key: str) -> tuple[str, str]:
        return f"{PREFIX}{key}/image", f"{PREFIX}{key}/mask"

    def put(self, key: str, image: bytes, mask: bytes) -> None:
        for name, data in zip(self._objects(key), (image, mask)):
            self.storage.put(name, data, "application/octet-stream")

    def get(self, key: str) -> tuple[bytes, bytes] | None:
        try:
            image, mask = (self.storage.read(name) for name in self._objects(key))
        except FileNotFoundError:
            return None
        return image, mask

    def delete(self, keys: list[str]) -> None:
        self.storage.delete([name for key in keys for name in self._objects(key)])
