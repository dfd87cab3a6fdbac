"""A per-key limit on status and result polls, kept in this process's memory: a second line behind the worker's
own process (polls cannot slow a job), so that a few clients polling in a tight loop cannot take the web tier's
time from everyone else's requests. It costs no store call. Over the limit a poll is answered 429 with
Retry-After; a long-poll (`?wait=N`) counts once, however long it waits."""

import threading
import time

from service.jobs.errors import Throttled


class PollLimiter:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, owner: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(owner, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[owner] = (tokens - 1, now)
                return
            self._buckets[owner] = (tokens, now)
        raise Throttled(f"too many status polls for this key ({self.rate:g}/s, burst {self.burst}); poll less "
                        f"often, or long-poll with ?wait=N to hear of each change at once", (1 - tokens) / self.rate)
