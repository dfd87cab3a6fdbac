"""The public API contract (see docs/API.md) as pydantic models. No torch here."""

from schemas.request import (
    MODEL_SLUG,
    SCHEDULERS,
    InpaintParams,
    InpaintRequest,
    batch_key,
    describe_validation_error,
)
from schemas.responses import (
    CancelResponse,
    FailedBody,
    ErrorBody,
    ImageInfo,
    JobStatus,
    Metrics,
    Progress,
    ResultBody,
    StatusBody,
    SubmitResponse,
    UsageDay,
    UsageResponse,
    V1Base64Response,
    V1MultiResponse,
)

__all__ = [
    "MODEL_SLUG",
    "SCHEDULERS",
    "InpaintParams",
    "InpaintRequest",
    "batch_key",
    "describe_validation_error",
    "CancelResponse",
    "ErrorBody",
    "FailedBody",
    "ImageInfo",
    "JobStatus",
    "Metrics",
    "Progress",
    "ResultBody",
    "StatusBody",
    "SubmitResponse",
    "UsageDay",
    "UsageResponse",
    "V1Base64Response",
    "V1MultiResponse",
]
