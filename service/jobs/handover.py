"""Images decoded at submit, handed to the worker in the same process so that no input is decoded twice."""

import threading
from typing import Any

MAX_HANDED_OVER_JOBS = 16
MAX_HANDED_OVER_PIXELS = 2 * 4096 * 4096  # one job at the default input pixel cap, or many photo-sized ones


class DecodedInputs:
    """Bounded by jobs and by pixels; a job that does not fit is left out (its worker decodes the stored bytes),
    so the jobs kept are the oldest, the next to run. Entries go when the worker takes them or the job ends."""

    def __init__(self, max_jobs: int = MAX_HANDED_OVER_JOBS, max_pixels: int = MAX_HANDED_OVER_PIXELS):
        self.max_jobs, self.max_pixels = max_jobs, max_pixels
        self._entries: dict[str, tuple[Any, Any]] = {}
        self.pixels = 0
        self._lock = threading.Lock()

    @staticmethod
    def _pixels(images: tuple[Any, Any]) -> int:
        return sum(image.width * image.height for image in images)

    def put(self, job_id: str, image: Any, mask: Any) -> bool:
        size = self._pixels((image, mask))
        with self._lock:
            if len(self._entries) >= self.max_jobs or self.pixels + size > self.max_pixels:
                return False
            self._entries[job_id] = (image, mask)
            self.pixels += size
            return True

    def take(self, job_id: str) -> tuple[Any, Any] | None:
        with self._lock:
            images = self._entries.pop(job_id, None)
            if images is not None:
                self.pixels -= self._pixels(images)
            return images

    def __len__(self) -> int:
        return len(self._entries)
