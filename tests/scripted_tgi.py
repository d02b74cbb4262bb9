"""A TGI-compatible HTTP server whose answers and first-token distributions a test scripts.

It speaks text-generation-inference 3.x's wire format: ``POST /generate`` with ``details``,
``decoder_input_details`` and ``top_n_tokens``, and the ``x-prompt-tokens`` header; ``POST
/tokenize``; ``GET /health`` and ``GET /info`` (which, as in TGI 3.3, does not report
``max_top_n_tokens``); 422 with ``error_type: validation`` for invalid parameters; 429 "Model
is overloaded". As TGI 3.x by default, ``details.prefill`` is empty unless the server is made
with prefill log-probs on. Words stand for tokens. Workers reach it over real HTTP and cannot
tell it from TGI. Only the test side has the scripting methods.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.llm.tgi_wire import (
    DetailedGeneration,
    GenerateParameters,
    GenerateRequest,
    ServerLimits,
    WireToken,
    count_headers,
    error_body,
    max_new_tokens,
    response_body,
    tokenize_body,
    validation_error,
)
from tests.server_thread import ServerThread

MAX_TOP_N_TOKENS = 5
MAX_CONCURRENT_REQUESTS = 128
LIMITS = ServerLimits(
    max_input_tokens=1024, max_total_tokens=2048, max_top_n_tokens=MAX_TOP_N_TOKENS
)


# A scripted failure: an HTTP status, or a status and the headers to send with it.
Failure = int | tuple[int, dict[str, str]]


@dataclass
class Script:
    answer: str
    first_token: list[tuple[str, float]]  # (token text, probability), any order
    failures: list[Failure] = field(default_factory=list)  # answered first, in order
    hold: threading.Event | None = None


def hashed_margin(prompt: str) -> float:
    """A margin in [0, 1) fixed by the prompt, spread evenly over many prompts."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") / 2**32


def distribution_with_margin(margin: float) -> list[tuple[str, float]]:
    """A first-token distribution whose p1 - p2 is ``margin``."""
    p2 = (1.0 - margin) / 2.0
    p1 = p2 + margin
    rest = max(1.0 - p1 - p2, 0.0)
    return [(" Yes", p1), (" No", p2), (" Maybe", rest / 2 or 1e-9), (" Unsure", rest / 4 or 1e-9)]


class ScriptedTGI:
    def __init__(
        self,
        model_id: str,
        *,
        margin_of: Callable[[str], float] | None = None,
        prefill_logprobs: bool = False,
    ) -> None:
        """``margin_of`` gives the margin of prompts that were not scripted (default 0.9);
        ``prefill_logprobs`` is TGI's ``--enable-prefill-logprobs``."""
        self.model_id = model_id
        self._margin_of = margin_of or (lambda _prompt: 0.9)
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.parameters: dict[str, list[GenerateParameters]] = {}  # per input, each call's
        self._label_logprobs: dict[str, dict[str, float]] = {}
        self.tokenize_calls: Counter[str] = Counter()
        self.arrivals: dict[str, list[float]] = {}  # time.monotonic() of each /generate call
        self.arrived: dict[str, threading.Event] = {}
        self.delay_s = 0.0
        self.prefill_logprobs = prefill_logprobs
        # Servers that speak TGI's format without TGI's count header or /tokenize route.
        self.sends_prompt_tokens_header = True
        self.has_tokenize_route = True
        # Calls being answered now, the most at once, and per prompt the calls that arrived
        # while an earlier call of the same prompt was still being answered.
        self.in_flight = 0
        self.most_in_flight = 0
        self._running: Counter[str] = Counter()
        self.overlapping: Counter[str] = Counter()
        self._server = ServerThread(self._app())
        self.url = self._server.url

    # -- test side ---------------------------------------------------------------------------
    def script(
        self,
        prompt: str,
        *,
        answer: str = "Yes",
        margin: float | None = None,
        first_token: list[tuple[str, float]] | None = None,
        failures: list[Failure] | None = None,
        hold: bool = False,
    ) -> None:
        dist = first_token if first_token is not None else distribution_with_margin(margin or 0.9)
        with self._lock:
            self._scripts[prompt] = Script(
                answer, dist, list(failures or []), threading.Event() if hold else None
            )
            self.arrived[prompt] = threading.Event()

    def script_labels(self, prompt: str, logprobs: dict[str, float]) -> None:
        """The log-prob of each label as the prompt's continuation: what the prefill of an
        input made of the prompt and a label reports for the label's words (the last word
        carries it all)."""
        with self._lock:
            self._label_logprobs[prompt] = dict(logprobs)

    def release(self, prompt: str) -> None:
        script = self._scripts[prompt]
        if script.hold is not None:
            script.hold.set()

    def start(self) -> ScriptedTGI:
        self._server.start()
        return self

    def stop(self) -> None:
        for script in self._scripts.values():
            if script.hold is not None:
                script.hold.set()
        self._server.stop()

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
                "max_concurrent_requests": MAX_CONCURRENT_REQUESTS,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": LIMITS.max_input_tokens,
                "max_total_tokens": LIMITS.max_total_tokens,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.6",
                "sha": None,
                "docker_label": None,
            }

        async def generate(request: Request) -> JSONResponse:
            return await self._generate(await request.json())

        @app.post("/tokenize")
        async def tokenize(request: Request) -> JSONResponse:
            if not self.has_tokenize_route:
                return JSONResponse({"detail": "Not Found"}, 404)
            prompt = str((await request.json()).get("inputs", ""))
            with self._lock:
                self.tokenize_calls[prompt] += 1
            words = _words(prompt)
            return JSONResponse(tokenize_body(list(range(len(words))), words))

        app.add_api_route("/generate", generate, methods=["POST"])
        app.add_api_route("/", generate, methods=["POST"])

        return app

    async def _generate(self, body: dict[str, Any]) -> JSONResponse:
        inputs = str(body.get("inputs"))
        with self._lock:
            self.calls[inputs] += 1
            self.arrivals.setdefault(inputs, []).append(time.monotonic())
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self._running[inputs]:
                self.overlapping[inputs] += 1
            self._running[inputs] += 1
        try:
            return await self._answer(body)
        finally:
            with self._lock:
                self.in_flight -= 1
                self._running[inputs] -= 1

    async def _answer(self, body: dict[str, Any]) -> JSONResponse:
        import anyio

        try:
            request = GenerateRequest.model_validate(body)
        except ValidationError as exc:
            return JSONResponse(error_body(str(exc.errors()[0]["msg"])), status_code=422)
        prompt = request.inputs
        with self._lock:
            self.parameters.setdefault(prompt, []).append(request.parameters)
        error = validation_error(request, input_tokens=len(prompt.split()), limits=LIMITS)
        if error:
            return JSONResponse(error_body(error), status_code=422)
        with self._lock:
            script = self._scripts.get(prompt) or Script(
                "ok", distribution_with_margin(self._margin_of(prompt))
            )
            status = script.failures.pop(0) if script.failures else None
            arrived = self.arrived.setdefault(prompt, threading.Event())
        arrived.set()
        if status is not None:
            return _failure(status)
        if script.hold is not None:
            await anyio.to_thread.run_sync(script.hold.wait)
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        max_new = max_new_tokens(request, input_tokens=len(prompt.split()), limits=LIMITS)
        top_n = request.parameters.top_n_tokens or 0
        generation = _generation(
            script, prefill=self._prefill(prompt), max_new=max_new, top_n=top_n
        )
        body = response_body(generation, request.parameters, prefill_logprobs=self.prefill_logprobs)
        counts = count_headers(
            input_tokens=len(_words(prompt)), generated_tokens=len(generation.tokens)
        )
        return JSONResponse(body, headers=counts if self.sends_prompt_tokens_header else None)

    def _prefill(self, inputs: str) -> list[WireToken]:
        """A word a token, each -1.0, but a scripted label after its prompt (see
        ``script_labels``) whose words carry its log-prob."""
        words = inputs.split()
        logprobs: list[float | None] = [None] + [-1.0] * (len(words) - 1)
        with self._lock:
            scripted = list(self._label_logprobs.items())
        for prompt, labels in scripted:
            label = inputs[len(prompt) :].strip() if inputs.startswith(prompt) else None
            if label in labels:
                count = len(label.split())
                logprobs[-count:] = [0.0] * (count - 1) + [labels[label]]
        return [
            WireToken(i, word, logprob)
            for i, (word, logprob) in enumerate(zip(words, logprobs, strict=True))
        ]


def _words(prompt: str) -> list[str]:
    """The scripted tokenizer: each word is a token."""
    return [f" {w}" if i else w for i, w in enumerate(prompt.split())]


def _failure(failure: Failure) -> JSONResponse:
    """TGI's 429 "Model is overloaded", or a bare failure (a proxy's 503, a crash's 500)."""
    status, headers = failure if isinstance(failure, tuple) else (failure, {})
    if status == 429:
        return JSONResponse(error_body("Model is overloaded", "overloaded"), status, headers)
    return JSONResponse(error_body(f"scripted failure {status}", "unavailable"), status, headers)


def _step(chosen: WireToken, top_n: int) -> list[WireToken]:
    """A later step: the chosen token first, then unlikely runners-up."""
    runners_up = [WireToken(900 + j, f" alt{j}", -8.0 - j) for j in range(top_n - 1)]
    return [chosen, *runners_up][:top_n]


def _generation(
    script: Script, *, prefill: list[WireToken], max_new: int, top_n: int
) -> DetailedGeneration:
    """Words stand for tokens; the first token's candidates are the scripted distribution."""
    words = [f" {w}" if i else w for i, w in enumerate(script.answer.split())][:max_new]
    ranked = sorted(script.first_token, key=lambda t: t[1], reverse=True)[:top_n]
    first_step = [WireToken(100 + j, text, math.log(p)) for j, (text, p) in enumerate(ranked)]
    # Greedy: the first generated token is the first step's top-1 candidate.
    tokens = [WireToken(i, word, 0.0) for i, word in enumerate(words)]
    if first_step and tokens:
        tokens[0] = first_step[0]
    return DetailedGeneration(
        text=" ".join(script.answer.split()[:max_new]),
        prefill=prefill,
        tokens=tokens,
        top_tokens=[first_step] + [_step(token, top_n) for token in tokens[1:]],
        finish_reason="length" if len(words) >= max_new else "eos_token",
    )
