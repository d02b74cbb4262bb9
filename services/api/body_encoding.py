"""Request bodies are JSON in UTF-8 without a byte order mark, whatever the Content-Type says.

Every route that takes a body takes JSON, so the body is read as JSON whatever Content-Type the
client sent: ``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``, and its users
expect the JSON they typed to be read as such (``JsonBody``). A body that is not JSON is
``400 bad_request`` (services.api.error_responses).

JSON over HTTP is UTF-8 without a BOM (RFC 8259, section 8.1), and that is what the API
documents. Python's ``json.loads`` on bytes also detects UTF-16 and UTF-32 and skips a BOM, so
FastAPI alone would take those bodies. UTF-8 JSON never holds a NUL byte (JSON escapes control
characters inside strings) while UTF-16 and UTF-32 text always does, so a NUL byte or a BOM at
the start is enough to tell; bytes that are not UTF-8 at all fail in FastAPI's own decoding.
Both end as ``400 bad_request``.

The one route whose body is not JSON, the file upload (multipart), is named in ``raw_paths``
and passed through as it came.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")
NOT_UTF8 = "the request body must be JSON in UTF-8, without a byte order mark"


class Utf8Body:
    """Pure ASGI middleware: checks the body as it streams in, without buffering it. The
    HTTPException raised from ``receive`` reaches the app's error handlers unchanged."""

    def __init__(self, app: ASGIApp, *, raw_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.raw_paths = raw_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.raw_paths:
            await self.app(scope, receive, send)
            return
        start = b""  # the body's first bytes, until a BOM can be told apart

        async def checking_receive() -> Message:
            nonlocal start
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                if len(start) < 3:
                    start += chunk[:3]
                    if start.startswith(BYTE_ORDER_MARKS):
                        raise HTTPException(400, NOT_UTF8)
                if b"\x00" in chunk:
                    raise HTTPException(400, NOT_UTF8)
            return message

        await self.app(scope, checking_receive, send)


JSON = b"application/json"


class JsonBody:
    """Pure ASGI middleware: a request's Content-Type, whatever it was, is read as JSON."""

    def __init__(self, app: ASGIApp, *, raw_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.raw_paths = raw_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.raw_paths:
            headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", JSON)]}
        await self.app(scope, receive, send)
