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
    """Every error answer: what went wrong, in words, and the parameter at fault when there is one."""

    error: str
    field: str | None = None
    request_id: str | None = Field(None, description="The job concerned, when the error is about one.")


class Metrics(BaseModel):
    inference_time: float | None = Field(None, description="Seconds spent in the denoising pipeline.")
    mask_time: float | None = Field(
        None, description="Extension: seconds the mask model took to find the mask_prompt's mask (null without "
                          "mask_prompt); part of gpu_seconds, not of inference_time.")
    queue_time: float | None = Field(None, description="Seconds between submit and start.")
    total_time: float | None = Field(None, description="Seconds between submit and finish.")
    overhead_time: float | None = Field(
        None, description="Extension: the service's own seconds for a completed job: taking the request in "
                          "(reading, validating and decoding the inputs, limits, storing the job; not fetching "
                          "URL inputs) plus the worker's time outside the model call (preparing the inputs, "
                          "paste-back, encoding, storing the result). Not the time spent waiting in the queue.")
    gpu_seconds: float | None = Field(
        None, description="Extension: this job's share of the worker's busy time (the model call, shared by "
                          "image count when batched, plus encoding and storing its results).")
    cost_usd: float | None = Field(
        None, description="Extension: gpu_seconds at the deployment's price per GPU second (null when the "
                          "deployment sets no GPU type, e.g. on CPU). Idle and cold-start time are not in it.")
    batch_size: int | None = Field(None, description="Extension: jobs in the pipeline call this job ran in.")
    cold_start_time: float | None = Field(
        None, description="Extension: seconds of model loading this job waited for (only jobs that started "
                          "a worker); part of queue_time.")


class Progress(BaseModel):
    step: int
    total: int


SEED_STR = "The seed as a decimal string: exact in JavaScript, whose numbers lose digits past 2^53."


def warnings_field():
    """Present only when there is something to say, so answers without warnings keep Segmind's shape."""
    return Field(default_factory=list, exclude_if=lambda warnings: not warnings,
                 description="Extension: what you should know about inputs that were accepted as they are, "
                             "e.g. a mask of another aspect ratio than the image (stretched to fit). "
                             "Absent when there is none.")


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
    warnings: list[str] = warnings_field()


class ImageInfo(BaseModel):
    url: str
    content_type: str
    file_size: int
    seed: int
    seed_str: str = Field(description=SEED_STR)


class ResultBody(BaseModel):
    request_id: str
    status: JobStatus
    error: str | None = None
    output: str | list[str] | None = Field(None, description="Image URL, or a list when samples > 1.")
    images: list[ImageInfo] = Field(default_factory=list)
    seed: int | None = None
    seed_str: str | None = Field(None, description=SEED_STR)
    metrics: Metrics = Field(default_factory=Metrics)
    warnings: list[str] = warnings_field()


class FailedBody(BaseModel):
    """A FAILED job, as v2 status/result (HTTP 422) and the final webhook answer it."""

    request_id: str
    status: JobStatus = JobStatus.FAILED
    error: str
    failure: str | None = Field(None, description="Why, as a stable code: cancelled, blocked, timed_out, "
                                                  "storage, unavailable, worker_lost, expired, internal.")
    metrics: Metrics = Field(default_factory=Metrics)
    warnings: list[str] = warnings_field()


class HealthResponse(BaseModel):
    """GET /health: whether the service can take jobs, and what it serves."""

    status: str = Field(description="ok (ready for jobs), loading (the model is loading; jobs queue meanwhile), "
                                    "degraded (the job store or result storage is failing; `error` says how), "
                                    "or error (the worker tier cannot run jobs; `error` says why).")
    model: str = Field(description="The model served (the tiny random-weight model in demo mode).")
    demo: bool = Field(description="True when serving the tiny random-weight demo model, which paints noise.")
    device: str | None = Field(description="Where jobs run: cpu, cuda:0, or modal:<GPU type>; null until the "
                                           "model has loaded.")
    queue_depth: int | None = Field(description="Jobs queued or running; null when the job store cannot be read.")
    error: str | None = Field(description="Why the status is error or degraded; null otherwise.")


class UsageDay(BaseModel):
    date: str = Field(description="UTC day, YYYY-MM-DD (jobs count on the day they ended).")
    jobs: int = Field(description="Jobs that used the GPU (completed, or failed after running).")
    images: int = Field(description="Images delivered.")
    gpu_seconds: float = Field(description="Sum of the jobs' metrics.gpu_seconds.")
    cost_usd: float | None = Field(
        description="Sum of the jobs' metrics.cost_usd; null when a job of that day has no price (its "
                    "metrics.cost_usd is null: the deployment sets no GPU type, e.g. on CPU); 0 on a day without jobs.")


class UsageResponse(BaseModel):
    days: list[UsageDay] = Field(description="Newest first, one entry per day, zeros included.")
    spend_today_usd: float = Field(
        0.0, description="What the whole deployment's priced jobs (every key's) that ended this UTC day cost: the "
                         "figure the spend cap is checked against. 0 when no GPU type is set (e.g. on CPU).")
    spend_cap_usd_per_day: float | None = Field(
        None, description="The deployment's spend cap (SPEND_CAP_USD_PER_DAY): once the day's spend reaches it, "
                          "new jobs get 429 until 00:00 UTC. null when none is set.")


class CancelResponse(BaseModel):
    request_id: str
    status: str = Field(description="CANCELLED (never ran), CANCELLING (stops at the next step), or the "
                                    "job's final status when it had already finished.")
    message: str


class V1Base64Response(BaseModel):
    """v1 with base64=true and one sample."""

    image: str
    seed: int
    seed_str: str = Field(description=SEED_STR)
    content_type: str
    request_id: str


class V1MultiResponse(BaseModel):
    """v1 with samples > 1: always JSON with base64 images."""

    images: list[str]
    seeds: list[int]
    seeds_str: list[str] = Field(description=SEED_STR)
    content_type: str
    request_id: str
