"""The embedded backend's state: one SQLite file for records and counters, input images as files.

Everything lives under STATE_DIR and survives restarts. Writes go through one
connection per process under one lock, each one short transaction, so the once-only rules
(`finish`, `claim`, `create` under the queue cap) are atomic, also between the server and its
worker process (SQLite serialises their transactions). Reads use a
connection per thread: in WAL mode they never wait on a writer, so the event
loop can make them inline (microseconds, no thread hop).
"""

import json
import os
from contextlib import contextmanager
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from schemas import JobStatus
from service.jobs.changes import Changes
from service.jobs.errors import StoreUnavailable
from service.jobs.records import ExpiredJob, JobRecord, PendingWebhook, apply_changes

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    cancel INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (name TEXT PRIMARY KEY, job_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
                                        at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idempotency_job ON idempotency (job_id);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS webhooks (job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, url TEXT NOT NULL,
                                     attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (next_at);
"""
COUNT_UNFINISHED = "SELECT COUNT(*) FROM jobs WHERE status IN ('QUEUED', 'PROCESSING')"
BUSY_TIMEOUT_SECONDS = 15.0  # how long a write waits for the other process's transaction
MAX_CLAIMED_ATTEMPTS = 3  # claims are `attempt<n>:<id>`; a job runs at most twice, a redispatch may claim a third


@contextmanager
def unavailable_on_error(where: Path, doing: str = "written"):
    """sqlite3/OS errors (disk full, file gone) become StoreUnavailable, with the reason in words."""
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
        raise StoreUnavailable(f"the job database at {where} cannot be {doing} ({exc})") from exc


class Database:
    """One SQLite file: a writer connection used under a lock, one short transaction at a time, and a read-only
    connection per thread."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # owner-only; SQLite gives its WAL the same
        # Another process (the embedded worker) writes too: wait for its short transactions rather than fail.
        self.writer = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                      timeout=BUSY_TIMEOUT_SECONDS)
        self.lock = threading.Lock()
        self._readers = threading.local()
        with self.lock:
            self.writer.execute("PRAGMA journal_mode=WAL")
            self.writer.execute("PRAGMA synchronous=NORMAL")
            self.writer.executescript(SCHEMA)

    @contextmanager
    def writing(self):
        """The writer connection, held alone; errors become StoreUnavailable."""
        with self.lock, unavailable_on_error(self.path):
            yield self.writer

    def transaction(self, work: Callable[[], T]) -> T:
        with self.writing() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work()
                db.execute("COMMIT")
                return result
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def select(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Through this thread's read-only connection (mode=ro: a deleted database is an error, never a new
        empty file)."""
        with unavailable_on_error(self.path, "read"):
            reader = getattr(self._readers, "db", None)
            if reader is None:
                reader = self._readers.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                            isolation_level=None)
            return reader.execute(sql, args).fetchall()

    def close(self) -> None:
        with self.lock:
            self.writer.close()


class SQLiteKeyBindings:
    """JobRecords' Idempotency-Key bindings: a unique row per key in the jobs' database (`self.db`)."""

    db: Database

    def bind_key(self, name: str, job_id: str, fingerprint: str, stale_before: float) -> tuple[str, str]:
        """One transaction: the key's row read and written together, so of two submits at once one binds."""
        def bind() -> tuple[str, str]:
            writer = self.db.writer
            row = writer.execute("SELECT job_id, fingerprint, at FROM idempotency WHERE name = ?", (name,)).fetchone()
            if row is not None and not (row[2] < stale_before and self._gone(row[0])):
                return row[0], row[1]
            writer.execute("INSERT OR REPLACE INTO idempotency (name, job_id, fingerprint, at) VALUES (?, ?, ?, ?)",
                           (name, job_id, fingerprint, time.time()))
            return job_id, fingerprint

        return self.db.transaction(bind)

    def _gone(self, job_id: str) -> bool:
        """No such job, or finished and past its expiry (callers hold the lock)."""
        row = self.db.writer.execute("SELECT status, expires_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is None or (row[0] in ("COMPLETED", "FAILED") and row[1] <= time.time())

    def unbind_key(self, name: str, job_id: str) -> None:
        with self.db.writing() as db:
            db.execute("DELETE FROM idempotency WHERE name = ? AND job_id = ?", (name, job_id))


class SQLiteState(SQLiteKeyBindings):
    """JobRecords and Counters over one SQLite database."""

    def __init__(self, path: Path, changes: Changes | None = None):
        self.changes = changes or Changes()  # long-poll handlers wait on this (in another process: forwarded)
        self.path = path
        self.db = Database(path)

    def _read(self, job_id: str) -> JobRecord | None:
        """The record through the writer's connection (callers hold the lock)."""
        row = self.db.writer.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.model_validate_json(row[0]) if row else None

    def _write(self, record: JobRecord) -> None:
        self.db.writer.execute("UPDATE jobs SET status = ?, expires_at = ?, doc = ? WHERE id = ?",
                         (record.status.value, record.expires_at, record.model_dump_json(), record.id))

    # ---- JobRecords ------------------------------------------------------------------------

    def create(self, record: JobRecord, max_unfinished: int = 0) -> bool:
        def insert() -> bool:
            if max_unfinished > 0 and self._count_unfinished() >= max_unfinished:
                return False
            self.db.writer.execute(
                "INSERT INTO jobs (id, status, created_at, expires_at, doc) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.status.value, record.created_at, record.expires_at, record.model_dump_json()),
            )
            return True

        return self.db.transaction(insert)

    def get(self, job_id: str) -> JobRecord | None:
        rows = self.db.select("SELECT doc FROM jobs WHERE id = ?", (job_id,))
        record = JobRecord.model_validate_json(rows[0][0]) if rows else None
        return None if record is None or record.expired(time.time()) else record

    def _change(self, job_id: str, changes: dict[str, Any], final: bool) -> JobRecord | None:
        """Read, check and write in one transaction: the worker process and the server may change a job at once
        (a cancel racing the start), and only one of them may win."""
        def change() -> tuple[JobRecord, JobRecord] | None:
            current = self._read(job_id)
            updated = apply_changes(current, changes) if current is not None else None
            if updated is None or updated.status.terminal != final:
                return None
            self._write(updated)
            return current, updated

        changed = self.db.transaction(change)
        if changed is None:
            return None
        current, updated = changed
        if updated.status != current.status:
            self.changes.notify_all()  # queue positions of the jobs behind it moved too
        else:
            self.changes.notify(job_id)
        return updated

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        return self._change(job_id, changes, final=False)

    def finish(self, job_id: str, **changes: Any) -> JobRecord | None:
        return self._change(job_id, changes, final=True)

    def claim(self, name: str) -> bool:
        with self.db.writing() as db:
            cursor = db.execute("INSERT OR IGNORE INTO claims (name, at) VALUES (?, ?)", (name, time.time()))
        return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        with self.db.writing() as db:
            db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
        self.changes.notify(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        """True when the job should stop: cancelled, gone, or already ended by someone else (e.g. expired)."""
        rows = self.db.select("SELECT cancel, status FROM jobs WHERE id = ?", (job_id,))
        return not rows or bool(rows[0][0]) or rows[0][1] in ("COMPLETED", "FAILED")

    def _count_unfinished(self) -> int:
        return int(self.db.writer.execute(COUNT_UNFINISHED).fetchone()[0])

    def unfinished(self) -> int:
        return int(self.db.select(COUNT_UNFINISHED)[0][0])

    def queue_position(self, record: JobRecord) -> int:
        """Queued jobs that run before this one: the earlier ones of its lane and, for a low-priority job, every
        normal one."""
        low = "json_extract(doc, '$.params.priority') IS 'low'"
        lane = f"(NOT {low} OR created_at < ?)" if record.low_priority else f"NOT {low} AND created_at < ?"
        rows = self.db.select(f"SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED' AND {lane}", (record.created_at,))
        return int(rows[0][0])

    def unfinished_ids(self, status: JobStatus) -> list[str]:
        rows = self.db.select("SELECT id FROM jobs WHERE status = ? ORDER BY created_at", (status.value,))
        return [r[0] for r in rows]

    def repair_finished(self, job_id: str) -> None:
        """Nothing to do: a job's end is one transaction here, so unfinished_ids never lists a finished job."""

    def expired(self, now: float) -> list[ExpiredJob]:
        rows = self.db.select("SELECT doc FROM jobs WHERE expires_at <= ? AND status IN ('COMPLETED', 'FAILED') "
                              "ORDER BY expires_at", (now,))
        records = [JobRecord.model_validate_json(r[0]) for r in rows]
        return [ExpiredJob(r.id, [image.key for image in r.images], r.inputs_at) for r in records]

    def delete(self, jobs: list[ExpiredJob]) -> None:
        """By primary key only (the writer lock is held for the whole batch), claims by their exact names."""
        def forget() -> None:
            for job in jobs:
                self.db.writer.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
                self.db.writer.execute("DELETE FROM idempotency WHERE job_id = ?", (job.id,))
                self.db.writer.executemany("DELETE FROM claims WHERE name = ?",
                                           [(f"attempt{n}:{job.id}",) for n in range(1, MAX_CLAIMED_ATTEMPTS + 1)])

        self.db.transaction(forget)

    def problem(self) -> str | None:
        """Why the database is unusable (checked by the housekeeping thread), or None."""
        if not self.path.exists():
            return f"the job database {self.path} was deleted while the server ran; restart the server"
        return None

    # ---- Counters --------------------------------------------------------------------------

    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        def read_modify_write() -> T:
            row = self.db.writer.execute("SELECT doc FROM state WHERE name = ?", (name,)).fetchone()
            new_doc, result = change(json.loads(row[0]) if row else None)
            if new_doc is not None:
                self.db.writer.execute("INSERT OR REPLACE INTO state (name, doc) VALUES (?, ?)",
                                       (name, json.dumps(new_doc)))
            return result

        return self.db.transaction(read_modify_write)

    def close(self) -> None:
        self.db.close()


class SQLiteWebhooks:
    """PendingWebhooks in the same database as the jobs."""

    def __init__(self, db: Database):
        self.db = db

    def add(self, job_id: str, owner: str, url: str, at: float) -> None:
        with self.db.writing() as db:
            db.execute("INSERT OR IGNORE INTO webhooks (job_id, owner, url, next_at) VALUES (?, ?, ?, ?)",
                       (job_id, owner, url, at))

    def due(self, now: float, limit: int) -> list[PendingWebhook]:
        rows = self.db.select("SELECT job_id, owner, url, attempts, next_at FROM webhooks WHERE next_at <= ? "
                              "ORDER BY next_at LIMIT ?", (now, limit))
        return [PendingWebhook(*row) for row in rows]

    def retry(self, job_id: str, attempts: int, at: float) -> None:
        with self.db.writing() as db:
            db.execute("UPDATE webhooks SET attempts = ?, next_at = ? WHERE job_id = ?", (attempts, at, job_id))

    def done(self, job_id: str) -> None:
        with self.db.writing() as db:
            db.execute("DELETE FROM webhooks WHERE job_id = ?", (job_id,))


class FileInputs:
    """InputBlobs as owner-only files under STATE_DIR/inputs: written once at submit, deleted when the job ends
    (kept out of the database, whose free pages and WAL would keep the bytes after a delete)."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.image", self.root / f"{key}.mask"

    def put(self, key: str, image: bytes, mask: bytes) -> None:
        try:
            for path, data in zip(self._paths(key), (image, mask)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        except OSError as exc:
            self.delete([key])
            raise StoreUnavailable(f"the input files under {self.root} cannot be written ({exc.strerror})") from exc

    def get(self, key: str) -> tuple[bytes, bytes] | None:
        image, mask = self._paths(key)
        try:
            return image.read_bytes(), mask.read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            for path in self._paths(key):
                path.unlink(missing_ok=True)
