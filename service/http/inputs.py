"""Turn the `image` / `mask` strings of a request into validated image bytes and their decoded images.

Accepted forms: http(s) URL, data: URI, bare base64. URLs are fetched with
timeouts, a byte cap and a bounded number of redirects; every hop is resolved
and refused when it points at a non-public address (loopback, private,
link-local, cloud metadata, ...) unless the operator allows private URLs. The
connection goes to the address that was checked (no DNS rebinding between the
check and the request). Bytes are decoded once, with Pillow under a pixel cap; the
decoded images go on to this process's worker (service/jobs/worker.py, input_images).
"""

import asyncio
import base64
import binascii
import io
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from PIL import ExifTags, Image

from schemas import InpaintParams
from schemas.request import EXTEND_SIDES
from service.jobs.errors import BadInput, size_text
from service.jobs.safe_urls import check_url_shape, pinned_url, resolve_checked_sync

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
REDIRECT_CODES = {301, 302, 303, 307, 308}
ASPECT_TOLERANCE = 0.01  # a mask whose aspect ratio differs more than this from the image's is reported


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192  # a 1x16777216 strip passes the pixel cap but costs ~1 GB to resize
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_redirects: int = 3
    allow_private: bool = False


async def resolve_checked(host: str, port: int, field: str, allow_private: bool) -> str:
    return await asyncio.to_thread(resolve_checked_sync, host, port, field, allow_private)


async def check_webhook_url(url: str, allow_private: bool) -> None:
    """Same SSRF rules as inputs, at submit time (delivery checks again)."""
    parts, port = check_url_shape(url, "webhook_url")
    await resolve_checked(parts.hostname, port, "webhook_url", allow_private)


async def fetch_url(url: str, field: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    for _hop in range(limits.max_redirects + 1):
        parts, port = check_url_shape(url, field)
        ip = await resolve_checked(parts.hostname, port, field, limits.allow_private)
        pinned = pinned_url(parts, ip, port)
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
        try:
            async with client.stream("GET", pinned, headers=headers,
                                     extensions={"sni_hostname": parts.hostname}) as response:
                if response.status_code in REDIRECT_CODES and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise BadInput(field, f"fetching the URL returned HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise BadInput(field, f"image is larger than {size_text(limits.max_bytes)}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data.extend(chunk)
                    if len(data) > limits.max_bytes:
                        raise BadInput(field, f"image is larger than {size_text(limits.max_bytes)}")
                return bytes(data)
        except httpx.TimeoutException:
            raise BadInput(field, "timed out fetching the URL") from None
        except httpx.HTTPError as exc:
            raise BadInput(field, f"could not fetch the URL ({type(exc).__name__})") from None
    raise BadInput(field, f"too many redirects (more than {limits.max_redirects})")


def decode_inline(value: str, field: str, max_bytes: int) -> bytes:
    """data: URI or bare base64 -> bytes."""
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or ";base64" not in header:
            raise BadInput(field, "data: URI must be base64-encoded (data:image/png;base64,...)")
        mime = header[5:].split(";")[0].strip().lower()
        if mime and mime not in ALLOWED_FORMATS.values():
            raise BadInput(field, f"data: URI type {mime!r} is not an image type we read "
                                    f"(image/png, image/jpeg or image/webp)")
        value = payload
    if len(value) * 3 // 4 > max_bytes + 3:
        raise BadInput(field, f"image is larger than {size_text(max_bytes)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass  # perhaps wrapped over lines: strip the whitespace only then (a copy of a large string)
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(field, "is neither an http(s) URL, a data: URI nor valid base64") from None


def check_image(data: bytes, field: str, max_pixels: int, max_side: int = FetchLimits.max_side) -> Image.Image:
    """Decode fully under a pixel cap; refuse non-images and formats other than PNG/JPEG/WebP."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadInput(field, f"image has too many pixels (limit {max_pixels})") from None
    except Exception:
        raise BadInput(field, "is not a readable image (PNG, JPEG or WebP expected)") from None
    if image.format not in ALLOWED_FORMATS:
        raise BadInput(field, f"image format {image.format} is not supported (PNG, JPEG or WebP)")
    width, height = image.size
    if width * height > max_pixels:
        raise BadInput(field, f"image is {width}x{height}, over the limit of {max_pixels} pixels")
    if max(width, height) > max_side:
        raise BadInput(field, f"image is {width}x{height}, over the limit of {max_side} pixels per side")
    try:
        image.load()
    except Exception:
        raise BadInput(field, "image data is truncated or corrupt") from None
    try:  # read now: the worker applies the EXIF orientation, and Pillow fails only the first read of a bad block
        image.getexif()
    except Exception:
        raise BadInput(field, "image has a malformed EXIF block; save it again without its EXIF metadata") from None
    return image


def looks_like_url(value: str) -> bool:
    return "://" in value[:16] or value.lower().startswith(("http:", "https:"))


def read_input(value: str, field: str, limits: FetchLimits, fetched: bytes | None = None) -> tuple[bytes, Image.Image]:
    """The bytes and the decoded image of a valid input given inline (data: URI or base64), or of the bytes
    fetched from its URL (raises BadInput). Blocking: decodes the image in full."""
    data = decode_inline(value, field, limits.max_bytes) if fetched is None else fetched
    if len(data) > limits.max_bytes:
        raise BadInput(field, f"image is larger than {size_text(limits.max_bytes)}")
    return data, check_image(data, field, limits.max_pixels, limits.max_side)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """The size as displayed: the worker applies the EXIF orientation, which swaps the sides for 5 to 8."""
    width, height = image.size
    return (height, width) if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8) else (width, height)


def extended_size(request: InpaintParams, image: Image.Image) -> tuple[int, int]:
    width, height = upright_size(image)
    return (width + request.extend_left + request.extend_right, height + request.extend_top + request.extend_bottom)


def check_extended_size(request: InpaintParams, image: Image.Image, limits: FetchLimits) -> None:
    """An outpainted canvas (extend_*) must fit the same pixel limits as an input image: the worker holds it whole."""
    if not request.extends:
        return
    width, height = extended_size(request, image)
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        field = max(EXTEND_SIDES, key=lambda side: getattr(request, side))  # the largest one
        raise BadInput(field, f"the extended canvas would be {width}x{height}, over the limit of {limits.max_pixels} "
                              f"pixels and {limits.max_side} per side; extend less or send a smaller image")


def extend_warnings(request: InpaintParams, image: Image.Image) -> list[str]:
    """An outpainted canvas answered at img_width x img_height (no original_size) is squashed to it, as any image
    is in that mode; for outpainting that is rarely what the caller wants, so the answer says so."""
    if not request.extends or request.original_size:
        return []
    width, height = extended_size(request, image)
    target = request.img_width / request.img_height
    if abs((width / height) / target - 1) <= ASPECT_TOLERANCE:
        return []
    return [f"the extended canvas is {width}x{height} but the answer is {request.img_width}x{request.img_height} "
            f"(original_size is off), so it is squashed ({width / height:.2f} vs {target:.2f}); send "
            f"original_size: true to answer at {width}x{height}"]


def mask_warnings(image: Image.Image, mask: Image.Image) -> list[str]:
    """What the caller should know about an image and mask that are accepted as they are: a mask of another
    aspect ratio than the image is stretched to the image's size (another size at the same ratio is fine)."""
    (iw, ih), (mw, mh) = upright_size(image), upright_size(mask)
    # Half a pixel of rounding on each side of the smaller picture is allowed beyond the tolerance, so that a
    # small mask scaled down from the image's size (50x33 for 1000x667) is not reported.
    allowed = ASPECT_TOLERANCE + 0.5 / min(iw, mw) + 0.5 / min(ih, mh)
    if abs((mw / mh) / (iw / ih) - 1) <= allowed:
        return []
    return [f"mask is {mw}x{mh} but image is {iw}x{ih}: their aspect ratios differ ({mw / mh:.2f} vs "
            f"{iw / ih:.2f}), so the mask is stretched to the image's size; draw the mask at the image's "
            f"size or aspect ratio"]


def make_client(limits: FetchLimits) -> httpx.AsyncClient:
    timeout = httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout)
    # follow_redirects=False: redirects are followed by hand so every hop is checked.
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
