"""Load StableDiffusionInpaintPipeline once from a local weights directory (Hugging Face layout)."""

import logging
import os
import time
from pathlib import Path

# OpenMP threads that busy-wait between parallel regions fight any other busy process for the cores (a 0.4 s
# job took over a minute on a shared 2-core machine): let idle threads sleep. Read when torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from diffusers import StableDiffusionInpaintPipeline

log = logging.getLogger(__name__)
MAX_LOGGED_CHARS = 120


class ShortenUserText(logging.Filter):
    """diffusers logs the part of a prompt CLIP cut off: keep only a short excerpt of user text in the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LOGGED_CHARS and "truncated because CLIP" in message:
            record.msg, record.args = message[:MAX_LOGGED_CHARS] + f"... ({len(message)} characters)", None
        return True


logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint").addFilter(ShortenUserText())


class WeightsNotFound(RuntimeError):
    """MODEL_DIR does not hold a pipeline in the Hugging Face layout."""


def inference_threads() -> int:
    """OMP_NUM_THREADS when set, else the cores this process may run on (not the machine's count) less one,
    which the web tier and the rest of the machine keep. Measured on 2 cores with another process busy on one
    (docs/PERFORMANCE.md): 2 threads made a job 4.4x slower, 1 thread 1.2x; idle, 1 thread is 1.4x slower."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def pick_device() -> tuple[str, torch.dtype]:
    """CUDA with fp16 when present, else CPU with fp32 (fp16 on CPU is slow and lossy)."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def weights_variant(model_dir: Path) -> str | None:
    """Returns "fp16" when the directory holds the fp16 files weights/download.py fetches."""
    if (model_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists():
        return "fp16"
    return None


def load_pipeline(
    model_dir: str | Path,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    safety_checker: bool = True,
    compile_unet: bool = False,
) -> StableDiffusionInpaintPipeline:
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise WeightsNotFound(
            f"no model found in {model_dir} (model_index.json missing). Fetch the weights with "
            f"`python -m weights.download {model_dir}`, or run `make demo` for the tiny demo model."
        )
    if device is None:  # only then ask about CUDA: a Modal snapshot phase must not (it would see no GPU)
        device, auto_dtype = pick_device()
        dtype = dtype or auto_dtype
    dtype = dtype or torch.float32

    if device == "cpu":
        torch.set_num_threads(inference_threads())
    started = time.perf_counter()
    extra = {} if safety_checker else {"safety_checker": None, "feature_extractor": None}
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(model_dir),
        dtype=dtype,
        variant=weights_variant(model_dir),
        local_files_only=True,
        use_safetensors=True,
        requires_safety_checker=False,
        **extra,
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    # diffusers uses torch's scaled_dot_product_attention (SDPA) by default on torch 2.x.
    attention = "sdpa"
    if compile_unet and device.startswith("cuda"):
        optimize_for_gpu(pipe)
        attention += "+compile"
    elapsed = time.perf_counter() - started
    log.info(
        "pipeline loaded from %s in %.2fs (device=%s dtype=%s attention=%s safety_checker=%s cpu_threads=%d)",
        model_dir, elapsed, device, str(dtype).removeprefix("torch."), attention, pipe.safety_checker is not None,
        torch.get_num_threads(),
    )
    return pipe


def optimize_for_gpu(pipe: StableDiffusionInpaintPipeline) -> None:
    """channels_last + fused QKV projections + torch.compile of the UNet (compiles on the first call). The default
    mode: no autotuning, which benchmarks every matmul and took minutes per shape on a fast GPU."""
    pipe.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, fullgraph=True)
