"""What a request repaints beyond a drawn mask (`PaintArea`), and the mask model behind mask_prompt: CLIPSeg
(CIDAS/clipseg-rd64-refined) scores each pixel of a picture for a text prompt.

The model sees a 352x352 copy of the picture whatever its size, so a 12 MP photo costs little more than a
512x512 one: the picture is shrunk first (by averaging blocks of pixels, then bilinear), and only the
thresholded mask is scaled back up to the picture's size.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor
from transformers.utils import logging as hf_logging

from inference.compose import combine_masks, extend_canvas, read_image
from schemas import InpaintParams
from schemas.job_errors import MaskModelMissing, MaskNotFound
from weights import has_mask_model

log = logging.getLogger(__name__)
MAX_TOKENS = 77  # CLIP's text length; the processor would otherwise refuse a longer prompt


@dataclass
class FoundMask:
    mask: Image.Image  # binary L at the picture's size: 255 where the score reached the threshold
    best_score: float  # the highest score anywhere, 0..1 (what a prompt that found nothing came closest to)
    seconds: float


class MaskModel:
    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        started = time.perf_counter()
        self.processor = CLIPSegProcessor.from_pretrained(str(model_dir), local_files_only=True)
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its per-tensor loading bar would fill the server's log
        try:
            self.model = CLIPSegForImageSegmentation.from_pretrained(str(model_dir), local_files_only=True,
                                                                     dtype=dtype)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self.dtype = dtype
        self.side = self.processor.image_processor.size["height"]
        self.to(device)
        log.info("mask model loaded from %s in %.2fs (device=%s)", model_dir, time.perf_counter() - started, device)

    def to(self, device: str) -> "MaskModel":
        self.model.to(device)
        self.device = device
        return self

    def scores(self, picture: Image.Image, prompt: str) -> np.ndarray:
        """Per-pixel scores 0..1 (float32) of the picture (RGB) for the prompt, at the model's side x side."""
        small = picture.resize((self.side, self.side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        inputs = self.processor(text=[prompt], images=[small], return_tensors="pt", padding=True, truncation=True,
                                max_length=MAX_TOKENS)
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return torch.sigmoid(logits.float()).reshape(self.side, self.side).cpu().numpy()

    def find(self, picture: Image.Image, prompt: str, threshold: float) -> FoundMask:
        """The mask of what the prompt names (scores at or above the threshold), at the picture's size."""
        started = time.perf_counter()
        scores = self.scores(picture, prompt)
        passed = scores >= threshold
        found = Image.fromarray(np.where(passed, 255, 0).astype(np.uint8), "L")
        if found.size != picture.size:  # scaled smoothly, then cut at half: edges follow the scores, not blocks
            found = found.resize(picture.size, Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0)
            if found.getbbox() is None and passed.any():  # a find under a pixel of a small picture: kept
                rows, columns = np.nonzero(passed)
                kept = np.zeros((picture.height, picture.width), dtype=np.uint8)
                kept[rows * picture.height // self.side, columns * picture.width // self.side] = 255
                found = Image.fromarray(kept, "L")
        return FoundMask(found, float(scores.max()), time.perf_counter() - started)


class PaintArea:
    """Settles the picture and mask a request paints: the drawn mask joined with the one its mask_prompt finds,
    inverted on request, the canvas extended for outpainting (inference/compose.py does the pixel work). Holds
    the mask model, loaded once beside the pipeline and on its device, or None when its weights were never
    fetched (mask_prompt jobs then fail, saying why)."""

    def __init__(self, model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.model_dir = model_dir
        self.model: MaskModel | None = None
        if not has_mask_model(model_dir):
            log.warning("no mask model in %s: requests with mask_prompt will fail until it is fetched "
                        "(python -m weights.download MODEL_DIR)", model_dir)
            return
        try:
            self.model = MaskModel(model_dir, device=device, dtype=dtype)
        except Exception:  # damaged files: drawn masks must keep working
            log.exception("the mask model in %s failed to load: requests with mask_prompt will fail until it is "
                          "fetched again (delete the folder, then python -m weights.download MODEL_DIR)", model_dir)

    def to(self, device: str) -> None:
        if self.model is not None:
            self.model.to(device)

    def warm_up(self) -> None:
        if self.model is not None:
            self.model.scores(Image.new("RGB", (512, 512)), "warm-up")

    def resolve(self, params: InpaintParams, image: Image.Image,
                mask: Image.Image | None) -> tuple[Image.Image, Image.Image | None, float | None]:
        """The picture and mask to paint with, and the mask model's seconds (None when it did not run). A request
        with only a drawn mask passes through untouched, so its answer is what it always was."""
        if not (params.mask_prompt or params.invert_mask or params.extends):
            return image, mask, None
        picture, found, seconds = read_image(image), None, None
        if params.mask_prompt:
            result = self._find(picture, params)
            found, seconds = result.mask, result.seconds
        combined = combine_masks(picture.size, mask, found, params.invert_mask)
        if params.mask_prompt and params.invert_mask and not params.extends and combined.getbbox() is None:
            drawn = mask is not None and mask.getbbox() is not None  # only looked at to name the cause
            covering = f"{'the drawn mask and ' if drawn else ''}mask_prompt {params.mask_prompt!r}"
            raise MaskNotFound(f"with invert_mask nothing is left to repaint: {covering} cover the whole image; "
                               f"raise mask_threshold, name a smaller area or draw less", params, seconds)
        if params.extends:
            picture, combined = extend_canvas(picture, combined, params.extend_sides)
        return picture, combined, seconds

    def _find(self, picture: Image.Image, params: InpaintParams) -> FoundMask:
        if self.model is None:
            raise MaskModelMissing("mask_prompt needs the segmentation model, which this deployment has not "
                                   "loaded (its log says why); send a drawn mask instead, or ask its operator to "
                                   "fetch the model", params)
        result = self.model.find(picture, params.mask_prompt, params.mask_threshold)
        if result.mask.getbbox() is None:
            best = math.floor(result.best_score * 100) / 100  # rounded down: never shown at the threshold
            raise MaskNotFound(f"mask_prompt {params.mask_prompt!r} found nothing in the image (best score "
                               f"{best:.2f}, below mask_threshold {params.mask_threshold:g}): lower "
                               f"mask_threshold, name the area differently, or draw a mask", params, result.seconds)
        return result
