"""Turn the `image` / `mask` strings of a request into validated image bytes and their decoded images.

Accepted forms: http(s) URL, data: URI, bare base64. URLs are fetched with
timeouts, a byte cap and a bounded number of redirects; every hop is resolved
and refused when it points at a non-public address (loopback, private,
link-local, cloud metadata, ...) unless the operator allows private URLs. The
connection goes to the address that was checked (no DNS rebinding between the
check and the request). Bytes are decoded once, with Pillow under a pixel cap; the
decoded images go on to this process's worker (JobService.input_images).
"""

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from service.errors import ApiError

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
REDIRECT_CODES = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192  # a 1x16777216 strip passes the pixel cap but costs ~1 GB to resize
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_redirects: int = 3
    allow_private: bool = False


class InputError(ApiError):
    def __init__(self, field: str, message: str):
        super().__init__(400, f"parameter '{field}': {message}", field=field)


# IPv6 forms that carry an IPv4 address in their last 32 bits: on NAT64/SIIT networks they reach that address.
IPV4_CARRIERS = [ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")]
# Refused outright: local-use NAT64 (RFC 8215, operator-defined embedding) and deprecated site-local addresses.
IPV6_REFUSED = [ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "fec0::/10")]


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for loopback, private, link-local (incl. 169.254.169.254 metadata), multicast, unspecified, reserved,
    and for IPv6 forms that embed such an IPv4 address (mapped, compatible, SIIT, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if any(ip in net for net in IPV6_REFUSED) or ip.sixtofour is not None or ip.teredo is not None:
            return False
        if any(ip in net for net in IPV4_CARRIERS):
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return ip.is_global and not ip.is_multicast


def resolve_checked_sync(host: str, port: int, field: str, allow_private: bool) -> str:
    """Resolve host and return one address to connect to, after checking all of them."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InputError(field, f"cannot resolve host {host!r}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise InputError(field, f"cannot resolve host {host!r}")
    if not allow_private:
        for ip in addresses:
            if not is_public_address(ip):
                raise InputError(field, f"URL host {host!r} resolves to a non-public address ({ip}); refused")
    return str(addresses[0])


async def resolve_checked(host: str, port: int, field: str, allow_private: bool) -> str:
    return await asyncio.to_thread(resolve_checked_sync, host, port, field, allow_private)


def check_url_shape(url: str, field: str) -> tuple:
    """scheme/host/credentials checks; returns (parts, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(field, f"URL scheme {parts.scheme!r} is not allowed (http or https only)")
    if not parts.hostname:
        raise InputError(field, "URL has no host")
    if parts.username or parts.password:
        raise InputError(field, "URLs with credentials are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputError(field, "URL has an invalid port") from None
    return parts, port


def pinned_url(parts, ip: str, port: int) -> str:
    """The URL with its host replaced by the checked address (the Host header keeps the name)."""
    ip_host = f"[{ip}]" if ":" in ip else ip
    return parts._replace(netloc=f"{ip_host}:{port}").geturl()


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
                    raise InputError(field, f"fetching the URL returned HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise InputError(field, f"image is larger than {limits.max_bytes} bytes")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data.extend(chunk)
                    if len(data) > limits.max_bytes:
                        raise InputError(field, f"image is larger than {limits.max_bytes} bytes")
                return bytes(data)
        except httpx.TimeoutException:
            raise InputError(field, "timed out fetching the URL") from None
        except httpx.HTTPError as exc:
            raise InputError(field, f"could not fetch the URL ({type(exc).__name__})") from None
    raise InputError(field, f"too many redirects (more than {limits.max_redirects})")


def decode_inline(value: str, field: str, max_bytes: int) -> bytes:
    """data: URI or bare base64 -> bytes."""
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or ";base64" not in header:
            raise InputError(field, "data: URI must be base64-encoded (data:image/png;base64,...)")
        mime = header[5:].split(";")[0].strip().lower()
        if mime and mime not in ALLOWED_FORMATS.values():
            raise InputError(field, f"data: URI type {mime!r} is not an image type we read "
                                    f"(image/png, image/jpeg or image/webp)")
        value = payload
    if len(value) * 3 // 4 > max_bytes + 3:
        raise InputError(field, f"image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass  # perhaps wrapped over lines: strip the whitespace only then (a copy of a large string)
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is neither an http(s) URL, a data: URI nor valid base64") from None


def check_image(data: bytes, field: str, max_pixels: int, max_side: int = FetchLimits.max_side) -> Image.Image:
    """Decode fully under a pixel cap; refuse non-images and formats other than PNG/JPEG/WebP."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InputError(field, f"image has too many pixels (limit {max_pixels})") from None
    except Exception:
        raise InputError(field, "is not a readable image (PNG, JPEG or WebP expected)") from None
    if image.format not in ALLOWED_FORMATS:
        raise InputError(field, f"image format {image.format} is not supported (PNG, JPEG or WebP)")
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(field, f"image is {width}x{height}, over the limit of {max_pixels} pixels")
    if max(width, height) > max_side:
        raise InputError(field, f"image is {width}x{height}, over the limit of {max_side} pixels per side")
    try:
        image.load()
    except Exception:
        raise InputError(field, "image data is truncated or corrupt") from None
    return image


def looks_like_url(value: str) -> bool:
    return "://" in value[:16] or value.lower().startswith(("http:", "https:"))


def read_input(value: str, field: str, limits: FetchLimits, fetched: bytes | None = None) -> tuple[bytes, Image.Image]:
    """The bytes and the decoded image of a valid input given inline (data: URI or base64), or of the bytes
    fetched from its URL (raises InputError). Blocking: decodes the image in full."""
    data = decode_inline(value, field, limits.max_bytes) if fetched is None else fetched
    if len(data) > limits.max_bytes:
        raise InputError(field, f"image is larger than {limits.max_bytes} bytes")
    return data, check_image(data, field, limits.max_pixels, limits.max_side)


def make_client(limits: FetchLimits) -> httpx.AsyncClient:
    timeout = httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout)
    # follow_redirects=False: redirects are followed by hand so every hop is checked.
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
