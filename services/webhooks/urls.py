"""Which URLs webhooks may be sent to: a guard against server-side request forgery.

A URL is refused when its host is, or resolves to, an address that is not globally routable
(private, loopback, link-local such as the cloud metadata service 169.254.169.254, shared,
reserved, multicast), unless ``TWOTIER_WEBHOOK_ALLOWED_NETWORKS`` names a network holding it.
Every address the name resolves to must pass, and the check runs again before each attempt,
so a name later pointed inside the network is refused then.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from services.errors import WebhookUrlRefused, WebhookUrlUnresolvable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_webhook_url(url: str, *, allowed_networks: Sequence[Network]) -> None:
    """Raise WebhookUrlRefused or WebhookUrlUnresolvable unless ``url`` may be called."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced "[" or "]" around the host, for one
        raise WebhookUrlRefused(f"the webhook URL is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlRefused(f"webhook URLs must be http or https, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("webhook URLs must not carry credentials; use the signature")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlRefused(f"the webhook URL's port is invalid: {exc}") from exc
    if not parts.hostname:
        raise WebhookUrlRefused("the webhook URL has no host")
    for address in _addresses(parts.hostname, port):
        if not _allowed(address, allowed_networks):
            raise WebhookUrlRefused(
                f"{parts.hostname} resolves to {address}, which is not a public address; "
                "set TWOTIER_WEBHOOK_ALLOWED_NETWORKS to allow it",
                details={"host": parts.hostname, "address": str(address)},
            )


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # gaierror; a name IDNA cannot encode; a NUL
        raise WebhookUrlUnresolvable(f"the webhook host {host!r} does not resolve: {exc}") from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _allowed(address: IPAddress, allowed_networks: Sequence[Network]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed_networks):
        return True
    return address.is_global and not address.is_multicast
