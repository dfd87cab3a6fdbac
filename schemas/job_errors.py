"""Why a valid request could not be carried out on its inputs: raised by the worker, turned by the job layer into
a FAILED job carrying the message (service/jobs/failures.py says which failure and v1 status each gives)."""


class CannotPaint(Exception):
    """Carries the request it is about, so that a batch can drop just that one, and the mask model's seconds
    spent on it (None when the model did not run)."""

    def __init__(self, message: str, request: object = None, mask_time: float | None = None):
        super().__init__(message)
        self.request, self.mask_time = request, mask_time


class MaskNotFound(CannotPaint):
    """The request's mask comes out empty on its image (a mask_prompt that finds nothing), so nothing would be
    repainted: the job fails instead of answering the input unchanged. The caller's to fix; credits come back."""


class MaskModelMissing(CannotPaint):
    """A mask_prompt reached a worker that has no mask model (its weights were never fetched, or failed to load):
    the deployment's to fix."""
