"""Call an ASGI app as a server would, with the request body in chosen chunks: test clients
read the whole body at once, so they cannot show what a middleware does between chunks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass(frozen=True)
class AsgiResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int  # of the request body's chunks, how many the app asked for

    def json(self) -> Any:
        return json.loads(self.body)


def post_chunks(
    app: ASGIApp, path: str, chunks: Sequence[bytes], *, content_length: int | str | None = None
) -> AsgiResponse:
    """POST ``chunks`` (one ``http.request`` message each) to ``path``; the response."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []
    chunks_read = 0

    async def receive() -> Message:
        nonlocal chunks_read
        if pending:
            chunks_read += 1
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return AsgiResponse(start["status"], response_headers, body, chunks_read)
