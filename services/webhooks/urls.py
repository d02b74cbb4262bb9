"""Which URLs webhooks may be sent to: a guard against server-side request forgery.

A URL is refused when its host is, or resolves to, an address that is not global unicast
(private, loopback, link-local such as the cloud metadata service 169.254.169.254, shared,
reserved, documentation, multicast), unless ``TWOTIER_WEBHOOK_ALLOWED_NETWORKS`` names a
network holding it. IPv6 addresses that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are
judged by the IPv4 address they lead to; the other IPv6 forms that embed one (IPv4-compatible,
IPv4-translated, local-use NAT64, Teredo) lie outside the global unicast space and are refused.
The special-purpose networks are listed here rather than taken from ``ipaddress.is_global``,
whose answers vary between Python releases.

Every address the name resolves to must pass. Delivery checks again before each attempt and
connects to the very address it checked (see ``services.webhooks.egress``), so a name pointed
inside the network later, even between the check and the connection, reaches nothing inside.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.errors import WebhookUrlRefused, WebhookUrlUnresolvable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA's special-purpose IPv4 registry, the whole of each block, and multicast and class E.
_NOT_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(block)
    for block in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24",
        "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
# Global unicast is 2000::/3; inside it, protocol assignments (Teredo among them), the
# documentation blocks and AS112.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(block)
    for block in ("2001::/23", "2001:db8::/32", "2620:4f:8000::/48", "3fff::/20")
)
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed, with the addresses its host resolved to, in the resolver's order:
    the only addresses a delivery may connect to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: list[IPAddress]


def check_webhook_url(url: str, *, allowed_networks: Sequence[Network]) -> CheckedUrl:
    """The URL's checked addresses; raises WebhookUrlRefused or WebhookUrlUnresolvable."""
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
    addresses = _addresses(parts.hostname, port)
    for address in addresses:
        if not is_allowed(address, allowed_networks):
            raise WebhookUrlRefused(
                f"{parts.hostname} resolves to {address}, which is not a public address; "
                "set TWOTIER_WEBHOOK_ALLOWED_NETWORKS to allow it",
                details={"host": parts.hostname, "address": str(address)},
            )
    return CheckedUrl(url, parts.scheme, parts.hostname, port, addresses)


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # gaierror; a name IDNA cannot encode; a NUL
        raise WebhookUrlUnresolvable(f"the webhook host {host!r} does not resolve: {exc}") from exc
    resolved = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return list(dict.fromkeys(resolved))  # one per address, in the resolver's order


def is_allowed(address: IPAddress, allowed_networks: Sequence[Network]) -> bool:
    """Whether webhooks may connect to ``address``: global unicast, or an allowed network."""
    if any(address in network for network in allowed_networks):
        return True
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in network for network in _NOT_GLOBAL_V4)
    carried = _carried_ipv4(address)
    if carried is not None:
        return is_allowed(carried, allowed_networks)
    return address in _GLOBAL_UNICAST_V6 and not any(
        address in network for network in _NOT_GLOBAL_V6
    )


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a connection to ``address`` ends up at, for the forms that carry one:
    IPv4-mapped (a dual-stack socket), the well-known NAT64 prefix and 6to4."""
    if address in _IPV4_MAPPED or address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour
