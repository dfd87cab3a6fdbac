"""The SSRF guard: which URLs the service may connect to (input images fetched by the web tier, webhooks
delivered by the job layer). Every address a host resolves to is checked; the connection then goes to the
checked address (no DNS rebinding between the check and the request)."""

import ipaddress
import socket
from urllib.parse import urlsplit

from service.jobs.errors import BadInput


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
        raise BadInput(field, f"cannot resolve host {host!r}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise BadInput(field, f"cannot resolve host {host!r}")
    if not allow_private:
        for ip in addresses:
            if not is_public_address(ip):
                raise BadInput(field, f"URL host {host!r} resolves to a non-public address ({ip}); refused")
    return str(addresses[0])


def check_url_shape(url: str, field: str) -> tuple:
    """scheme/host/credentials checks; returns (parts, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadInput(field, f"URL scheme {parts.scheme!r} is not allowed (http or https only)")
    if not parts.hostname:
        raise BadInput(field, "URL has no host")
    if parts.username or parts.password:
        raise BadInput(field, "URLs with credentials are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadInput(field, "URL has an invalid port") from None
    return parts, port


def pinned_url(parts, ip: str, port: int) -> str:
    """The URL with its host replaced by the checked address (the Host header keeps the name)."""
    ip_host = f"[{ip}]" if ":" in ip else ip
    return parts._replace(netloc=f"{ip_host}:{port}").geturl()
