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

from inference.compose import Prepared, prepare
from inference.cuda_graphs import use_cuda_graphs
from inference.masks import PaintArea
from inference.pipeline import load_pipeline, optimize_for_gpu
from inference.schedulers import SchedulerCache
from schemas import InpaintParams, batch_key
from schemas.request import MAX_SEED
from weights import MASK_MODEL_FOLDER

log = logging.getLogger(__name__)

# Called after each denoising step with (step, total). Whatever it raises stops
# the job at that step and propagates to the caller (that is how cancel works).
StepCallback = Callable[[int, int], None]


@dataclass
class InpaintOutput:
    images: list[Image.Image]
    seeds: list[int]
    inference_time: float  # the pipeline call (shared by every request of a batch)
    steps_run: int
    blocked: list[bool] = field(default_factory=list)
    own_time: float = 0.0  # this request's own work around the call: preparing its inputs, stitching its images
    mask_time: float | None = None  # the mask model's seconds (mask_prompt), part of own_time

    @property
    def any_blocked(self) -> bool:
        return any(self.blocked)


def sample_seeds(seed: int, samples: int) -> list[int]:
    """One seed per sample: seed, seed+1, ... (wrapping below 2^63). -1 draws a random base."""
    base = secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed
    return [(base + i) % (MAX_SEED + 1) for i in range(samples)]


def prepare_request(params: InpaintParams, image: Image.Image, mask: Image.Image | None, area: PaintArea,
                    default_feather_px: int) -> tuple[Prepared, float | None]:
    """One request's plan (inference/compose.py) and the mask model's seconds (None when it did not run)."""
    image, mask, mask_seconds = area.resolve(params, image, mask)
    feather_px = default_feather_px if params.mask_blur is None else params.mask_blur
    prepared = prepare(image, mask, (params.img_width, params.img_height), original_size=params.original_size,
                       only_masked=params.only_masked, padding=params.mask_padding, grow_px=params.mask_grow,
                       feather_px=feather_px)
    return prepared, mask_seconds


class Inpainter:
    """Holds one pipeline; runs one request at a time (a lock guards the shared scheduler slot)."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        safety_checker: bool = True,
        compile_unet: bool = False,
        cuda_graphs: bool = False,
        feather_px: int = 4,
        mask_model_dir: str | Path | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.compile_unet = compile_unet
        self.cuda_graphs = cuda_graphs
        self.pipe = load_pipeline(model_dir, device=device, dtype=dtype, safety_checker=safety_checker,
                                  compile_unet=compile_unet)
        self.device = str(self.pipe.device)
        self._use_graphs()
        self.masks = PaintArea(Path(mask_model_dir) if mask_model_dir else self.model_dir / MASK_MODEL_FOLDER,
                               self.device, self.pipe.dtype)
        self.feather_px = feather_px
        self.schedulers = SchedulerCache(self.pipe.scheduler.config)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, model_dir: str | Path | None = None, **overrides) -> "Inpainter":
        """The model with what both servers take from their settings (SAFETY_CHECKER, TORCH_COMPILE, FEATHER_PX,
        MASK_MODEL_DIR)."""
        options = dict(safety_checker=settings.safety_checker, compile_unet=settings.torch_compile,
                       cuda_graphs=settings.cuda_graphs, feather_px=settings.feather_px,
                       mask_model_dir=settings.mask_model_dir)
        return cls(model_dir or settings.model_dir, **(options | overrides))

    def to(self, device: str) -> "Inpainter":
        """Move the loaded pipeline (e.g. CPU -> CUDA after a Modal memory snapshot restore)."""
        self.pipe.to(device)
        self.masks.to(device)
        if self.compile_unet and device.startswith("cuda"):
            optimize_for_gpu(self.pipe)
        self.device = str(self.pipe.device)
        self._use_graphs()
        return self

    def _use_graphs(self) -> None:
        """CUDA graphs for the UNet when asked for, on CUDA, and not compiled (compiled code is not graphed)."""
        if self.cuda_graphs and not self.compile_unet and self.device.startswith("cuda"):
            use_cuda_graphs(self.pipe.unet)

    def warm_up(self) -> float:
        """One 512x512 job and a pass of the mask model, so that what a first request would wait for (CUDA's and
        cuDNN's set-up, the CUDA graph or torch.compile of the common shape) happens now. Returns its seconds."""
        started = time.perf_counter()
        self.run(InpaintParams(prompt="warm-up", seed=0), Image.new("RGB", (512, 512)), Image.new("L", (512, 512), 255))
        self.masks.warm_up()
        seconds = time.perf_counter() - started
        log.info("warm-up job on %s took %.2fs", self.device, seconds)
        return seconds

    def uncompile(self) -> None:
        """Back to the eager UNet after torch.compile failed (the fused projections and memory format stay)."""
        self.pipe.unet = getattr(self.pipe.unet, "_orig_mod", self.pipe.unet)
        self.compile_unet = False
        self._use_graphs()

    def run(
        self,
        request: InpaintParams,
        image: Image.Image,
        mask: Image.Image | None,
        on_step: StepCallback | None = None,
    ) -> InpaintOutput:
        if request.mask_only:
            return self.preview_mask(request, image, mask)
        return self.run_batch([(request, image, mask)], on_step)[0]

    def preview_mask(self, params: InpaintParams, image: Image.Image, mask: Image.Image | None) -> InpaintOutput:
        """mask_only: the mask a painting request would repaint (white), at its answer's size; no painting."""
        started = time.perf_counter()
        prepared, mask_seconds = prepare_request(params, image, mask, self.masks, self.feather_px)
        return InpaintOutput(images=[prepared.mask_preview()], seeds=sample_seeds(params.seed, 1), inference_time=0.0,
                             steps_run=0, blocked=[False], own_time=time.perf_counter() - started,
                             mask_time=mask_seconds)

    def run_batch(
        self,
        items: list[tuple[InpaintParams, Image.Image, Image.Image | None]],
        on_step: StepCallback | None = None,
    ) -> list[InpaintOutput]:
        """Run several requests in one pipeline call. They must share `batch_key` (size, steps, scheduler,
        strength, guidance); prompts, seeds, samples and images may differ. One request alone takes exactly
        the path it always took, so its bytes do not depend on whether batching is configured."""
        first = items[0][0]
        if any(batch_key(params) != batch_key(first) or params.mask_only for params, _, _ in items):
            raise ValueError("run_batch: the requests differ in size, steps, scheduler, strength or guidance, or one "
                             "is mask_only (that runs alone: run)")
        width, height = first.img_width, first.img_height
        jobs, seeds, own, mask_times = [], [], [], []
        for params, image, mask in items:
            started = time.perf_counter()
            prepared, mask_seconds = prepare_request(params, image, mask, self.masks, self.feather_px)
            jobs.append(prepared)
            mask_times.append(mask_seconds)
            own.append(time.perf_counter() - started)
            seeds.append(sample_seeds(params.seed, params.samples))
        steps_run = 0

        def step_end(pipe, step_index, timestep, callback_kwargs):
            nonlocal steps_run
            steps_run = step_index + 1
            if on_step is not None:
                on_step(steps_run, pipe.num_timesteps)
            return callback_kwargs

        if len(items) == 1:  # num_images_per_prompt: the single request's call, unchanged
            call = dict(prompt=first.prompt, negative_prompt=first.negative_prompt or None,
                        image=jobs[0].model_image, mask_image=jobs[0].model_mask, num_images_per_prompt=first.samples)
        else:  # one row per image: each request's prompt, image and mask repeated for its samples
            rows = [(params, job) for (params, _, _), job in zip(items, jobs) for _ in range(params.samples)]
            call = dict(prompt=[p.prompt for p, _ in rows], negative_prompt=[p.negative_prompt for p, _ in rows],
                        image=[j.model_image for _, j in rows], mask_image=[j.model_mask for _, j in rows],
                        num_images_per_prompt=1)
        with self._lock:
            self.pipe.scheduler = self.schedulers.get(first.scheduler)
            # self.device, not pipe.device: that walks every module of the pipeline on each request
            device_type = torch.device(self.device).type
            generators = [torch.Generator(device=device_type).manual_seed(s) for job_seeds in seeds for s in job_seeds]
            started = time.perf_counter()
            result = self.pipe(**call, height=height, width=width, num_inference_steps=first.num_inference_steps,
                               guidance_scale=first.guidance_scale, strength=first.strength, generator=generators,
                               callback_on_step_end=step_end)
            elapsed = time.perf_counter() - started

        flags = [bool(flag) for flag in (result.nsfw_content_detected or [False] * len(result.images))]
        outputs, at = [], 0
        for (params, _, _), job, job_seeds, prepared, mask_seconds in zip(items, jobs, seeds, own, mask_times):
            generated, blocked = result.images[at:at + params.samples], flags[at:at + params.samples]
            at += params.samples
            started = time.perf_counter()
            images = [job.stitch(g) for g in generated]
            outputs.append(InpaintOutput(images=images, seeds=job_seeds, inference_time=elapsed, steps_run=steps_run,
                                         blocked=blocked, own_time=prepared + time.perf_counter() - started,
                                         mask_time=mask_seconds))
            log.info("inpainted %dx%d (box %s of %dx%d, output %dx%d) samples=%d scheduler=%s steps=%d "
                     "batch=%d in %.3fs%s", width, height, job.box, *job.base.size, *job.output_size,
                     params.samples, params.scheduler, steps_run, len(items), elapsed,
                     " (blocked by safety checker)" if any(blocked) else "")
        return outputs
