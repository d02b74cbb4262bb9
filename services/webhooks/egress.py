"""Sending one webhook attempt: to the address that was checked, all in one deadline, reading
little of the answer.

The host is resolved once, by the SSRF check itself, and the connection goes to an address
that check accepted: a name that answers a public address to the check and an internal one a
moment later (DNS rebinding) still reaches only the public one. The request keeps the URL's
``Host`` header, and TLS sends the host name as SNI and verifies the certificate against it.

The deadline covers everything, resolution included; a receiver that trickles its answer a
byte at a time is cut off at it, so an attempt never outlives the delivery's lease and two
attempts of one delivery never overlap. Of the answer at most ``excerpt_bytes`` are read,
undecoded.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from services.webhooks.urls import CheckedUrl, IPAddress, Network, check_webhook_url

# getaddrinfo cannot be cancelled: a resolution still running at the deadline finishes here,
# off the attempt's event loop, which is then free to end.
_RESOLVERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="twotier-webhook-dns")


class AttemptTimedOut(Exception):
    """The attempt did not finish within its deadline."""


@dataclass(frozen=True)
class Reply:
    status_code: int
    location: str | None
    retry_after: str | None
    excerpt: bytes


def send_attempt(
    url: str,
    *,
    allowed_networks: Sequence[Network],
    content: bytes,
    headers: dict[str, str],
    deadline_s: float,
    excerpt_bytes: int,
) -> Reply:
    """POST ``content`` to ``url``. Raises WebhookUrlRefused, WebhookUrlUnresolvable,
    httpx.HTTPError, or AttemptTimedOut after ``deadline_s`` seconds in all."""
    return asyncio.run(_send(url, allowed_networks, content, headers, deadline_s, excerpt_bytes))


async def _send(
    url: str,
    allowed_networks: Sequence[Network],
    content: bytes,
    headers: dict[str, str],
    deadline_s: float,
    excerpt_bytes: int,
) -> Reply:
    check = functools.partial(check_webhook_url, url, allowed_networks=allowed_networks)
    try:
        async with asyncio.timeout(deadline_s):
            checked = await asyncio.get_running_loop().run_in_executor(_RESOLVERS, check)
            return await _post_to_checked(checked, content, headers, deadline_s, excerpt_bytes)
    except TimeoutError as exc:
        raise AttemptTimedOut(
            f"no complete answer within {deadline_s:g} s (the attempt's whole deadline)"
        ) from exc


async def _post_to_checked(
    checked: CheckedUrl,
    content: bytes,
    headers: dict[str, str],
    deadline_s: float,
    excerpt_bytes: int,
) -> Reply:
    """Try the checked addresses in the resolver's order until one accepts the connection."""
    refused: httpx.ConnectError | None = None
    for address in checked.addresses:
        try:
            return await _post_to(address, checked, content, headers, deadline_s, excerpt_bytes)
        except httpx.ConnectError as exc:
            refused = exc
    assert refused is not None  # a checked URL has at least one address
    raise refused


async def _post_to(
    address: IPAddress,
    checked: CheckedUrl,
    content: bytes,
    headers: dict[str, str],
    deadline_s: float,
    excerpt_bytes: int,
) -> Reply:
    url = httpx.URL(checked.url)
    pinned = url.copy_with(host=str(address))
    # One client per attempt: a pooled connection verified for one tenant's host name must
    # never carry another's request to the same address.
    async with httpx.AsyncClient(
        verify=_tls_context(), timeout=deadline_s, follow_redirects=False
    ) as client:
        request = client.build_request(
            "POST",
            pinned,
            content=content,
            headers={**headers, "host": url.netloc.decode("ascii"), "accept-encoding": "identity"},
            extensions={"sni_hostname": checked.host},
        )
        response = await client.send(request, stream=True)
        try:
            excerpt = b""
            async for chunk in response.aiter_raw():
                excerpt += chunk
                if len(excerpt) >= excerpt_bytes:
                    break
        finally:
            await response.aclose()
    return Reply(
        status_code=response.status_code,
        location=response.headers.get("location"),
        retry_after=response.headers.get("retry-after"),
        excerpt=excerpt[:excerpt_bytes],
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificates are verified against the CA bundle (SSL_CERT_FILE if set), once per
    process."""
    return httpx.create_ssl_context()
