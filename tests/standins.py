"""Stand-ins for Modal objects. There is no Modal emulator, so these mimic the method
surface the code uses (modal.Dict: get/put/pop/items; FunctionCall: object_id/get/cancel)
and nothing more. They are NOT Modal: what they cannot show is listed in README's
"Deploy to Modal" section as checks for the first real deploy."""

import itertools
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import modal.exception


class StandInDict:
    """modal.Dict's get/put/pop/items/contains; values go through pickle as they would over the wire."""

    def __init__(self):
        self._data: dict = {}
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            raw = self._data.get(key)
        return pickle.loads(raw) if raw is not None else default

    def put(self, key, value, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = pickle.dumps(value)
            return True

    def pop(self, key, default=None):
        with self._lock:
            raw = self._data.pop(key, None)
        return pickle.loads(raw) if raw is not None else default

    def items(self):
        with self._lock:
            snapshot = list(self._data.items())
        return [(k, pickle.loads(v)) for k, v in snapshot]

    def contains(self, key) -> bool:
        with self._lock:
            return key in self._data


class StandInCall:
    _ids = itertools.count()

    def __init__(self, future):
        self.object_id = f"fc-standin-{next(self._ids)}"
        self.future = future
        self.cancelled = False

    def get(self, timeout=None):
        try:
            return self.future.result(timeout=timeout)
        except FutureTimeout:
            raise modal.exception.TimeoutError() from None

    def cancel(self):
        self.cancelled = self.future.cancel()


class StandInSpawner:
    """Plays `Inpainter().run.spawn(job_id)`: runs `method(job_id)` on one worker thread (one GPU container)."""

    def __init__(self, method):
        self.method = method
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.calls: dict[str, StandInCall] = {}

    def spawn(self, job_id):
        call = StandInCall(self.pool.submit(self.method, job_id))
        self.calls[call.object_id] = call
        return call

    def from_id(self, call_id):
        return self.calls[call_id]
