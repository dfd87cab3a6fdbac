"""Run one validated request on a loaded pipeline. Plain class: the Modal GPU class only wraps it."""

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from inference.compose import prepare
from inference.pipeline import load_pipeline, optimize_for_gpu
from inference.schedulers import SchedulerCache
from schemas import InpaintParams
from schemas.request import MAX_SEED

log = logging.getLogger(__name__)

# Called after each denoising step with (step, total). Whatever it raises stops
# the job at that step and propagates to the caller (that is how cancel works).
StepCallback = Callable[[int, int], None]


@dataclass
class InpaintOutput:
    images: list[Image.Image]
    seeds: list[int]
    inference_time: float
    steps_run: int
    blocked: list[bool] = field(default_factory=list)

    @property
    def any_blocked(self) -> bool:
        return any(self.blocked)


def sample_seeds(seed: int, samples: int) -> list[int]:
    """One seed per sample: seed, seed+1, ... (wrapping below 2^63). -1 draws a random base."""
    base = secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed
    return [(base + i) % (MAX_SEED + 1) for i in range(samples)]


class Inpainter:
    """Holds one pipeline; runs one request at a time (a lock guards the shared scheduler slot)."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        safety_checker: bool = True,
        xformers: bool = False,
        compile_unet: bool = False,
        feather_px: int = 4,
    ):
        self.model_dir = Path(model_dir)
        self.xformers = xformers
        self.compile_unet = compile_unet
        self.pipe = load_pipeline(model_dir, device=device, dtype=dtype, safety_checker=safety_checker,
                                  xformers=xformers, compile_unet=compile_unet)
        self.device = str(self.pipe.device)
        self.feather_px = feather_px
        self.schedulers = SchedulerCache(self.pipe.scheduler.config)
        self._lock = threading.Lock()

    def to(self, device: str) -> "Inpainter":
        """Move the loaded pipeline (e.g. CPU -> CUDA after a Modal memory snapshot restore)."""
        self.pipe.to(device)
        if self.xformers and device.startswith("cuda"):
            self.pipe.enable_xformers_memory_efficient_attention()
        if self.compile_unet and device.startswith("cuda"):
            optimize_for_gpu(self.pipe)
        self.device = str(self.pipe.device)
        return self

    def run(
        self,
        request: InpaintParams,
        image: Image.Image,
        mask: Image.Image,
        on_step: StepCallback | None = None,
    ) -> InpaintOutput:
        width, height = request.img_width, request.img_height
        feather_px = self.feather_px if request.mask_blur is None else request.mask_blur
        job = prepare(image, mask, (width, height), original_size=request.original_size,
                      only_masked=request.only_masked, padding=request.mask_padding, grow_px=request.mask_grow,
                      feather_px=feather_px)
        seeds = sample_seeds(request.seed, request.samples)
        steps_run = 0

        def step_end(pipe, step_index, timestep, callback_kwargs):
            nonlocal steps_run
            steps_run = step_index + 1
            if on_step is not None:
                on_step(steps_run, pipe.num_timesteps)
            return callback_kwargs

        with self._lock:
            self.pipe.scheduler = self.schedulers.get(request.scheduler)
            generators = [torch.Generator(device=self.pipe.device.type).manual_seed(s) for s in seeds]
            started = time.perf_counter()
            result = self.pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                image=job.model_image,
                mask_image=job.model_mask,
                height=height,
                width=width,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                strength=request.strength,
                num_images_per_prompt=request.samples,
                generator=generators,
                callback_on_step_end=step_end,
            )
            elapsed = time.perf_counter() - started

        blocked = [bool(flag) for flag in (result.nsfw_content_detected or [False] * len(result.images))]
        images = [job.stitch(generated) for generated in result.images]
        log.info(
            "inpainted %dx%d (box %s of %dx%d, output %dx%d) samples=%d scheduler=%s steps=%d in %.3fs%s",
            width, height, job.box, *job.base.size, *job.output_size, request.samples, request.scheduler,
            steps_run, elapsed,
            " (blocked by safety checker)" if any(blocked) else "",
        )
        return InpaintOutput(images=images, seeds=seeds, inference_time=elapsed, steps_run=steps_run, blocked=blocked)
