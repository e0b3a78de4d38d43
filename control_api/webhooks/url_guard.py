"""The URL guard: a webhook URL must not reach into the server's own network.

A host that resolves to a private, loopback, link-local or otherwise
reserved address is refused, at registration and again at every delivery,
unless ``PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE=1`` (``Settings.webhook_allow_private``).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["UnsafeUrl", "check_url"]


class UnsafeUrl(ValueError):
    """The URL is malformed or points somewhere a webhook must not go."""


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not http(s) or whose host resolves to a non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"url scheme {parts.scheme or '(none)'!r} is not allowed: allowed http, https")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UnsafeUrl("url has an invalid port") from None
    if not host:
        raise UnsafeUrl("url has no host")
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeUrl(f"url host {host!r} does not resolve") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise UnsafeUrl(f"url host {host!r} resolves to {address}, a private, loopback, "
                            "link-local or reserved address; set "
                            "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE=1 on the server to allow it")
