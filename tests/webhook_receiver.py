"""A webhook receiver in the test process: records every request and answers as scripted."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
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
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._answers: defaultdict[str, deque[tuple[int, dict[str, str]]]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.hold: threading.Event | None = None
        self.held = threading.Event()
        self._server = ServerThread(self._app())
        self.url = self._server.url

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
            return Response(status_code=status, headers=headers, content=b"ok")

        return app


async def _wait(event: threading.Event) -> None:
    await anyio.to_thread.run_sync(event.wait, 60)
