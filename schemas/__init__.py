"""The public contract (described in docs/API.md) as pydantic models. No torch here."""

from schemas.request import (
    MODEL_SLUG,
    SCHEDULERS,
    InpaintRequest,
    describe_validation_error,
)
from schemas.responses import (
    ErrorBody,
    ImageInfo,
    JobStatus,
    Metrics,
    Progress,
    ResultBody,
    StatusBody,
    SubmitResponse,
    V1Base64Response,
    V1MultiResponse,
)

__all__ = [
    "MODEL_SLUG",
    "SCHEDULERS",
    "InpaintRequest",
    "describe_validation_error",
    "ErrorBody",
    "ImageInfo",
    "JobStatus",
    "Metrics",
    "Progress",
    "ResultBody",
    "StatusBody",
    "SubmitResponse",
    "V1Base64Response",
    "V1MultiResponse",
]
