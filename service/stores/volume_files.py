"""Result files (and on Modal the job inputs) in a modal.Volume, the default on Modal: a deploy needs no bucket.

Every call goes through the Volume's own API (`batch_upload`, `read_file`, `remove_file`), never a mount: an
upload is committed on Modal's side when it returns, so the web container reads what a GPU container wrote a
moment before, without the commit/reload dance a mounted Volume needs. Volumes are made for files written once
and read a few times, which is what results and inputs are. The web function serves the files at
/files/<key> (the key holds a random token, the credential, as a presigned URL's signature is) until the job
expires.

The volume object is passed in (app.py makes it), so this module does not import modal.
"""

import io
from pathlib import PurePosixPath
from typing import Any

from service.jobs.errors import StorageError
from service.stores.object_inputs import PREFIX as INPUTS_PREFIX
from service.stores.results import read_with_retries, with_retries

SHARED_FOLDERS = {INPUTS_PREFIX.strip("/")}  # every job's inputs are under it: never removed


class VolumeStorage:
    served_here = True  # the web tier answers /files/<key> from read()

    def __init__(self, volume: Any, retries: int = 4):
        self.volume = volume
        self.retries = retries

    @staticmethod
    def _path(key: str) -> str:
        path = PurePosixPath(key)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise StorageError(f"bad key {key!r}")
        return path.as_posix()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)

        def upload() -> None:
            with self.volume.batch_upload(force=True) as batch:  # force: a retried upload may find its own file
                batch.put_file(io.BytesIO(data), f"/{path}")

        with_retries(upload, f"writing {path} to the Volume", attempts=self.retries)

    def url(self, key: str, base_url: str, expires_in: int) -> str:
        return f"{base_url.rstrip('/')}/files/{key}"

    def read(self, key: str) -> bytes:
        """The file's bytes, retried like a write; FileNotFoundError at once when there is none."""
        path = self._path(key)
        return read_with_retries(lambda: b"".join(self.volume.read_file(f"/{path}")), FileNotFoundError,
                                 f"{path} in the Volume", self.retries)

    def delete(self, keys: list[str]) -> None:
        """The files, then the folders they leave empty (a job's <id>/<token>/ and <id>/, an input's folder)."""
        folders: set[PurePosixPath] = set()
        for key in keys:
            path = PurePosixPath(self._path(key))
            try:
                self.volume.remove_file(f"/{path}")
            except FileNotFoundError:
                pass
            folders.update(p for p in path.parents if p.parts and p.as_posix() not in SHARED_FOLDERS)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
            try:
                self.volume.remove_file(f"/{folder}", recursive=False)
            except Exception:  # not empty (another file of the job is still there), or already gone
                pass
