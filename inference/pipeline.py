"""Load StableDiffusionInpaintPipeline once from a local weights directory (Hugging Face layout)."""

import logging
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionInpaintPipeline

log = logging.getLogger(__name__)


class WeightsNotFound(RuntimeError):
    """MODEL_DIR does not hold a pipeline in the Hugging Face layout."""


def pick_device() -> tuple[str, torch.dtype]:
    """CUDA with fp16 when present, else CPU with fp32 (fp16 on CPU is slow and lossy)."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def weights_variant(model_dir: Path) -> str | None:
    """Returns "fp16" when the directory holds the fp16 files scripts/download_weights.py fetches."""
    if (model_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists():
        return "fp16"
    return None


def load_pipeline(
    model_dir: str | Path,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    safety_checker: bool = True,
    xformers: bool = False,
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
    if xformers and device.startswith("cuda"):
        try:
            pipe.enable_xformers_memory_efficient_attention()
            attention = "xformers"
        except Exception as exc:  # not installed, or no CUDA: SDPA is a fine fallback
            log.warning("xformers requested but unavailable (%s); using SDPA", exc)
    if compile_unet and device.startswith("cuda"):
        optimize_for_gpu(pipe)
        attention += "+compile"
    elapsed = time.perf_counter() - started
    log.info(
        "pipeline loaded from %s in %.2fs (device=%s dtype=%s attention=%s safety_checker=%s)",
        model_dir, elapsed, device, str(dtype).removeprefix("torch."), attention, pipe.safety_checker is not None,
    )
    return pipe


def optimize_for_gpu(pipe: StableDiffusionInpaintPipeline) -> None:
    """channels_last + fused QKV projections + torch.compile of the UNet (compiles on the first call)."""
    pipe.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
