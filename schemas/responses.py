"""Response bodies of v1 and v2 (docs/API.md, "v1" and "v2")."""

from enum import Enum

from pydantic import BaseModel, Field


class JobStatus(str, Enum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def rank(self) -> int:
        """Order used to keep status moving forward only."""
        return {"QUEUED": 0, "PROCESSING": 1, "COMPLETED": 2, "FAILED": 2}[self.value]

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


class Metrics(BaseModel):
    inference_time: float | None = Field(None, description="Seconds spent in the denoising pipeline.")
    queue_time: float | None = Field(None, description="Seconds between submit and start.")
    total_time: float | None = Field(None, description="Seconds between submit and finish.")


class Progress(BaseModel):
    step: int
    total: int


class SubmitResponse(BaseModel):
    request_id: str
    status: JobStatus = JobStatus.QUEUED
    status_url: str
    response_url: str
    cancel_url: str


class StatusBody(BaseModel):
    request_id: str
    status: JobStatus
    metrics: Metrics = Field(default_factory=Metrics)
    error: str | None = None
    queue_position: int | None = Field(None, description="Extension: jobs ahead of this one while QUEUED.")
    progress: Progress | None = Field(None, description="Extension: denoising progress while PROCESSING.")


class ImageInfo(BaseModel):
    url: str
    content_type: str
    file_size: int
    seed: int


class ResultBody(BaseModel):
    request_id: str
    status: JobStatus
    error: str | None = None
    output: str | list[str] | None = Field(None, description="Image URL, or a list when samples > 1.")
    images: list[ImageInfo] = Field(default_factory=list)
    seed: int | None = None
    metrics: Metrics = Field(default_factory=Metrics)


class V1Base64Response(BaseModel):
    image: str
    seed: int
    content_type: str
    request_id: str


class V1MultiResponse(BaseModel):
    images: list[str]
    seeds: list[int]
    content_type: str
    request_id: str
