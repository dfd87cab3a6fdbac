"""Where result images go: local disk (embedded default), a modal.Volume (Modal's default,
service/stores/volume_files.py) or any S3-compatible bucket. On Modal the job inputs go there too
(service/stores/object_inputs.py)."""

import logging
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

from service.jobs.errors import StorageError
from service.jobs.ports import ResultStorage

log = logging.getLogger(__name__)
T = TypeVar("T")

# Presigned S3 URLs cannot outlive 7 days (SigV4).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def with_retries(action: Callable[[], T], what: str, attempts: int = 4, first_delay: float = 0.2) -> T:
    """Run action, retrying with exponential backoff; StorageError after the last failure."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts:
                log.error("%s failed after %d attempts: %s", what, attempts, exc)
                raise StorageError(f"{what} failed after {attempts} attempts ({type(exc).__name__})") from exc
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, attempt, attempts, exc, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def read_with_retries(read: Callable[[], bytes], missing: type[BaseException], where: str, attempts: int) -> bytes:
    """read(), retried like a write, except that `missing` (no such object) is a FileNotFoundError at once."""

    def attempt() -> bytes | None:
        try:
            return read()
        except missing:
            return None

    data = with_retries(attempt, f"reading {where}", attempts=attempts)
    if data is None:
        raise FileNotFoundError(where)
    return data


class LocalStorage:
    """Files under STATE_DIR/results, served by the API at /files/<key> (the key holds a random token)."""

    served_here = True  # the web tier answers /files/<key>

    def __init__(self, root: Path, retries: int = 4):
        self.root = root
        self.retries = retries
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._resolved_root = self.root.resolve()

    def path_for(self, key: str) -> Path | None:
        path = (self._resolved_root / key).resolve()
        if self._resolved_root not in path.parents:
            return None
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path_for(key)
        if path is None:
            raise StorageError(f"bad key {key!r}")
        tmp = path.with_suffix(path.suffix + ".part")

        def write():  # the directory too: a failure there (read-only, full) is retried like the write
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)

        with_retries(write, f"writing {key}", attempts=self.retries)

    def url(self, key: str, base_url: str, expires_in: int) -> str:
        return f"{base_url.rstrip('/')}/files/{key}"

    def read(self, key: str) -> bytes:
        """The file's bytes; FileNotFoundError when there is none."""
        path = self.path_for(key)
        if path is None:
            raise StorageError(f"bad key {key!r}")
        return path.read_bytes()

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self.path_for(key)
            if path is None:
                continue
            path.unlink(missing_ok=True)
            for folder in (path.parent, path.parent.parent):  # <job>/<token>/ then <job>/, once empty
                try:
                    folder.rmdir()
                except OSError:
                    break


class S3Storage:
    """S3 / R2 / MinIO via boto3; results are read through presigned GET URLs (s3v4)."""

    served_here = False  # clients fetch from the bucket

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 public_base_url: str | None = None, client=None, retries: int = 4, region: str | None = None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.public_base_url = public_base_url
        self.retries = retries
        # botocore's own retries are off: with_retries() below owns the policy (backoff, then a clear error).
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 1},
                          connect_timeout=5, read_timeout=30),
        )

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with_retries(
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data,
                                           ContentType=content_type),
            f"uploading s3://{self.bucket}/{self._object_key(key)}",
            attempts=self.retries,
        )

    def url(self, key: str, base_url: str, expires_in: int) -> str:
        if self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{self._object_key(key)}"
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=max(1, min(int(expires_in), MAX_PRESIGN_SECONDS)),
        )

    def read(self, key: str) -> bytes:
        """The object's bytes, retried like a write; FileNotFoundError at once when there is no such object (as
        LocalStorage.read)."""
        return read_with_retries(
            lambda: self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"].read(),
            self.client.exceptions.NoSuchKey, f"s3://{self.bucket}/{self._object_key(key)}", self.retries)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._object_key(k)} for k in keys[start:start + 1000]]
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


def make_storage(settings, volume=None) -> ResultStorage:
    """S3 when S3_BUCKET is set; else the given modal.Volume (Modal's default); else files under STATE_DIR."""
    if settings.s3_bucket:
        return S3Storage(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_public_base_url,
                         retries=settings.storage_retries, region=settings.s3_region)
    if volume is not None:
        from service.stores.volume_files import VolumeStorage

        return VolumeStorage(volume, retries=settings.storage_retries)
    return LocalStorage(Path(settings.state_dir) / "results", retries=settings.storage_retries)
