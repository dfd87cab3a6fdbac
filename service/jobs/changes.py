"""In-process change notification for long-polling: the worker thread updates a job, waiting
HTTP handlers on the event loop wake at once. (Across Modal containers there is no such
channel; the handler polls the store instead.)"""

import asyncio
import threading


class Subscription:
    def __init__(self, changes: "Changes", job_id: str):
        self.changes, self.job_id = changes, job_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when the job changed (since the last wait), False on timeout."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self.event.clear()
        return True

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.changes.unsubscribe(self)


class Changes:
    def __init__(self):
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[Subscription]] = {}

    def subscribe(self, job_id: str) -> Subscription:
        """Subscribe BEFORE reading the job, so no change can slip between the read and the wait."""
        sub = Subscription(self, job_id)
        with self._lock:
            self._subscriptions.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subscriptions.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscriptions[sub.job_id]

    def notify_all(self) -> None:
        """Wake every waiter (a job started or ended: queue positions moved)."""
        with self._lock:
            subs = [sub for group in self._subscriptions.values() for sub in group]
        for sub in subs:
            sub.loop.call_soon_threadsafe(sub.event.set)

    def notify(self, job_id: str) -> None:
        """Thread-safe: called by the store after every update of the job."""
        with self._lock:
            subs = list(self._subscriptions.get(job_id, ()))
        for sub in subs:
            sub.loop.call_soon_threadsafe(sub.event.set)
