"""Reading the inputs, preparing what the model sees, and stitching its output back.

Three ways to run, chosen by the request:
- default (Segmind's behaviour): image and mask are squashed to the model size
  (img_width x img_height) and the result is stitched at that size;
- whole image at its own size (`original_size`): the image is fitted into the
  model size without distortion (letterboxed), and the model's output is mapped
  back and stitched into the untouched original;
- only around the mask (`only_masked`): a context box around the mask is cut
  out (inference/crop.py), fitted into the model size, and stitched back.
In every mode the result is the base picture with the generated pixels pasted
through a weight that is 255 inside the (grown) mask and fades out over the
feathered edge: wherever the weight is 0 the base's pixels are untouched.

Before that, when a request asks for more than a drawn mask, `PaintArea`
(inference/masks.py) settles what is painted with the helpers here: the drawn
mask joined with the mask found from words, inverted on request
(`combine_masks`), and the canvas extended for outpainting (`extend_canvas`:
the new border mirrors the picture and is always painted).
"""

from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageFilter, ImageOps
from scipy import ndimage

from inference.crop import Box, Size, box_size, context_box, fit_box, grow_box

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Pillow's Gaussian blur of radius r reaches about 2.6 r + 1 pixels; 4 r is a safe margin.
FEATHER_REACH = 4


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation the way browsers show the picture (no copy when there is none)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG) scaled by its value range to 8 bits; Pillow's convert would clip at 255."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((values + 128) // 257).clip(0, 255).astype(np.uint8), "L")


def read_image(image: Image.Image) -> Image.Image:
    image = to_eight_bit(upright(image))
    return image if image.mode == "RGB" else image.convert("RGB")


def read_mask(mask: Image.Image) -> Image.Image:
    """The mask as greyscale; one with transparency is read as if laid over black (transparent = keep)."""
    mask = to_eight_bit(upright(mask))
    if mask.has_transparency_data:
        rgba = mask.convert("RGBA")
        return ImageChops.multiply(rgba.convert("L"), rgba.getchannel("A"))
    return mask.convert("L")


def binarize(mask: Image.Image, threshold: int = 128) -> Image.Image:
    return mask.point(lambda v: 255 if v >= threshold else 0)


def prepare_inputs(image: Image.Image, mask: Image.Image, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """Image to RGB at the output size; mask to the same size, binarised (white = repaint)."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    return image, binarize(mask)


def grow_mask(mask: Image.Image, grow_px: int) -> Image.Image:
    """Binary mask dilated by grow_px pixels in every direction (a square neighbourhood)."""
    box = mask.getbbox()
    if grow_px <= 0 or box is None:
        return mask
    region = grow_box(box, grow_px, mask.size)
    grown = ndimage.maximum_filter(np.asarray(mask.crop(region)), size=2 * grow_px + 1, mode="constant", cval=0)
    out = mask.copy()
    out.paste(Image.fromarray(grown, "L"), region[:2])
    return out


def stitch_weight(mask: Image.Image, feather_px: int) -> Image.Image:
    """How much of the generated pixel to take: 255 inside the mask, fading out over about 3*feather_px beyond it.

    The 9-channel inpainting UNet and the VAE round trip let unmasked pixels
    drift (diffusers issue #4782), so only this weight's non-zero pixels may
    change; an all-black mask gives an all-zero weight.
    """
    box = mask.getbbox()
    if box is None or feather_px <= 0:
        return mask
    # Blur only around the mask: far from it the blur is zero anyway, and a full-frame blur costs ms.
    region = grow_box(box, FEATHER_REACH * feather_px, mask.size)
    patch = mask.crop(region)
    weight = mask.copy()
    weight.paste(ImageChops.lighter(patch, patch.filter(ImageFilter.GaussianBlur(feather_px))), region[:2])
    return weight


def letterbox(region: Image.Image, placed: Box, target: Size, fill_edges: bool) -> Image.Image:
    """`region` (already at the placed size) inside a target-sized canvas; bars repeat its edges or are black."""
    if placed == (0, 0, *target):
        return region
    left, top, right, bottom = placed
    values = np.asarray(region)
    pad = ((top, target[1] - bottom), (left, target[0] - right)) + ((0, 0),) * (values.ndim - 2)
    padded = np.pad(values, pad, mode="edge") if fill_edges else np.pad(values, pad)
    return Image.fromarray(padded, region.mode)


Sides = tuple[int, int, int, int]  # pixels added on the left, top, right, bottom


def combine_masks(size: Size, drawn: Image.Image | None, found: Image.Image | None, invert: bool) -> Image.Image:
    """Binary mask at `size`: the drawn mask (stretched to `size`) joined with the found one, inverted on request."""
    mask = Image.new("L", size, 0)
    if drawn is not None:
        drawn = read_mask(drawn)
        if drawn.size != size:
            drawn = drawn.resize(size, Image.Resampling.BILINEAR)
        mask = binarize(drawn)
    if found is not None:
        mask = ImageChops.lighter(mask, found)
    return ImageChops.invert(mask) if invert else mask


def extend_canvas(image: Image.Image, mask: Image.Image, sides: Sides) -> tuple[Image.Image, Image.Image]:
    """The picture with `sides` pixels added around it, filled by mirroring the picture (repeatedly where a side
    is wider than the picture), so that a strength below 1 starts from its colours rather than from black; and
    the mask grown alike, the new area all painted."""
    left, top, right, bottom = sides
    padded = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="symmetric")
    grown = np.full(padded.shape[:2], 255, dtype=np.uint8)
    grown[top:top + image.height, left:left + image.width] = np.asarray(mask)
    return Image.fromarray(padded, "RGB"), Image.fromarray(grown, "L")


@dataclass
class Prepared:
    """What the model gets, and how its output goes back into the picture."""

    model_image: Image.Image  # RGB at the model size
    model_mask: Image.Image  # binary L at the model size
    base: Image.Image  # RGB picture the result is stitched into
    box: Box  # the part of `base` the model canvas shows
    placed: Box  # where that part sits in the model canvas
    weight: Image.Image  # L of the box's size: share of generated pixels
    output_size: Size
    mask: Image.Image  # binary L over `base`: what is repainted (after mask_grow)

    def mask_preview(self) -> Image.Image:
        """What is repainted, white on black, at the size the painted answer would have."""
        if self.mask.size == self.output_size:
            return self.mask
        return binarize(self.mask.resize(self.output_size, Image.Resampling.BILINEAR))

    def stitch(self, generated: Image.Image) -> Image.Image:
        out = self.base.copy()
        changed = self.weight.getbbox()  # in box coordinates; only this part is resized and pasted
        if changed is not None:
            patch = generated.convert("RGB")
            if self.placed != (0, 0, *patch.size):
                patch = patch.crop(self.placed)
            width, height = box_size(self.box)
            if patch.size == (width, height):
                patch = patch.crop(changed)
            else:
                sx, sy = patch.width / width, patch.height / height
                source = (changed[0] * sx, changed[1] * sy, changed[2] * sx, changed[3] * sy)
                patch = patch.resize(box_size(changed), Image.Resampling.LANCZOS, box=source)
            out.paste(patch, (self.box[0] + changed[0], self.box[1] + changed[1]), self.weight.crop(changed))
        if out.size != self.output_size:
            # Only when stitched at the input's size (only_masked without original_size): a big downscale.
            out = out.resize(self.output_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return out


def prepare(image: Image.Image, mask: Image.Image, target: Size, *, original_size: bool = False,
            only_masked: bool = False, padding: int = 32, grow_px: int = 0, feather_px: int = 4) -> Prepared:
    """Read image and mask and plan one run (see the module docstring for the three modes)."""
    image, mask = read_image(image), read_mask(mask)
    if not (original_size or only_masked):
        base, mask = prepare_inputs(image, mask, *target)
        mask = grow_mask(mask, grow_px)
        full = (0, 0, *target)
        return Prepared(base, mask, base, full, full, stitch_weight(mask, feather_px), target, mask)

    if mask.size != image.size:
        mask = mask.resize(image.size, Image.Resampling.BILINEAR)
    mask = grow_mask(binarize(mask), grow_px)
    mask_box = mask.getbbox()
    box = (0, 0, *image.size)
    if only_masked and mask_box is not None:
        # The box also holds the feathered edge, or the stitch would cut it.
        box = context_box(mask_box, image.size, target, max(padding, FEATHER_REACH * feather_px))
    placed = fit_box(box_size(box), target)
    placed_size = box_size(placed)
    # reducing_gap: a big downscale first averages whole pixel blocks, then Lanczos (much faster, same look).
    image_region = image.resize(placed_size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    mask_region = mask.crop(box)
    # Any model pixel the mask touches is repainted, so a thin stroke survives a big downscale.
    model_mask = binarize(mask_region.resize(placed_size, Image.Resampling.BOX), threshold=1)
    return Prepared(
        model_image=letterbox(image_region, placed, target, fill_edges=True),
        model_mask=letterbox(model_mask, placed, target, fill_edges=False),
        base=image,
        box=box,
        placed=placed,
        weight=stitch_weight(mask_region, feather_px),
        output_size=image.size if original_size else target,
        mask=mask,
    )
