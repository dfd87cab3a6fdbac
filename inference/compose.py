"""Input preparation and the paste-back that keeps unmasked pixels exact. Pillow only."""

from PIL import Image, ImageChops, ImageFilter


def prepare_inputs(image: Image.Image, mask: Image.Image, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """Image to RGB at the output size; mask to the same size, binarised (white = repaint)."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    mask = mask.point(lambda v: 255 if v >= 128 else 0)
    return image, mask


def paste_outside_mask(original: Image.Image, generated: Image.Image, mask: Image.Image, feather_px: int) -> Image.Image:
    """Put the original pixels back outside the mask.

    The 9-channel inpainting UNet and the VAE round trip let unmasked pixels
    drift (diffusers issue #4782). Inside the mask the generated pixels are kept
    whole; with feather_px > 0 the blend fades out over a few pixels beyond the
    mask edge, so pixels farther than about 3*feather_px from it are the input's
    exact values, and an all-black mask returns the input unchanged.
    """
    box = mask.getbbox()
    if box is None:  # nothing to repaint
        return original.copy()
    weight = mask
    if feather_px > 0:
        # Blur only around the mask: far from it the blur is zero anyway, and a full-frame blur costs ms.
        margin = 4 * feather_px
        region = (max(box[0] - margin, 0), max(box[1] - margin, 0),
                  min(box[2] + margin, mask.width), min(box[3] + margin, mask.height))
        patch = mask.crop(region)
        weight = mask.copy()
        weight.paste(ImageChops.lighter(patch, patch.filter(ImageFilter.GaussianBlur(feather_px))), region[:2])
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    return Image.composite(generated.convert("RGB"), original, weight)
