"""The request body shared by v1 and v2 (docs/API.md, "Request body")."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODEL_SLUG = "sd1.5-inpainting"

# Segmind's eleven names, then our two extensions. inference/schedulers.py maps
# each to a diffusers scheduler; a test keeps the two lists in step.
SCHEDULERS = (
    "DDIM",
    "DPM Multi",
    "DPM Single",
    "Euler a",
    "Euler",
    "Heun",
    "DPM2 a Karras",
    "DPM2 Karras",
    "LMS",
    "PNDM",
    "DDPM",
    "UniPC",
    "DPM++ 2M Karras",
)
SchedulerName = Literal[SCHEDULERS]  # type: ignore[valid-type]

MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens; more is refused rather than carried through the queue and logs
MAX_MASK_PADDING = 1024
MAX_MASK_GROW = 128
MAX_MASK_BLUR = 64
MAX_URL_CHARS = 2048  # what browsers and most servers take; a longer webhook_url is refused at submit
MAX_MASK_PROMPT_CHARS = 300  # CLIPSeg reads 77 CLIP tokens, as the painting prompt does
MAX_EXTEND = 1024
DEFAULT_MASK_THRESHOLD = 0.4
EXTEND_SIDES = ("extend_left", "extend_top", "extend_right", "extend_bottom")


class InpaintParams(BaseModel):
    """Everything a job needs besides its two images: what a job record keeps and what the worker runs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S",
                               description=f"What to paint in the masked area, at most {MAX_PROMPT_CHARS} "
                                           "characters. Only the first 77 CLIP tokens (roughly 300 characters) are "
                                           "used. Required, except with mask_only (which paints nothing).")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS,
                                 description=f"What to avoid, at most {MAX_PROMPT_CHARS} characters.")
    samples: int = Field(1, ge=1, le=4, description="Number of images, 1..4.")
    scheduler: SchedulerName = Field("DDIM", description="Sampler name.")
    num_inference_steps: int = Field(20, ge=20, le=100, description="Denoising steps, 20..100.")
    guidance_scale: float = Field(7.5, ge=0.1, le=25, description="Classifier-free guidance, 0.1..25.")
    strength: float = Field(1.0, ge=0.1, le=1, description="How much the masked area is re-noised, 0.1..1.")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 for random, else 0..2^63-1.")
    img_width: Literal[512, 768] = Field(512, description="Output width: 512 or 768.")
    img_height: Literal[512, 768] = Field(512, description="Output height: 512 or 768.")
    base64: bool = Field(False, description="v1 only: answer JSON with base64 instead of image bytes.")
    output_format: Literal["jpeg", "png", "webp"] = Field("jpeg", description="Extension: output encoding.")
    webhook_url: str | None = Field(None, max_length=MAX_URL_CHARS,
                                    description=f"Extension, v2: URL POSTed the final body, at most {MAX_URL_CHARS} "
                                                f"characters.")
    priority: Literal["normal", "low"] = Field(
        "normal", description="Extension: `low` runs only when no normal job waits, and on Modal never starts a GPU "
                              "container: bulk work that can wait (at most MAX_QUEUE_SECONDS, then FAILED expired).")
    original_size: bool = Field(
        False, description="Extension: answer at the input's own size (after EXIF orientation) instead of "
                           "img_width x img_height. Without only_masked the whole image is fitted into "
                           "img_width x img_height for the model without distortion and mapped back.")
    only_masked: bool = Field(
        False, description="Extension: repaint only a box around the mask (mask_padding of context, grown to the "
                           "img_width:img_height aspect ratio, clamped to the image) at img_width x img_height, "
                           "then stitch it into the untouched input. One box holds every masked area.")
    mask_padding: int = Field(
        32, ge=0, le=MAX_MASK_PADDING,
        description=f"Extension, with only_masked: pixels of context around the mask's box, 0..{MAX_MASK_PADDING}.")
    mask_grow: int = Field(
        0, ge=0, le=MAX_MASK_GROW,
        description=f"Extension: grow the mask by this many pixels in every direction before painting, "
                    f"0..{MAX_MASK_GROW}.")
    mask_blur: int | None = Field(
        None, ge=0, le=MAX_MASK_BLUR,
        description=f"Extension: feather of the stitch in pixels, 0..{MAX_MASK_BLUR} (0 = hard edge); "
                    f"null = the server's FEATHER_PX. Pixels more than 3 x mask_blur beyond the grown mask "
                    f"keep the input's exact values.")
    mask_prompt: str | None = Field(
        None, min_length=1, max_length=MAX_MASK_PROMPT_CHARS, pattern=r"\S",
        description=f"Extension: words naming what to repaint (\"the sofa\", \"the sky\"), at most "
                    f"{MAX_MASK_PROMPT_CHARS} characters. The mask is found on the image by the CLIPSeg model; with "
                    f"a drawn `mask` too, the two are joined (union). A prompt that finds nothing fails the job.")
    mask_threshold: float = Field(
        DEFAULT_MASK_THRESHOLD, ge=0, le=1,
        description="Extension, with mask_prompt: the CLIPSeg score (0..1) from which a pixel is in the mask. "
                    "Lower finds more; 0 takes the whole image.")
    invert_mask: bool = Field(
        False, description="Extension: white = keep instead of white = repaint, for the drawn mask and the "
                           "mask_prompt's mask alike (applied to their union; extend_* areas are always repainted).")
    extend_left: int = Field(0, ge=0, le=MAX_EXTEND, description=f"Extension, outpainting: pixels added on the left, "
                                                                 f"0..{MAX_EXTEND}, and painted.")
    extend_top: int = Field(0, ge=0, le=MAX_EXTEND, description=f"Extension, outpainting: pixels added at the top, "
                                                                f"0..{MAX_EXTEND}, and painted.")
    extend_right: int = Field(0, ge=0, le=MAX_EXTEND, description=f"Extension, outpainting: pixels added on the "
                                                                  f"right, 0..{MAX_EXTEND}, and painted.")
    extend_bottom: int = Field(0, ge=0, le=MAX_EXTEND, description=f"Extension, outpainting: pixels added at the "
                                                                   f"bottom, 0..{MAX_EXTEND}, and painted.")
    mask_only: bool = Field(
        False, description="Extension: answer the mask that would be repainted (white = repaint, at the output "
                           "size) instead of painting: a preview of mask_prompt, invert_mask, extend_* and "
                           "mask_grow. One image, one credit.")

    @property
    def extend_sides(self) -> tuple[int, int, int, int]:
        """Pixels added on the left, top, right and bottom (EXTEND_SIDES' order)."""
        return tuple(getattr(self, side) for side in EXTEND_SIDES)

    @property
    def extends(self) -> bool:
        return any(self.extend_sides)

    @model_validator(mode="after")
    def _check_mask_options(self) -> "InpaintParams":
        if self.mask_only and self.samples != 1:
            raise ValueError("parameter 'samples': mask_only answers one mask; leave samples at 1")
        if self.prompt is None and not self.mask_only:
            raise ValueError("parameter 'prompt' is required (only a mask_only request, which paints nothing, goes "
                             "without one)")
        return self


def batch_key(params: InpaintParams) -> tuple:
    """What must be equal for requests to share one pipeline call (dynamic batching); prompts, seeds,
    samples, images and the pre/post-processing options may differ."""
    return (params.img_width, params.img_height, params.num_inference_steps, params.scheduler, params.strength,
            params.guidance_scale)


class InpaintRequest(InpaintParams):
    """One inpainting request as sent over HTTP. Unknown keys and wrong types are refused (strict)."""

    image: str = Field(min_length=1, pattern=r"\S",
                       description="http(s) URL, data: URI, or bare base64 of a PNG/JPEG/WebP image.")
    mask: str | None = Field(None, min_length=1, pattern=r"\S",
                             description="Same forms as image; white = repaint, black = keep. Required unless "
                                         "mask_prompt or an extend_* is given.")

    def params(self) -> InpaintParams:
        return InpaintParams.model_validate(self.model_dump(exclude={"image", "mask"}), strict=False)

    @field_validator("image", "mask")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return None if value is None else value.strip()

    @model_validator(mode="after")
    def _check_mask_given(self) -> "InpaintRequest":
        if self.mask is None and self.mask_prompt is None:
            if self.invert_mask:
                raise ValueError("parameter 'invert_mask': there is no mask to invert; send mask or mask_prompt")
            if not self.extends:
                raise ValueError("parameter 'mask' is required unless mask_prompt or an extend_* is given")
        return self


def describe_validation_error(error: ValidationError) -> tuple[str, str | None]:
    """One readable message naming every bad parameter and its rule, plus the first field name."""
    parts: list[str] = []
    first_field: str | None = None
    for item in error.errors(include_url=False):
        field = ".".join(str(p) for p in item["loc"]) or "body"
        if item["type"] == "value_error" and not item["loc"]:  # a rule across parameters names the one at fault
            field = item["msg"].partition("'")[2].partition("'")[0] or field
        first_field = first_field or field
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown parameter '{field}'")
        elif item["type"] == "missing":
            parts.append(f"parameter '{field}' is required")
        elif item["type"] in ("string_too_short", "string_pattern_mismatch"):
            parts.append(f"parameter '{field}': must not be empty or blank")
        elif item["type"] == "value_error" and not item["loc"]:
            parts.append(item["msg"].removeprefix("Value error, "))
        else:
            msg = item["msg"].removeprefix("Value error, ")
            parts.append(f"parameter '{field}': {msg}")
    return "; ".join(parts), first_field
