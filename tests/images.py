"""Small helpers that make test images and encode them as the API accepts them."""

import base64
import io

import numpy as np
from PIL import Image


def gradient_image(width: int = 512, height: int = 512) -> Image.Image:
    """A deterministic, non-flat RGB image (so pixel equality checks mean something)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), ((x + y) % 256)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def box_mask(width: int = 512, height: int = 512, box=(192, 192, 320, 320)) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64_png(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + b64_png(image)
