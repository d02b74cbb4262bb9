"""Refuse request bodies over a size limit before anything reads them into memory.

A declared ``Content-Length`` over the limit is answered at once; a body without one (chunked)
is counted as it streams in and refused once it passes the limit, so a client cannot make the
API buffer an unbounded body either way.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.error_responses import RequestTooLarge, error_response


class RequestBodyLimit:
    """Pure ASGI middleware: a 413 in the one error shape for bodies over ``max_bytes``, or
    over the limit ``larger`` names for a path (a file upload)."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, larger: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.larger.get(scope["path"], self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await self._refuse(scope, receive, send, max_bytes)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise RequestTooLarge(max_bytes, hint=self._hint(scope))
            return message

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except RequestTooLarge:
            if response_started:
                raise
            await self._refuse(scope, receive, send, max_bytes)

    def _hint(self, scope: Scope) -> str:
        if scope["path"] in self.larger:
            return "upload a smaller file (TWOTIER_BATCH_FILE_MAX_BYTES)"
        return "send a shorter prompt or less metadata"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        refused = RequestTooLarge(max_bytes, hint=self._hint(scope))
        response = error_response(
            refused.status_code,
            refused.code,
            str(refused.detail),
            details=refused.details,
            headers={"Connection": "close"},
            path=scope.get("path", ""),
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed Content-Length itself
    return None
