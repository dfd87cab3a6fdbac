"""Job records: what a request is, where it stands, what it produced.

`JobStore` is the small interface both backends implement (SQLite here, a
modal.Dict in app.py's backend). Status only moves forward: QUEUED ->
PROCESSING -> COMPLETED | FAILED; a change that would move it back, or touch
a finished job, is ignored.
"""

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from pydantic import BaseModel, Field

from schemas import JobStatus
from service.changes import Changes

T = TypeVar("T")


class StoredImage(BaseModel):
    key: str
    content_type: str
    file_size: int
    seed: int


class JobRecord(BaseModel):
    id: str
    owner: str  # a hash of the API key that created it; never the key itself
    status: JobStatus = JobStatus.QUEUED
    params: dict[str, Any]  # the validated request, minus the image/mask payloads
    created_at: float
    expires_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    images: list[StoredImage] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    inference_time: float | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    heartbeat_at: float | None = None  # last sign of life from the worker running it
    cancel_requested: bool = False  # SQLite keeps the flag here; the modal.Dict store under its own key
    base_url: str = ""  # the public base URL at submission (for URLs in webhook bodies)
    webhook_url: str | None = None

    def metrics(self) -> dict[str, float | None]:
        queue_time = (self.started_at - self.created_at) if self.started_at else None
        total_time = (self.finished_at - self.created_at) if self.finished_at else None
        return {
            "inference_time": round(self.inference_time, 4) if self.inference_time is not None else None,
            "queue_time": round(queue_time, 4) if queue_time is not None else None,
            "total_time": round(total_time, 4) if total_time is not None else None,
        }


def apply_changes(record: JobRecord, changes: dict[str, Any]) -> JobRecord | None:
    """The record after `changes`, or None when they are not allowed (status backwards, job finished)."""
    if record.status.terminal:
        return None
    new_status = changes.get("status")
    if new_status is not None and JobStatus(new_status).rank < record.status.rank:
        return None
    return record.model_copy(update=changes)


class JobStore(Protocol):
    def create(self, record: JobRecord, image: bytes, mask: bytes) -> None: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def update(self, job_id: str, **changes: Any) -> JobRecord | None: ...
    def get_inputs(self, job_id: str) -> tuple[bytes, bytes] | None: ...
    def delete_inputs(self, job_id: str) -> None: ...
    def ids_with_status(self, status: JobStatus) -> list[str]: ...
    def queue_position(self, job_id: str) -> int: ...
    def count_unfinished(self) -> int: ...
    def expired(self, now: float) -> list[JobRecord]: ...
    def delete(self, job_id: str) -> None: ...
    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, T]]) -> T: ...
    def request_cancel(self, job_id: str) -> None: ...
    def cancel_requested(self, job_id: str) -> bool: ...


class SQLiteJobStore:
    """Embedded default: one SQLite file under STATE_DIR. Survives restarts."""

    def __init__(self, path: Path):
        self.changes = Changes()  # long-poll handlers wait on this
        self.on_terminal: Callable[[JobRecord], None] | None = None  # e.g. webhook delivery
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY,
                    status TEXT NOT NULL,
                    created_at REAL NOT NULL,
                    expires_at REAL NOT NULL,
                    doc TEXT NOT NULL
                );
                CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
                CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
                CREATE TABLE IF NOT EXISTS inputs (
                    id TEXT PRIMARY KEY,
                    image BLOB NOT NULL,
                    mask BLOB NOT NULL
                );
                CREATE TABLE IF NOT EXISTS state (
                    name TEXT PRIMARY KEY,
                    doc TEXT NOT NULL
                );
                """
            )

    def create(self, record: JobRecord, image: bytes, mask: bytes) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO inputs (id, image, mask) VALUES (?, ?, ?)", (record.id, image, mask))
                self._db.execute(
                    "INSERT INTO jobs (id, status, created_at, expires_at, doc) VALUES (?, ?, ?, ?, ?)",
                    (record.id, record.status.value, record.created_at, record.expires_at, record.model_dump_json()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.model_validate_json(row[0]) if row else None

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._read(job_id)
        if record is None or record.expires_at <= time.time():
            return None
        return record

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        with self._lock:
            current = self._read(job_id)
            if current is None:
                return None
            updated = apply_changes(current, changes)
            if updated is None:
                return None
            self._db.execute(
                "UPDATE jobs SET status = ?, doc = ? WHERE id = ?",
                (updated.status.value, updated.model_dump_json(), job_id),
            )
        self.changes.notify(job_id)
        if updated.status.terminal and self.on_terminal is not None:
            self.on_terminal(updated)
        return updated

    def get_inputs(self, job_id: str) -> tuple[bytes, bytes] | None:
        with self._lock:
            row = self._db.execute("SELECT image, mask FROM inputs WHERE id = ?", (job_id,)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    def delete_inputs(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM inputs WHERE id = ?", (job_id,))

    def ids_with_status(self, status: JobStatus) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status = ? ORDER BY created_at", (status.value,)
            ).fetchall()
        return [r[0] for r in rows]

    def queue_position(self, job_id: str) -> int:
        """How many queued jobs were submitted before this one."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED' AND created_at < "
                "(SELECT created_at FROM jobs WHERE id = ?)",
                (job_id,),
            ).fetchone()
        return int(row[0])

    def count_unfinished(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('QUEUED', 'PROCESSING')").fetchone()
        return int(row[0])

    def expired(self, now: float) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM jobs WHERE expires_at <= ?", (now,)).fetchall()
        return [JobRecord.model_validate_json(r[0]) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._db.execute("DELETE FROM inputs WHERE id = ?", (job_id,))

    def request_cancel(self, job_id: str) -> None:
        self.update(job_id, cancel_requested=True)

    def cancel_requested(self, job_id: str) -> bool:
        record = self.get(job_id)
        return record is None or record.cancel_requested

    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        """Atomic read-modify-write of a small named document (rate-limit buckets, credit counters)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT doc FROM state WHERE name = ?", (name,)).fetchone()
                new_doc, result = change(json.loads(row[0]) if row else None)
                if new_doc is not None:
                    self._db.execute("INSERT OR REPLACE INTO state (name, doc) VALUES (?, ?)",
                                     (name, json.dumps(new_doc)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    def close(self) -> None:
        with self._lock:
            self._db.close()


def params_of(request_json: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of a request: everything but the (possibly huge) image payloads."""
    return {k: v for k, v in request_json.items() if k not in ("image", "mask")}
