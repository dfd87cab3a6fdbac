"""Modal deployment: `modal deploy app.py`. Glue only; the logic lives in schemas/, service/, inference/.

- web:              the same FastAPI app, light image (no torch), many requests per container
- Inpainter:        GPU class; loads the pipeline once per container (memory snapshot), runs jobs
- download_weights: `modal run app.py::download_weights` fills the weight Volume once
- sweep:            scheduled deletion of expired records and result objects, lease reaper
- deliver_webhook:  signed webhook delivery with retries, off the GPU

Deploy-time knobs are INPAINT_* environment variables (service.config.DeployConfig).
"""

from pathlib import Path

import modal

from service.config import DeployConfig

cfg = DeployConfig()
WEIGHTS_DIR = "/weights/sd15-inpainting"

# Exact pins, Python 3.11. The web image has no torch: it cold-starts in well under a second.
WEB_PACKAGES = [
    "fastapi==0.163.2",
    "fastapi-offline==1.7.7",  # /docs and /redoc assets, served without a CDN
    "uvicorn==0.54.0",
    "pydantic==2.14.3",
    "pydantic-settings==2.16.3",
    "httpx==0.28.1",
    "boto3==1.44.5",
    "pillow==13.0.0",
]
# torch 2.9.1 is the release xformers 0.0.33.post2 is built against (CUDA 12.8 wheels on PyPI).
GPU_PACKAGES = WEB_PACKAGES + [
    "torch==2.9.1",
    "xformers==0.0.33.post2",
    "diffusers==0.42.1",
    "transformers==5.23.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "huggingface-hub==2.4.0",
    "scipy==1.17.1",
    "torchsde==0.2.6",
    "numpy==2.4.6",
]
DOWNLOAD_PACKAGES = ["huggingface-hub==2.4.0", "pydantic-settings==2.16.3"]

web_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*WEB_PACKAGES)
    # Keep non-Python files too: service/playground.html is served at /.
    .add_local_python_source("schemas", "service", ignore=["**/__pycache__/**", "**/*.pyc"])
)
gpu_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*GPU_PACKAGES)
    .env({"HF_HUB_OFFLINE": "1", "XFORMERS": "1"})
    .add_local_python_source("schemas", "service", "inference", "scripts")
)
download_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*DOWNLOAD_PACKAGES)
    .add_local_python_source("scripts")
)

app = modal.App(cfg.app_name)
weights = modal.Volume.from_name(cfg.weights_volume, create_if_missing=True)
jobs_dict = modal.Dict.from_name(cfg.records_dict, create_if_missing=True)
api_keys_secret = modal.Secret.from_name(cfg.api_keys_secret)  # API_KEYS
s3_secret = modal.Secret.from_name(cfg.s3_secret)  # S3_BUCKET, S3_ENDPOINT_URL, AWS_* credentials
webhook_secret = modal.Secret.from_name(cfg.webhook_secret)  # WEBHOOK_SECRET (whsec_...)
runtime_env = {"V1_TIMEOUT_SECONDS": str(cfg.v1_timeout_seconds), "MODEL_DIR": WEIGHTS_DIR}


def _settings():
    """Runtime settings from env + Secrets. On Modal, results must go to S3 (containers share no disk)."""
    from service.config import Settings

    settings = Settings()
    if not settings.s3_bucket and not modal.is_local():
        raise RuntimeError(f"S3_BUCKET is not set: add it to the Modal Secret {cfg.s3_secret!r} (see README)")
    return settings


def _store():
    """The job store over the modal.Dict; a job that finishes with a webhook_url gets its delivery spawned."""
    from service.modal_backend import ModalDictJobStore

    def spawn_webhook(record):
        if record.webhook_url:
            deliver_webhook.spawn(record.id)

    return ModalDictJobStore(jobs_dict, on_terminal=spawn_webhook)


@app.cls(
    image=gpu_image,
    gpu=cfg.gpu,
    volumes={"/weights": weights.read_only()},
    secrets=[s3_secret],
    env=runtime_env,
    scaledown_window=cfg.scaledown_window,
    min_containers=cfg.min_containers,
    max_containers=cfg.max_containers,
    buffer_containers=cfg.buffer_containers,
    timeout=cfg.timeout,
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True} if cfg.gpu_snapshot else None,
)
class Inpainter:
    @modal.enter(snap=True)
    def load(self):
        """Runs before the memory snapshot: load weights into CPU memory (GPU memory with gpu_snapshot)."""
        import torch

        from inference import Inpainter as Model
        from inference import WeightsNotFound

        settings = _settings()
        device = "cuda" if (cfg.gpu_snapshot and torch.cuda.is_available()) else "cpu"
        dtype = None if modal.is_local() else torch.float16  # fp16 weights stay fp16 in the snapshot
        try:
            self.model = Model(settings.model_dir, device=device, dtype=dtype, safety_checker=settings.safety_checker,
                               xformers=settings.xformers, feather_px=settings.feather_px)
        except WeightsNotFound:
            raise RuntimeError(
                f"no weights in the Modal Volume {cfg.weights_volume!r} at {settings.model_dir}: "
                f"fill it once with `modal run app.py::download_weights`"
            ) from None

    @modal.enter(snap=False)
    def connect(self):
        """Runs after every restore: move to the GPU, open the job store and result storage."""
        import torch

        from service.storage import make_storage

        if torch.cuda.is_available() and not self.model.device.startswith("cuda"):
            self.model.to("cuda")
        settings = _settings()
        self.store = _store()
        self.storage = make_storage(settings)
        self.timeout = min(settings.job_timeout_seconds, cfg.timeout - 10)

    @modal.method()
    def run(self, job_id: str) -> dict | None:
        from service.modal_backend import outcome_to_wire
        from service.worker import run_job

        return outcome_to_wire(run_job(job_id, self.store, self.storage, self.model, self.timeout))


@app.function(image=web_image, secrets=[api_keys_secret, s3_secret], env=runtime_env, scaledown_window=300)
@modal.concurrent(max_inputs=cfg.web_max_inputs)
@modal.asgi_app()
def web():
    from service.app import create_app
    from service.modal_backend import ModalDispatcher
    from service.storage import make_storage

    settings = _settings()
    store = _store()
    dispatcher = ModalDispatcher(
        store,
        spawn=lambda job_id: Inpainter().run.spawn(job_id),
        call_from_id=modal.FunctionCall.from_id,
        gpu=cfg.gpu,
    )
    return create_app(settings, store, make_storage(settings), dispatcher)


@app.function(image=web_image, secrets=[s3_secret], env=runtime_env, schedule=modal.Period(minutes=cfg.sweep_minutes))
def sweep():
    """Delete expired records and objects; retry once (then fail) jobs whose GPU container went silent."""
    from service.expiry import reap_stale, sweep_expired
    from service.storage import make_storage

    settings = _settings()
    store = _store()
    removed = sweep_expired(store, make_storage(settings))
    reaped = reap_stale(store, lambda job_id: Inpainter().run.spawn(job_id), settings.lease_seconds)
    print(f"sweep: removed {removed} expired job(s), re-dispatched or failed {reaped} silent job(s)")


@app.function(image=web_image, secrets=[s3_secret, webhook_secret], env=runtime_env, timeout=300)
def deliver_webhook(job_id: str):
    """POST a finished job's signed final body to its webhook_url, with retries (off the GPU)."""
    from service.bodies import final_body
    from service.modal_backend import ModalDictJobStore
    from service.storage import make_storage
    from service.webhooks import deliver

    settings = _settings()
    record = ModalDictJobStore(jobs_dict).get(job_id)
    if record is None or not record.webhook_url or not settings.webhook_secret:
        print(f"webhook for {job_id}: nothing to send (record gone, no URL, or WEBHOOK_SECRET unset)")
        return
    deliver(record.webhook_url, final_body(record, make_storage(settings)), f"msg_{job_id}",
            settings.webhook_secret, settings.allow_private_urls, settings.webhook_attempts,
            settings.webhook_first_delay_seconds)


@app.function(image=download_image, volumes={"/weights": weights}, timeout=3600)
def download_weights(force: bool = False, safety_checker: bool = True):
    from scripts.download_weights import download

    target = Path(WEIGHTS_DIR)
    if (target / "model_index.json").is_file() and not force:
        print(f"weights already in the volume at {target}; pass --force to fetch again")
        return
    download(target, safety_checker=safety_checker)
    weights.commit()
    print(f"weights committed to the Modal Volume {cfg.weights_volume!r} at {target}")
