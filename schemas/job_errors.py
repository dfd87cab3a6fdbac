"""Why a valid request could not be carried out on its inputs: raised by the worker, turned by the job layer into
a FAILED job carrying the message (service/jobs/failures.py says which failure and v1 status each gives)."""


class MaskNotFound(ValueError):
    """The request's mask comes out empty on its image (a mask_prompt that finds nothing), so nothing would be
    repainted: the job fails instead of answering the input unchanged. The caller's to fix; credits come back."""


class MaskModelMissing(RuntimeError):
    """A mask_prompt reached a worker that has no mask model (its weights were never fetched): the deployment's
    to fix."""
