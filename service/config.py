"""All configuration, from environment variables (same names locally and on Modal)."""

import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REAL_MODEL_NAME = "stable-diffusion-v1-5/stable-diffusion-inpainting"
API_KEYS_FORMS = 'separate keys with commas or spaces (k1,k2 or "k1 k2"), or write a JSON list (["k1","k2"])'
API_KEY_CHARS = re.compile(r"""[^\s"',;\[\]]+""")  # no whitespace, quotes, commas, semicolons, brackets


def parse_api_keys(value: str) -> list[str]:
    """API_KEYS as written in the environment: "k1,k2", "k1 k2" or '["k1","k2"]'. Anything else is refused,
    so a typo never silently becomes a key."""
    text = value.strip()
    if text.startswith("["):
        try:
            keys = json.loads(text)
        except ValueError:
            raise ValueError(f"starts with '[' but is not a valid JSON list; {API_KEYS_FORMS}") from None
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError(f"as JSON it must be a list of strings; {API_KEYS_FORMS}")
        keys = [k.strip() for k in keys]
    elif "," in text:
        keys = [k.strip() for k in text.split(",")]
    else:
        keys = text.split()
    keys = [k for k in keys if k]
    for key in keys:
        if not (key.isascii() and key.isprintable() and API_KEY_CHARS.fullmatch(key)):
            raise ValueError(f"a key contains a space, quote, bracket, comma or semicolon, or a "
                             f"non-ASCII character; {API_KEYS_FORMS}")
    return list(dict.fromkeys(keys))  # drop duplicates, keep order


def state_dir_problem(state_dir: Path) -> str | None:
    """None when STATE_DIR can hold our files; else one message that says what is wrong and what to do."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        return None
    except (NotADirectoryError, FileExistsError):
        reason = "it, or a folder on its path, is a file rather than a directory"
    except PermissionError:
        reason = "this user may not create or write files there (permission denied)"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    return (f"STATE_DIR={state_dir} is not usable: {reason}. STATE_DIR holds the job database, result files "
            f"and the generated API key: set STATE_DIR to a directory this user can write (it is created if "
            f"missing), or fix the path.")


def default_model_dir() -> Path:
    return Path.home() / ".cache" / "inpaint" / "sd15-inpainting"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description='"k1,k2", "k1 k2" or a JSON list ["k1","k2"]')
    public_base_url: str | None = None
    state_dir: Path = Path(".state")
    model_dir: Path = Field(default_factory=default_model_dir)
    mask_model_dir: Path | None = None  # the CLIPSeg weights for mask_prompt; unset: the clipseg folder of MODEL_DIR
    demo: bool = Field(False, description="serving the tiny random-weight demo model")

    allow_private_urls: bool = False
    result_ttl_seconds: int = Field(3600, ge=1)
    sweep_interval_seconds: float = Field(60.0, gt=0)

    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = "inpaint/"
    s3_public_base_url: str | None = None  # e.g. a CDN in front of the bucket; else presigned URLs
    # The bucket's region, passed to boto3 explicitly: presigned URLs are signed for it (botocore reads only
    # AWS_DEFAULT_REGION by itself; a URL signed for the wrong region fails for buckets outside us-east-1).
    s3_region: str | None = Field(None, validation_alias=AliasChoices("S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"))

    max_body_bytes: int = 32 * 1024 * 1024
    input_max_bytes: int = 20 * 1024 * 1024
    input_max_pixels: int = 4096 * 4096
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 15.0
    fetch_max_redirects: int = 3

    # Limits and budgets (state in the job store, so they hold across processes/containers)
    rate_limit_per_second: float = Field(10.0, ge=0)  # per key, submissions; 0 = off
    rate_limit_burst: int = Field(50, ge=1)
    status_polls_per_second: float = Field(50.0, ge=0)  # per key and web process, status and result GETs; 0 = off
    status_poll_burst: int = Field(100, ge=1)
    max_queue_depth: int = Field(1000, ge=0)  # jobs queued or running; 0 = off
    key_credits: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)  # "key=images,key2=images"
    default_key_credits: int | None = Field(None, ge=0)  # budget for keys not in KEY_CREDITS; unset = unlimited
    daily_image_cap: int = Field(0, ge=0)  # images per UTC day for the whole deployment; 0 = off
    # USD per UTC day for the whole deployment (priced jobs' cost_usd); unset = no cap. Reached: new jobs get 429.
    spend_cap_usd_per_day: float | None = Field(None, gt=0, allow_inf_nan=False)
    metrics_token: str | None = None  # a Bearer token that may read GET /metrics (any API key may too)
    job_timeout_seconds: float = Field(600.0, gt=0)  # a job running longer is FAILED "timed out"
    max_queue_seconds: float = Field(3600.0, gt=0)  # a job still queued this long is FAILED "expired in queue"
    lease_seconds: float = Field(120.0, gt=0)  # a PROCESSING job silent this long is retried once, then FAILED
    storage_retries: int = Field(4, ge=1)

    webhook_secret: str | None = None  # "whsec_<base64>"; generated into STATE_DIR when unset (embedded)
    webhook_attempts: int = Field(5, ge=1, le=20)
    webhook_first_delay_seconds: float = Field(1.0, ge=0)
    webhook_timeout_seconds: float = Field(15.0, gt=0, le=120)  # one attempt, connecting to the answer's headers

    v1_timeout_seconds: float = Field(120.0, gt=0)
    # Threads for blocking store calls made on behalf of requests (0: Python's default, min(32, cores + 4)). On
    # Modal each store call is a network round trip, so the web container gets one per concurrent request.
    blocking_threads: int = Field(0, ge=0, le=1024)
    # On shutdown, how long to let a running job finish; an unfinished one is retried at the next start.
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    safety_checker: bool = True
    torch_compile: bool = False  # channels_last + fused QKV + torch.compile of the UNet (CUDA only; no autotune)
    # The UNet replayed from CUDA graphs, one per input shape (inference/cuda_graphs.py; CUDA only, not with
    # TORCH_COMPILE): removes the per-kernel launch cost that dominates at one image per call on a fast GPU.
    cuda_graphs: bool = False
    feather_px: int = Field(4, ge=0, le=64)
    # Dynamic batching: up to this many single-image jobs of the same size, steps, scheduler, strength and
    # guidance share one pipeline call; the worker waits at most batch_wait_ms for company. 1 = off. Unset:
    # GPU_BATCH_MAX_IMAGES on a GPU, where it pays, and off on CPU, where it does not.
    batch_max_images: int | None = Field(None, ge=1, le=16)
    batch_wait_ms: float = Field(10.0, ge=0, le=1000)
    # The GPU this deployment pays for (a Modal GPU type such as L4 or H100): prices each job's GPU seconds
    # in metrics.cost_usd (prices in service/pricing.py; override with GPU_PRICE_PER_SECOND). Unset: no cost.
    gpu_price_per_second: str = ""  # overrides of the list prices: "L4=0.0003,H100=0.0012" or a JSON object
    gpu_type: str | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("key_credits", mode="before")
    @classmethod
    def _parse_credits(cls, value):
        if isinstance(value, str):
            pairs = [p.strip() for p in value.split(",") if p.strip()]
            try:
                return {k.strip(): int(v) for k, v in (p.rsplit("=", 1) for p in pairs)}
            except ValueError:
                raise ValueError("KEY_CREDITS must look like 'key1=100,key2=20'") from None
        return value

    @field_validator("gpu_price_per_second")
    @classmethod
    def _valid_prices(cls, value):
        from service.jobs.pricing import parse_overrides

        parse_overrides(value)  # a malformed price list is refused at start-up, saying what is wrong
        return value

    @field_validator("gpu_type", mode="before")
    @classmethod
    def _known_gpu(cls, value, info: ValidationInfo):
        from service.jobs.pricing import ENV_VAR, price_per_second, price_table

        if value:  # a GPU type without a price is refused at start-up, with the known ones
            price_per_second(value, price_table(env={ENV_VAR: info.data.get("gpu_price_per_second", "")}))
        return value or None

    def price_table(self) -> dict[str, float]:
        """USD per GPU second by GPU type: the list prices with GPU_PRICE_PER_SECOND's overrides."""
        from service.jobs.pricing import ENV_VAR, price_table

        return price_table(env={ENV_VAR: self.gpu_price_per_second})

    @field_validator("public_base_url", "s3_public_base_url", "s3_endpoint_url", "s3_bucket", "s3_region",
                     "spend_cap_usd_per_day", "metrics_token", mode="before")
    @classmethod
    def _blank_is_none(cls, value):
        return value or None

    @property
    def model_name(self) -> str:
        return "tiny random-weight demo model (paints noise)" if self.demo else REAL_MODEL_NAME


# Dynamic batching's default on a GPU: 8 single-image jobs per pipeline call (one H200 served 3.5x the images per
# second with 8 clients, batching on against off). On CPU it does not pay (docs/PERFORMANCE.md).
GPU_BATCH_MAX_IMAGES = 8

# What Modal's `gpu=` accepts (modal.com/docs/guide/gpu; case does not matter). Modal's client does not check
# the name, so a typo would deploy and then fail every container.
MODAL_GPU_TYPES = ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "RTX-PRO-6000", "H100",
                   "H100!", "H200", "B200", "B200+", "ANY")


# Runtime settings a Modal deploy does not take from the deploying shell: keys, credits, the metrics token and the
# webhook secret come from Secrets (S3_* too), and a few do not apply or follow from the deploy knobs (GPU_TYPE is INPAINT_GPU).
DERIVED_SETTINGS = {"api_keys", "webhook_secret", "key_credits", "metrics_token", "host", "port", "state_dir",
                    "model_dir", "mask_model_dir", "gpu_type", "demo"}


class DeployConfig(BaseSettings):
    """Knobs of the Modal deployment, read when `modal deploy app.py` runs (prefix INPAINT_). app.py hands the
    same values to every container as environment variables, so containers read what the deploy read."""

    model_config = SettingsConfigDict(env_prefix="INPAINT_", extra="ignore")

    app_name: str = "inpaint"
    gpu: str = "L4"  # a Modal GPU type (MODAL_GPU_TYPES); L4 (~$0.80/h) suits SD1.5; see docs/DEPLOY.md "Pick a GPU"
    scaledown_window: int = Field(60, ge=2, le=3600)  # idle seconds before a GPU container stops
    min_containers: int = Field(0, ge=0)  # 0 = scale to zero
    max_containers: int = Field(4, ge=1)  # the cost cap: never more GPUs than this
    buffer_containers: int = Field(0, ge=0)  # warm spares while busy (cost!)
    timeout: int = Field(600, ge=30, le=86400)  # per-job execution limit on the GPU (the job's own: this - 10 s)
    # How long a GPU container may take to start (after a snapshot restore: the move to the GPU, and the
    # torch.compile warm-up when TORCH_COMPILE is on). Modal kills a start that runs longer.
    startup_timeout: int = Field(600, ge=60, le=3600)
    gpu_snapshot: bool = False  # experimental GPU memory snapshots
    web_max_inputs: int = Field(100, ge=1)  # concurrent requests per web container
    v1_timeout_seconds: float = Field(110.0, gt=0, lt=150)  # Modal web requests stop at 150 s, counted from arrival
    compile_cache_volume: str = "inpaint-compile-cache"
    active_dict: str = "inpaint-active"
    expiry_dict: str = "inpaint-expiry"
    counters_dict: str = "inpaint-counters"
    weights_volume: str = "inpaint-weights"
    files_volume: str = "inpaint-files"  # job inputs and results, unless the S3 Secret names a bucket
    records_dict: str = "inpaint-jobs"
    api_keys_secret: str = "inpaint-api-keys"
    s3_secret: str = ""  # a Modal Secret with S3_BUCKET and credentials: inputs and results in S3/R2 instead
    webhook_secret: str = "inpaint-webhooks"
    sweep_minutes: int = Field(5, ge=1)
    # Dynamic batching on the GPU class (modal.batched); 1 = off.
    batch_max_images: int = Field(GPU_BATCH_MAX_IMAGES, ge=1, le=16)
    batch_wait_ms: int = Field(10, ge=0, le=1000)

    @field_validator("gpu")
    @classmethod
    def _modal_gpu(cls, value: str) -> str:
        """Refused at deploy time rather than by every container: Modal checks GPU names only on its side."""
        name, sep, count = value.strip().partition(":")
        if name.upper() not in MODAL_GPU_TYPES:
            raise ValueError(f"{value!r} is not a Modal GPU type; use one of {', '.join(MODAL_GPU_TYPES)}, "
                             f"optionally with a count (H100:2)")
        if sep and not (count.isdigit() and 1 <= int(count) <= 8):
            raise ValueError(f"{value!r}: the GPU count after ':' must be 1 to 8")
        return value.strip()
