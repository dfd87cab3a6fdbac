"""Stand-ins for Modal objects. There is no Modal emulator, so these mimic the method surface the
code uses (modal.Dict: get/put(skip_if_exists)/pop/len/items/keys/contains; FunctionCall:
object_id/get(+.aio)/cancel), and cost and fail the way the real ones do as read from modal 1.6.4's
source: what a call costs (round trips, streamed entries, a counting len()), what a pending call raises
(the builtin TimeoutError), what a missing key raises. What they cannot show is listed in docs/DEPLOY.md,
"Not verified on a real deployment yet", as checks for the first real deploy.

StandInDict can inject latency and pause a caller before a chosen operation, so tests can force the
interleavings that happen between containers (a writer paused between its read and its write)."""

import asyncio
import itertools
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout


_MISSING = object()


class StandInDict:
    """modal.Dict's get/put/pop/len/items/keys/contains, costing what the real one costs: every call is one round
    trip (`calls`, with `latency` seconds each); items() and keys() are one streaming call that sends one entry
    per message (`streamed`); len() is one call that the server answers by counting (`counted`, documented as
    expensive, at most 100,000). Values go through pickle as they would over the wire; pop() of a missing key
    without a default raises KeyError, as modal.Dict's does."""

    def __init__(self, latency: float = 0.0):
        self._data: dict = {}
        self._lock = threading.Lock()
        self.latency = latency
        self.calls = 0
        self.streamed = 0
        self.counted = 0
        self._pauses: list[tuple] = []  # (op, key prefix, reached Event, release Event, once-flag list)

    def pause_before(self, op: str, key_prefix: str) -> tuple[threading.Event, threading.Event]:
        """The next caller of `op` on a key starting with `key_prefix` stops before it runs: `reached` is set,
        and it goes on when the test sets `release`."""
        reached, release = threading.Event(), threading.Event()
        self._pauses.append((op, key_prefix, reached, release, []))
        return reached, release

    def _enter(self, op: str, key=None) -> None:
        with self._lock:
            self.calls += 1
        for p_op, prefix, reached, release, used in self._pauses:
            if p_op == op and not used and isinstance(key, str) and key.startswith(prefix):
                used.append(True)
                reached.set()
                assert release.wait(30), "a paused Dict call was never released"
        if self.latency:
            time.sleep(self.latency)

    def cost(self) -> int:
        """Round trips plus entries moved or counted by the server: what grows with the data."""
        return self.calls + self.streamed + self.counted

    def get(self, key, default=None):
        self._enter("get", key)
        with self._lock:
            raw = self._data.get(key)
        return pickle.loads(raw) if raw is not None else default

    def put(self, key, value, *, skip_if_exists: bool = False) -> bool:
        self._enter("put", key)
        with self._lock:
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = pickle.dumps(value)
            return True

    def pop(self, key, default=_MISSING):
        self._enter("pop", key)
        with self._lock:
            raw = self._data.pop(key, None)
        if raw is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return pickle.loads(raw)

    def len(self) -> int:
        self._enter("len")
        with self._lock:
            self.counted += len(self._data)
            return min(len(self._data), 100_000)

    def items(self) -> list:
        """A list, not an iterator, so it also crosses a multiprocessing proxy; counted as the stream it is."""
        self._enter("items")
        with self._lock:
            snapshot = list(self._data.items())
            self.streamed += len(snapshot)  # one message per entry
        return [(key, pickle.loads(raw)) for key, raw in snapshot]

    def keys(self) -> list:
        return [key for key, _ in self.items()]

    def contains(self, key) -> bool:
        self._enter("contains", key)
        with self._lock:
            return key in self._data


def standin_dicts(latency: float = 0.0) -> dict[str, StandInDict]:
    return {name: StandInDict(latency) for name in ("records", "active", "expiry", "counters")}


class _Get:
    """FunctionCall.get with its `.aio` variant, like Modal's synchronicity wrappers."""

    def __init__(self, call: "StandInCall"):
        self.call = call

    def __call__(self, timeout=None):
        try:
            return self.call.future.result(timeout=timeout)
        except FutureTimeout:
            raise TimeoutError() from None  # Modal raises the builtin TimeoutError while a call is pending

    async def aio(self, timeout=None):
        return await asyncio.to_thread(self, timeout)


class StandInCall:
    _ids = itertools.count()

    def __init__(self, future):
        self.object_id = f"fc-standin-{next(self._ids)}"
        self.future = future
        self.cancelled = False
        self.get = _Get(self)

    def cancel(self):
        self.cancelled = self.future.cancel()


class StandInSpawner:
    """Plays `Inpainter().run.spawn(job_id)`: runs `method(job_id)` on worker threads (GPU containers)."""

    def __init__(self, method, containers: int = 1):
        self.method = method
        self.pool = ThreadPoolExecutor(max_workers=containers)
        self.calls: dict[str, StandInCall] = {}
        self.spawned: list[str] = []

    def spawn(self, job_id):
        self.spawned.append(job_id)
        call = StandInCall(self.pool.submit(self.method, job_id))
        self.calls[call.object_id] = call
        return call

    def from_id(self, call_id):
        return self.calls[call_id]


class _VolumeUpload:
    """`Volume.batch_upload()`'s context: files are read and sent when the block ends; without force an upload onto
    an existing file raises FileExistsError, as modal 1.6.4's does (volume.py, both Volume versions)."""

    def __init__(self, volume: "StandInVolume", force: bool):
        self.volume, self.force, self.files = volume, force, []

    def __enter__(self):
        return self

    def put_file(self, local_file, remote_path) -> None:
        if str(remote_path).endswith("/"):
            raise ValueError(f"remote_path ({remote_path}) must refer to a file - cannot end with /")
        self.files.append((local_file, StandInVolume.normal(remote_path)))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.volume._enter()
            with self.volume._lock:
                for local_file, path in self.files:
                    if path in self.volume.files and not self.force:
                        raise FileExistsError(f"{path} already exists")
                for local_file, path in self.files:
                    self.volume.files[path] = local_file.read()


class StandInVolume:
    """modal.Volume's API without a mount (batch_upload/put_file, read_file, remove_file), each call one round trip
    (`calls`, `latency` seconds each). As in modal 1.6.4: read_file is a generator of chunks that raises
    FileNotFoundError for a missing path when read; remove_file of a missing path raises FileNotFoundError, and of
    a folder with files in it, without recursive, an error. Folders exist while files are in them; paths are the
    same with or without a leading slash."""

    CHUNK = 64 * 1024

    def __init__(self, latency: float = 0.0):
        self.files: dict[str, bytes] = {}
        self.latency = latency
        self.calls = 0
        self._lock = threading.Lock()

    @staticmethod
    def normal(path) -> str:
        return str(path).strip("/")

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
        if self.latency:
            time.sleep(self.latency)

    def batch_upload(self, force: bool = False) -> _VolumeUpload:
        return _VolumeUpload(self, force)

    def read_file(self, path):
        self._enter()
        with self._lock:
            data = self.files.get(self.normal(path))
        if data is None:
            raise FileNotFoundError(f"No such file: {path}")
        for start in range(0, max(len(data), 1), self.CHUNK):
            yield data[start:start + self.CHUNK]

    def remove_file(self, path, recursive: bool = False) -> None:
        self._enter()
        target = self.normal(path)
        with self._lock:
            inside = [name for name in self.files if name.startswith(target + "/")]
            if target in self.files:
                del self.files[target]
            elif not inside:
                raise FileNotFoundError(f"No such file or directory: {path}")
            elif not recursive:
                raise RuntimeError(f"{path} is a directory with files in it; pass recursive=True")
            else:
                for name in inside:
                    del self.files[name]
