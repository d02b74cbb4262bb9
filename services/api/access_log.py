"""One JSON access-log line per request, through structlog like every other line.

Uvicorn's own access log is plain text and records the full query string, where a client may
have put a key (``?api_key=...``); this one records the path alone.

Being the outermost middleware, it also notes when each request arrived (``arrived_at``): a
long poll's wait counts from then, not from when a database thread first took the request up.
"""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("twotier.access")


class AccessLog:
    """Pure ASGI middleware: method, path (never the query string), status, duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})["arrived_at"] = time.monotonic()
        status = 500  # what the client gets if the app fails before it answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            client = scope.get("client")
            log.info(
                "http_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                client=client[0] if client else None,
            )


def arrived_at(request: Request) -> float:
    """When the request reached the app (time.monotonic); now, where no middleware noted it."""
    noted: float | None = getattr(request.state, "arrived_at", None)
    return time.monotonic() if noted is None else noted
