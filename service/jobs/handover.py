"""Images decoded at submit, handed to the worker so that no input is decoded twice: as they are to a worker in
the same process, as raw pixels to the embedded worker process."""

import threading
from typing import Any

from PIL import Image

MAX_HANDED_OVER_JOBS = 16
MAX_HANDED_OVER_PIXELS = 2 * 4096 * 4096  # one job at the default input pixel cap, or many photo-sized ones
# Raw pixels cross to the worker process only up to this size per image (about 6 MB of RGB): copying them into
# the queue holds the web tier's interpreter lock, while a larger photo is cheaper to decode again over there.
MAX_WIRE_PIXELS = 2 * 1024 * 1024
WIRE_MODES = ("RGB", "RGBA", "L", "LA")  # modes whose raw bytes are the whole picture (no palette, no 16 bits)
ORIENTATION = 0x0112


def to_wire(images: tuple[Any, Any] | None) -> tuple | None:
    """Image and mask as plain (mode, size, bytes) for another process, or None when raw pixels would lose
    something the worker reads (an EXIF orientation, a transparent colour, a palette) or cost more than a
    decode: the worker then decodes the stored bytes."""
    if images is None:
        return None
    for image in images:
        if (image.mode not in WIRE_MODES or image.width * image.height > MAX_WIRE_PIXELS
                or "transparency" in image.info or image.getexif().get(ORIENTATION, 1) != 1):
            return None
    return tuple((image.mode, image.size, image.tobytes()) for image in images)


def from_wire(wired: tuple) -> tuple[Any, Any]:
    image, mask = (Image.frombytes(mode, size, data) for mode, size, data in wired)
    return image, mask


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
