"""A TGI-compatible HTTP server whose answers and first-token distributions a test scripts.

It speaks text-generation-inference's wire format: ``POST /generate`` with ``details``,
``decoder_input_details`` and ``top_n_tokens``; ``GET /health`` and ``GET /info``; 422 with
``error_type: validation`` for invalid parameters. Workers reach it over real HTTP and cannot
tell it from TGI. Only the test side has the scripting methods.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MAX_TOP_N_TOKENS = 5
MAX_INPUT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048


@dataclass
class Script:
    answer: str
    first_token: list[tuple[str, float]]  # (token text, probability), any order
    failures: list[int] = field(default_factory=list)  # HTTP statuses to return first
    hold: threading.Event | None = None


def distribution_with_margin(margin: float) -> list[tuple[str, float]]:
    """A first-token distribution whose p1 - p2 is ``margin``."""
    p2 = (1.0 - margin) / 2.0
    p1 = p2 + margin
    rest = max(1.0 - p1 - p2, 0.0)
    return [(" Yes", p1), (" No", p2), (" Maybe", rest / 2 or 1e-9), (" Unsure", rest / 4 or 1e-9)]


class ScriptedTGI:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.arrived: dict[str, threading.Event] = {}
        self.delay_s = 0.0
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    # -- test side ---------------------------------------------------------------------------
    def script(
        self,
        prompt: str,
        *,
        answer: str = "Yes",
        margin: float | None = None,
        first_token: list[tuple[str, float]] | None = None,
        failures: list[int] | None = None,
        hold: bool = False,
    ) -> None:
        dist = first_token if first_token is not None else distribution_with_margin(margin or 0.9)
        with self._lock:
            self._scripts[prompt] = Script(
                answer, dist, list(failures or []), threading.Event() if hold else None
            )
            self.arrived[prompt] = threading.Event()

    def release(self, prompt: str) -> None:
        script = self._scripts[prompt]
        if script.hold is not None:
            script.hold.set()

    def start(self) -> ScriptedTGI:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("scripted TGI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for script in self._scripts.values():
            if script.hold is not None:
                script.hold.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- server side -------------------------------------------------------------------------
    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        def health() -> JSONResponse:
            return JSONResponse(None)

        @app.get("/info")
        def info() -> dict[str, Any]:
            return {
                "model_id": self.model_id,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": MAX_INPUT_TOKENS,
                "max_total_tokens": MAX_TOTAL_TOKENS,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.6",
                "sha": None,
                "docker_label": None,
            }

        @app.post("/generate")
        async def generate(request: Request) -> JSONResponse:
            body = await request.json()
            return await self._generate(body)

        return app

    async def _generate(self, body: dict[str, Any]) -> JSONResponse:
        import anyio

        prompt = body.get("inputs")
        params = body.get("parameters") or {}
        with self._lock:
            self.calls[str(prompt)] += 1
        error = _validate(prompt, params)
        if error:
            return JSONResponse({"error": error, "error_type": "validation"}, status_code=422)
        with self._lock:
            script = self._scripts.get(prompt) or Script("ok", distribution_with_margin(0.9))
            status = script.failures.pop(0) if script.failures else None
            arrived = self.arrived.setdefault(prompt, threading.Event())
        arrived.set()
        if status is not None:
            return JSONResponse(
                {"error": "Model is overloaded", "error_type": "overloaded"}, status
            )
        if script.hold is not None:
            await anyio.to_thread.run_sync(script.hold.wait)
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        return JSONResponse(_response(prompt, params, script))


def _validate(prompt: Any, params: dict[str, Any]) -> str | None:
    if not isinstance(prompt, str) or not prompt:
        return "Input validation error: `inputs` cannot be empty"
    top_n = params.get("top_n_tokens") or 0
    if not 0 <= top_n <= MAX_TOP_N_TOKENS:
        return (
            "Input validation error: `top_n_tokens` must be >= 0 and <= "
            f"{MAX_TOP_N_TOKENS}. Given: {top_n}"
        )
    max_new = params.get("max_new_tokens") or 100
    if max_new <= 0:
        return "Input validation error: `max_new_tokens` must be strictly positive"
    input_tokens = len(prompt.split())
    if input_tokens + max_new > MAX_TOTAL_TOKENS:
        return (
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
            f"{MAX_TOTAL_TOKENS}. Given: {input_tokens} `inputs` tokens and {max_new} "
            "`max_new_tokens`"
        )
    return None


def _response(prompt: str, params: dict[str, Any], script: Script) -> dict[str, Any]:
    max_new = params.get("max_new_tokens") or 100
    words = [f" {w}" if i else w for i, w in enumerate(script.answer.split())][:max_new] or [""]
    top_n = params.get("top_n_tokens") or 0
    ranked = sorted(script.first_token, key=lambda t: t[1], reverse=True)[:top_n]
    tokens = [
        _token(i, w, 0.0 if i else math.log(ranked[0][1]) if ranked else 0.0)
        for i, w in enumerate(words)
    ]
    top_tokens = [[_token(100 + j, text, math.log(p)) for j, (text, p) in enumerate(ranked)]]
    top_tokens += [[_token(i, w, 0.0)] if top_n else [] for i, w in enumerate(words[1:], 1)]
    details: dict[str, Any] = {
        "finish_reason": "length" if len(words) >= max_new else "eos_token",
        "generated_tokens": len(words),
        "seed": None,
        "prefill": [],
        "tokens": tokens,
        "top_tokens": top_tokens if top_n else [],
    }
    if params.get("decoder_input_details"):
        details["prefill"] = [
            {"id": i, "text": w, "logprob": None if i == 0 else -1.0}
            for i, w in enumerate(prompt.split())
        ]
    return {"generated_text": " ".join(script.answer.split()[:max_new]), "details": details}


def _token(token_id: int, text: str, logprob: float) -> dict[str, Any]:
    return {"id": token_id, "text": text, "logprob": logprob, "special": False}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
