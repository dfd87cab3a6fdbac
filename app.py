"""Modal deployment: `modal deploy app.py`. Glue only; the logic lives in schemas/, service/, inference/.

- web:              the same FastAPI app, light image (no torch), many requests per container
- Inpainter:        GPU class; loads the pipeline once per container (memory snapshot), runs jobs
- sweep:            scheduled: expired jobs and their objects, jobs whose GPU call died, credit counters, and
                    held low-priority jobs handed to idle GPU containers
- deliver_webhook:  signed webhook delivery with retries, off the GPU
- download_weights: `modal run app.py::download_weights` fills the weight Volume

Deploy-time knobs are INPAINT_* environment variables (service.config.DeployConfig); runtime settings are
the same variables as the embedded server (service.config.Settings). Both are read on the machine that runs
`modal deploy`, checked there, and handed to every container as environment, so containers see what the
deploy saw.
"""

import logging
import os
import time
from pathlib import Path

import modal

from service.config import DERIVED_SETTINGS, DeployConfig, Settings

cfg = DeployConfig()
WEIGHTS_ROOT = "/weights"
CURRENT_WEIGHTS = f"{WEIGHTS_ROOT}/CURRENT"  # names the weights directory in use (see download_weights)
COMPILE_CACHE = "/compile-cache"

# Each image ships exactly the packages its functions import (tests/test_images.py installs each list into a
# venv of its own and runs the functions there). Exact pins, Python 3.11.
CONFIG_PACKAGES = ["pydantic==2.14.3", "pydantic-settings==2.16.3"]  # app.py itself reads service/config.py
# The job layer and its stores (sweep, webhooks): S3 through boto3, webhooks through httpx, images with Pillow.
JOBS_PACKAGES = CONFIG_PACKAGES + ["httpx==0.28.1", "boto3==1.44.5", "pillow==13.0.0"]
WEB_PACKAGES = JOBS_PACKAGES + [
    "fastapi==0.163.2",
    "fastapi-offline==1.7.7",  # /docs and /redoc assets, served without a CDN
    "sse-starlette==3.7.1",  # the status stream (server-sent events)
    "prometheus-client==0.26.0",  # GET /metrics
]
# The torch line the tests run, as the CUDA build PyPI serves for Linux. diffusers loads the pipeline with
# transformers (CLIP), accelerate and safetensors; the LMS scheduler needs scipy.
GPU_PACKAGES = JOBS_PACKAGES + [
    "torch==2.13.0",
    "diffusers==0.42.1",
    "transformers==5.23.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "huggingface-hub==2.4.0",
    "scipy==1.17.1",
    "numpy==2.4.6",
]
# weights/download.py fetches with huggingface-hub and checks the hub is reachable with httpx first.
DOWNLOAD_PACKAGES = CONFIG_PACKAGES + ["huggingface-hub==2.4.0", "httpx==0.28.1"]
IGNORE = ["**/__pycache__/**", "**/*.pyc"]

# Settings that are not secrets travel as plain environment; the others (DERIVED_SETTINGS) come from Secrets or
# do not apply.


def gpu_price_env() -> dict[str, str]:
    """GPU_TYPE, which prices each job's GPU seconds, when a price for INPAINT_GPU is known; else nothing (and a
    note at deploy): the deployment then runs with metrics.cost_usd null rather than failing to start."""
    from service.jobs.pricing import normalize_gpu, price_table

    gpu = normalize_gpu(cfg.gpu)
    if gpu in price_table():
        return {"GPU_TYPE": cfg.gpu}  # with its count (H100:2): a container pays for every GPU it holds
    if modal.is_local():
        print(f"note: no price is known for GPU type {cfg.gpu!r}: metrics.cost_usd and the costs in /usage stay "
              f"empty. To price it, deploy with GPU_PRICE_PER_SECOND={gpu}=<USD per second>.")
    return {}


def container_env() -> dict[str, str]:
    env = {f"INPAINT_{name.upper()}": str(value) for name, value in cfg.model_dump().items()}
    env |= gpu_price_env()
    for name in Settings.model_fields:
        if name not in DERIVED_SETTINGS and not name.startswith("s3_") and name.upper() in os.environ:
            env[name.upper()] = os.environ[name.upper()]
    env["V1_TIMEOUT_SECONDS"] = str(cfg.v1_timeout_seconds)
    env["BATCH_MAX_IMAGES"] = str(cfg.batch_max_images)  # the GPU class's modal.batched size, for grouping
    env["BLOCKING_THREADS"] = str(cfg.web_max_inputs)  # a web container's store calls are network round trips
    # The job's own limit stays under Modal's, so a job ends FAILED "timed out" rather than killed mid-write.
    job_timeout = float(os.environ.get("JOB_TIMEOUT_SECONDS", cfg.timeout))
    env["JOB_TIMEOUT_SECONDS"] = str(min(job_timeout, cfg.timeout - 10))
    return env


def checked_env() -> dict[str, str]:
    """container_env(), refused at deploy time when the containers would refuse it at start."""
    env = container_env()
    if modal.is_local():  # raises, naming each bad variable
        Settings(**{name: env[name.upper()] for name in Settings.model_fields if name.upper() in env})
    return env


web_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*WEB_PACKAGES)
    # Keep non-Python files too: service/http/playground.html is served at /.
    .add_local_python_source("schemas", "service", ignore=IGNORE)
)
jobs_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*JOBS_PACKAGES)
    .add_local_python_source("schemas", "service", ignore=IGNORE)
)
gpu_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*GPU_PACKAGES)
    .env({"HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": f"{COMPILE_CACHE}/inductor",
          "TRITON_CACHE_DIR": f"{COMPILE_CACHE}/triton"})
    .add_local_python_source("schemas", "service", "inference", "weights", ignore=IGNORE)
)
download_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*DOWNLOAD_PACKAGES)
    .add_local_python_source("service", "weights", ignore=IGNORE)
)

app = modal.App(cfg.app_name)
weights = modal.Volume.from_name(cfg.weights_volume, create_if_missing=True)
compile_cache = modal.Volume.from_name(cfg.compile_cache_volume, create_if_missing=True)
dicts = {
    "records": modal.Dict.from_name(cfg.records_dict, create_if_missing=True),
    "active": modal.Dict.from_name(cfg.active_dict, create_if_missing=True),
    "expiry": modal.Dict.from_name(cfg.expiry_dict, create_if_missing=True),
    "counters": modal.Dict.from_name(cfg.counters_dict, create_if_missing=True),
}
# Job inputs and results, written and read through the Volume's API (service/stores/volume_files.py), unless
# INPAINT_S3_SECRET names a Secret with S3_BUCKET: then they go to that bucket and the Volume stays empty.
files = modal.Volume.from_name(cfg.files_volume, create_if_missing=True, version=2)
api_keys_secret = modal.Secret.from_name(cfg.api_keys_secret)  # API_KEYS (and KEY_CREDITS if used)
webhook_secret = modal.Secret.from_name(cfg.webhook_secret)  # WEBHOOK_SECRET (whsec_...)
# What the functions that touch inputs and results get: S3_BUCKET, AWS_REGION, AWS_* credentials, if any.
storage_secrets = [modal.Secret.from_name(cfg.s3_secret)] if cfg.s3_secret else []
runtime_env = checked_env()
# Modal's limit covers one call; a batched call may run its jobs in turn (those that cannot share a pipeline
# call, or all of them again one by one after a failed batch call), each under its own JOB_TIMEOUT_SECONDS,
# so the call's limit grows with the batch.
GPU_CALL_TIMEOUT = cfg.timeout if cfg.batch_max_images == 1 else min(86400, 2 * cfg.timeout * cfg.batch_max_images)
# A sweep never runs into the next one; half of its time may go to forgetting expired jobs.
SWEEP_TIMEOUT = cfg.sweep_minutes * 60


def _settings() -> Settings:
    """Runtime settings from env + Secrets."""
    from service.logs import configure_logging

    configure_logging()
    settings = Settings()
    if cfg.s3_secret and not settings.s3_bucket and not modal.is_local():
        raise RuntimeError(f"S3_BUCKET is not set: add it to the Modal Secret {cfg.s3_secret!r}, or deploy without "
                           f"INPAINT_S3_SECRET to keep inputs and results in the Volume {cfg.files_volume!r}")
    return settings


def _backend(settings: Settings, dispatching: bool = False):
    """The same composition root as the embedded server, over modal.Dicts. A finished job with a webhook_url
    gets its delivery spawned (once: only the caller that ended the job runs this hook)."""
    from service.backend import build_modal

    def spawn_webhook(record):
        if record.webhook_url:
            deliver_webhook.spawn(record.id)

    spawn = (lambda job_id: Inpainter().run.spawn(job_id)) if dispatching else None
    return build_modal(settings, dicts, spawn=spawn, call_from_id=modal.FunctionCall.from_id, gpu=cfg.gpu,
                       on_terminal=spawn_webhook, files_volume=files)


def current_weights_dir() -> Path:
    pointer = Path(CURRENT_WEIGHTS)
    return Path(WEIGHTS_ROOT) / pointer.read_text().strip() if pointer.is_file() else Path(WEIGHTS_ROOT) / "missing"


@app.cls(
    image=gpu_image,
    gpu=cfg.gpu,
    volumes={WEIGHTS_ROOT: weights.with_mount_options(read_only=True), COMPILE_CACHE: compile_cache},
    secrets=storage_secrets,
    env=runtime_env,
    scaledown_window=cfg.scaledown_window,
    min_containers=cfg.min_containers,
    max_containers=cfg.max_containers,
    buffer_containers=cfg.buffer_containers,
    timeout=GPU_CALL_TIMEOUT,
    startup_timeout=cfg.startup_timeout,
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True} if cfg.gpu_snapshot else None,
)
class Inpainter:
    @modal.enter(snap=True)
    def load(self):
        """Before the memory snapshot. Without INPAINT_GPU_SNAPSHOT no GPU is attached here: the weights go into
        CPU memory in fp16 with every CUDA query kept out (inference/snapshot.py), and connect() moves them
        after each restore. With it, the GPU is attached and its memory is in the snapshot too: the model goes
        to the GPU here and runs its warm-up, so restored containers start ready."""
        from inference.snapshot import no_device_queries

        settings = _settings()
        self.on_gpu = cfg.gpu_snapshot and not modal.is_local()
        if self.on_gpu:
            self.model = self._load_model(settings, "cuda")
            self._prepare_gpu(settings)
            return
        with no_device_queries() as queries:
            self.model = self._load_model(settings, "cpu")
        for query in queries:
            print(f"kept out of the memory snapshot: {query}")

    def _load_model(self, settings: Settings, device: str):
        import torch

        from inference import Inpainter as Model, WeightsNotFound

        model_dir = settings.model_dir if modal.is_local() else current_weights_dir()
        dtype = torch.float32 if modal.is_local() else torch.float16
        try:
            return Model.from_settings(settings, model_dir, device=device, dtype=dtype, compile_unet=False)
        except WeightsNotFound:
            raise RuntimeError(f"no weights in the Modal Volume {cfg.weights_volume!r} ({model_dir}): fill it "
                               f"once with `modal run app.py::download_weights`, then redeploy") from None

    @modal.enter(snap=False)
    def connect(self):
        """After every restore: move to the GPU (loudly, if there is none) unless the snapshot holds it there
        already, compile if asked, open the stores."""
        started = time.perf_counter()
        settings = _settings()
        if not modal.is_local() and not self.on_gpu:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"no CUDA device in this GPU container ({cfg.gpu}); refusing to run on CPU")
            self._prepare_gpu(settings)
        self.backend = _backend(settings)
        self.timeout = settings.job_timeout_seconds
        # What the first jobs waited for inside the container (metrics.cold_start_time). A restore from the
        # memory snapshot happens before Python runs and is not in it.
        self.cold_start = time.perf_counter() - started

    def _prepare_gpu(self, settings: Settings) -> None:
        """The model to the GPU; with TORCH_COMPILE, compiled by one warm-up job whose attempt is recorded on the
        compile-cache Volume (a warm-up Modal killed at the start-up limit is not tried again:
        inference/compile_warmup.py); with CUDA_GRAPHS, the 512x512 graph captured by that job."""
        from inference.compile_warmup import WarmupRecord, warm_up

        record = WarmupRecord(Path(COMPILE_CACHE), {"gpu": cfg.gpu, "weights": current_weights_dir().name,
                                                    "startup_timeout": cfg.startup_timeout})
        compile_unet = settings.torch_compile
        if compile_unet and (why := record.skip_reason()):
            print(f"torch.compile is off in this container: {why}. Raise INPAINT_STARTUP_TIMEOUT, or delete "
                  f"{record.path.name} from the {cfg.compile_cache_volume!r} Volume, and deploy again.")
            compile_unet = False
        self.model.compile_unet = compile_unet
        self.model.to("cuda")
        if compile_unet:
            try:
                seconds = warm_up(self.model.warm_up, record, compile_cache.commit)
                print(f"torch.compile warm-up took {seconds:.1f}s")
            except Exception as exc:  # a compile error must not stop the container: it serves uncompiled
                print(f"torch.compile warm-up failed ({type(exc).__name__}: {exc}); serving without it")
                self.model.uncompile()
        elif settings.cuda_graphs:  # the common shape's graph captured now, not on the first request
            print(f"warm-up with CUDA graphs took {self.model.warm_up():.1f}s")

    def _run(self, job_ids: list[str]) -> list[dict | None]:
        from service.jobs.worker import run_jobs
        from service.stores.modal_dispatch import outcome_to_wire

        cold_start, self.cold_start = self.cold_start, None  # only the first jobs waited for this container
        try:
            outcomes = run_jobs(job_ids, self.backend.jobs, self.model, self.timeout, cfg.batch_max_images,
                                cold_start)
        except Exception:  # e.g. the Dicts unreachable: the jobs are left to the sweep, never failed by the web
            # tier mistaking an error raised here for its own lost connection (both arrive as the same class)
            logging.getLogger("app").exception("jobs %s: the GPU call failed around them", ", ".join(job_ids))
            return [None] * len(job_ids)
        return [outcome_to_wire(outcomes[job_id]) for job_id in job_ids]

    # Called as `Inpainter().run.spawn(job_id)` either way. With INPAINT_BATCH_MAX_IMAGES > 1, Modal gathers up
    # to that many inputs (waiting at most INPAINT_BATCH_WAIT_MS) into one call; run_jobs groups the compatible
    # ones into pipeline calls. A class with a batched method may have no other Modal methods.
    if cfg.batch_max_images > 1:
        @modal.batched(max_batch_size=cfg.batch_max_images, wait_ms=cfg.batch_wait_ms)
        def run(self, job_ids: list[str]) -> list[dict | None]:
            return self._run(job_ids)
    else:
        @modal.method()
        def run(self, job_id: str) -> dict | None:
            return self._run([job_id])[0]


@app.function(image=web_image, secrets=[api_keys_secret, *storage_secrets], env=runtime_env, scaledown_window=300)
@modal.concurrent(max_inputs=cfg.web_max_inputs)
@modal.asgi_app()
def web():
    from service.http.app import create_app

    return create_app(_backend(_settings(), dispatching=True))


@app.function(image=jobs_image, secrets=[api_keys_secret, *storage_secrets], env=runtime_env, timeout=SWEEP_TIMEOUT,
              schedule=modal.Period(minutes=cfg.sweep_minutes))
def sweep():
    """Forget expired jobs and their objects; re-dispatch once (then fail) jobs whose GPU call died; fail queued
    jobs whose GPU container could not start; keep credit counters from expiring."""
    from service.jobs.housekeeping import housekeeping_round
    from service.jobs.identity import key_owner

    settings = _settings()
    jobs = _backend(settings, dispatching=True).jobs
    done = housekeeping_round(jobs, settings.lease_seconds, budget=SWEEP_TIMEOUT / 2,
                              keep_alive=[key_owner(key) for key in settings.api_keys])
    try:
        done["low-priority released"] = jobs.dispatcher.release_held(gpu_room())
    except Exception:  # Modal's stats unreachable: the held jobs wait for the next sweep
        logging.getLogger("app").exception("releasing low-priority jobs failed")
        done["low-priority released"] = None
    print("sweep: " + ", ".join(f"{what}: {'failed' if count is None else count}" for what, count in done.items()))


def gpu_room() -> int:
    """How many held low-priority jobs the running GPU containers can take now without Modal starting another:
    none while inputs wait (backlog), else the containers not running any input. Conservative: a container busy
    with a batch counts as full."""
    stats = Inpainter().run.get_current_stats()
    return 0 if stats.backlog else max(0, stats.num_total_runners - stats.num_running_inputs)


@app.function(image=jobs_image, secrets=[*storage_secrets, webhook_secret], env=runtime_env, timeout=300)
def deliver_webhook(job_id: str):
    """POST a finished job's signed final body to its webhook_url, with retries (off the GPU)."""
    from service.jobs.bodies import final_body
    from service.jobs.webhooks import deliver

    settings = _settings()
    jobs = _backend(settings).jobs
    record = jobs.records.get(job_id)
    if record is None or not record.webhook_url or not settings.webhook_secret:
        print(f"webhook for {job_id}: nothing to send (record gone, no URL, or WEBHOOK_SECRET unset)")
        return
    deliver(record.webhook_url, final_body(record, jobs.storage), f"msg_{job_id}", settings.webhook_secret,
            settings.allow_private_urls, settings.webhook_attempts, settings.webhook_first_delay_seconds,
            settings.webhook_timeout_seconds)


@app.function(image=download_image, volumes={WEIGHTS_ROOT: weights}, timeout=3600)
def download_weights(force: bool = False, safety_checker: bool = True):
    """Fill the weight Volume. Each download goes to a new directory and CURRENT is pointed at it: files a
    deployed snapshot was made from are never deleted or overwritten (that breaks restores). Weights fetched
    before the mask model existed get it added in a new folder beside them. Redeploy after either, so new
    containers load what was fetched."""
    from service.logs import configure_logging
    from weights import MASK_MODEL_FOLDER, has_mask_model
    from weights.download import download, download_mask_model

    configure_logging()
    pointer = Path(CURRENT_WEIGHTS)
    if pointer.is_file() and (current_weights_dir() / "model_index.json").is_file() and not force:
        mask_dir = current_weights_dir() / MASK_MODEL_FOLDER
        if has_mask_model(mask_dir):
            print(f"weights already in the volume at {current_weights_dir()}; pass --force to fetch a new copy")
            return
        download_mask_model(mask_dir)
        weights.commit()
        print(f"mask model added to the weights at {current_weights_dir()}: run `modal deploy app.py` again so "
              f"new containers load it (mask_prompt fails until then)")
        return
    name = f"sd15-inpainting-{time.strftime('%Y%m%d-%H%M%S')}"
    download(Path(WEIGHTS_ROOT) / name, safety_checker=safety_checker)
    pointer.write_text(name + "\n")
    weights.commit()
    print(f"weights committed to the Modal Volume {cfg.weights_volume!r} at {WEIGHTS_ROOT}/{name}. "
          f"If the app was already deployed, run `modal deploy app.py` again so new containers use them.")
