"""A webhook receiver in the test process: records every request and answers as scripted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from standardwebhooks import Webhook

from tests.server_thread import ServerThread
from tests.waiting import wait_for


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_s: float = field(default_factory=time.monotonic)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def verified(self, secret: str) -> dict[str, Any]:
        """The payload, verified by the Standard Webhooks reference library."""
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


class WebhookReceiver:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self._answers: defaultdict[str, deque[tuple[int, dict[str, str]]]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.hold: threading.Event | None = None
        self.held = threading.Event()
        # Paths whose answer trickles: one byte per second for that many seconds.
        self.trickle: dict[str, int] = {}
        self._in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()  # per webhook-id, at any one moment
        self._server = ServerThread(self._app(), host=host, port=port, tls=tls)
        self.url = self._server.url
        self.port = self._server.port

    def answer_next(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        """Status codes (and headers) for the next requests at ``path``; 200 after them."""
        with self._lock:
            for answer in answers:
                self._answers[path].append(answer if isinstance(answer, tuple) else (answer, {}))

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 30) -> list[Received]:
        return wait_for(
            lambda: found if len(found := self.at(path)) >= count else None,
            timeout=timeout,
            what=f"{count} webhook request(s) at {path}",
        )

    def start(self) -> WebhookReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.stop()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            body = await request.body()
            with self._lock:
                self.received.append(Received(f"/{path}", dict(request.headers), body))
                answers = self._answers[f"/{path}"]
                status, headers = answers.popleft() if answers else (200, {})
            hold = self.hold
            if hold is not None and not hold.is_set():
                self.held.set()
                await _wait(hold)
            seconds = self.trickle.get(f"/{path}")
            if seconds is not None:
                return StreamingResponse(
                    self._trickled(request.headers.get("webhook-id", ""), seconds),
                    status_code=status,
                )
            return Response(status_code=status, headers=headers, content=b"ok")

        return app

    async def _trickled(self, webhook_id: str, seconds: int) -> AsyncIterator[bytes]:
        """The answer a byte a second; counts how many answers to one webhook-id run at once."""
        with self._lock:
            self._in_flight[webhook_id] += 1
            self.most_in_flight[webhook_id] = max(
                self.most_in_flight[webhook_id], self._in_flight[webhook_id]
            )
        try:
            for _ in range(seconds):
                yield b"."
                await anyio.sleep(1)
        finally:
            with self._lock:
                self._in_flight[webhook_id] -= 1


async def _wait(event: threading.Event) -> None:
    await anyio.to_thread.run_sync(event.wait, 60)
