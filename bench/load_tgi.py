"""A TGI-compatible model server for bench/load.py that answers after a set latency, with a gauge
of the calls in flight.

    python bench/load_tgi.py --model bench/small --latency 0.5 [--max-concurrent 128]

Prints its URL on the first line of stdout and serves until killed. One asyncio event loop
answers every call after ``await asyncio.sleep(latency)``, so hundreds of calls wait at once
for the price of a timer each, as a real server's continuous batching would: the server is not
the bottleneck of what it measures.

It speaks TGI 3.x: ``POST /generate`` (and ``/``) with ``details`` and ``top_n_tokens``, the
first token's candidates carrying a margin fixed by the prompt's hash (tests/scripted_tgi.py's
``hashed_margin``), and an empty ``prefill`` (TGI 3.x returns prefill tokens only when started
with ``--enable-prefill-logprobs``; ``--prefill words`` gives one per word instead);
``GET /info`` and ``GET /health``. Beyond ``--max-concurrent`` calls in flight it answers
``429 {"error_type": "overloaded"}`` as TGI's router does.

The bench's own routes: ``GET /bench/gauge`` (calls in flight now, the peak since the last
reset, calls served and refused, and the client ports of the calls in flight, which the bench
maps to the processes that hold them), ``POST /bench/reset``, ``POST /bench/latency?s=S``,
``POST /bench/hold`` (calls that arrive wait until ``POST /bench/release``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
from collections import Counter
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.llm.tgi_wire import (
    DetailedGeneration,
    GenerateRequest,
    ServerLimits,
    WireToken,
    error_body,
    max_new_tokens,
    response_body,
    validation_error,
)
from tests.scripted_tgi import distribution_with_margin, hashed_margin

LIMITS = ServerLimits(max_input_tokens=4096, max_total_tokens=8192, max_top_n_tokens=5)
ANSWER = ["The", "answer", "is", "yes", "because", "the", "benchmark", "says", "so"]


class Gauge:
    """Calls in flight, by the client port that holds each one (one call per connection)."""

    def __init__(self) -> None:
        self.in_flight: Counter[int] = Counter()
        self.peak = 0
        self.served = 0
        self.refused = 0

    @property
    def current(self) -> int:
        return sum(self.in_flight.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "peak": self.peak,
            "served": self.served,
            "refused": self.refused,
            "client_ports": [port for port, n in self.in_flight.items() for _ in range(n)],
        }


def create_app(model_id: str, *, latency_s: float, max_concurrent: int, prefill: str) -> Starlette:
    gauge = Gauge()
    state: dict[str, Any] = {"latency_s": latency_s, "open": asyncio.Event()}
    state["open"].set()

    async def generate(request: Request) -> JSONResponse:
        if gauge.current >= max_concurrent:
            gauge.refused += 1
            return JSONResponse(error_body("Model is overloaded", "overloaded"), 429)
        port = request.client.port if request.client else 0
        gauge.in_flight[port] += 1
        gauge.peak = max(gauge.peak, gauge.current)
        try:
            return await _answer(await request.json(), state, prefill)
        finally:
            gauge.in_flight[port] -= 1
            if not gauge.in_flight[port]:
                del gauge.in_flight[port]
            gauge.served += 1

    async def info(_: Request) -> JSONResponse:
        return JSONResponse({
            "model_id": model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": max_concurrent, "max_best_of": 2,
            "max_stop_sequences": 4, "max_input_tokens": LIMITS.max_input_tokens,
            "max_total_tokens": LIMITS.max_total_tokens, "validation_workers": 2,
            "max_client_batch_size": 4, "router": "text-generation-router", "version": "3.3.6",
            "sha": None, "docker_label": None,
        })  # fmt: skip

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(None)

    async def read_gauge(_: Request) -> JSONResponse:
        return JSONResponse(gauge.as_json())

    async def reset(_: Request) -> JSONResponse:
        gauge.peak, gauge.served, gauge.refused = gauge.current, 0, 0
        return JSONResponse(gauge.as_json())

    async def set_latency(request: Request) -> JSONResponse:
        state["latency_s"] = float(request.query_params["s"])
        return JSONResponse({"latency_s": state["latency_s"]})

    async def hold(_: Request) -> JSONResponse:
        state["open"].clear()
        return JSONResponse({"held": True})

    async def release(_: Request) -> JSONResponse:
        state["open"].set()
        return JSONResponse({"held": False})

    return Starlette(
        routes=[
            Route("/generate", generate, methods=["POST"]),
            Route("/", generate, methods=["POST"]),
            Route("/info", info),
            Route("/health", health),
            Route("/bench/gauge", read_gauge),
            Route("/bench/reset", reset, methods=["POST"]),
            Route("/bench/latency", set_latency, methods=["POST"]),
            Route("/bench/hold", hold, methods=["POST"]),
            Route("/bench/release", release, methods=["POST"]),
        ]
    )


async def _answer(body: dict[str, Any], state: dict[str, Any], prefill: str) -> JSONResponse:
    try:
        request = GenerateRequest.model_validate(body)
    except ValidationError as exc:
        return JSONResponse(error_body(str(exc.errors()[0]["msg"])), status_code=422)
    words = request.inputs.split()
    error = validation_error(request, input_tokens=len(words), limits=LIMITS)
    if error:
        return JSONResponse(error_body(error), status_code=422)
    await state["open"].wait()
    if state["latency_s"] > 0:
        await asyncio.sleep(state["latency_s"])
    max_new = max_new_tokens(request, input_tokens=len(words), limits=LIMITS)
    top_n = request.parameters.top_n_tokens or 0
    first = distribution_with_margin(hashed_margin(request.inputs))[:top_n]
    first_step = [WireToken(100 + j, text, math.log(p)) for j, (text, p) in enumerate(first)]
    answer = ANSWER[: max(max_new, 1)]
    tokens = [WireToken(i, f" {word}" if i else word, 0.0) for i, word in enumerate(answer)]
    if first_step:
        tokens[0] = first_step[0]  # greedy: the first token is the first step's top-1
    later = [[token] for token in tokens[1:]]
    generation = DetailedGeneration(
        text=" ".join(answer),
        prefill=[WireToken(i, w, None if i == 0 else -1.0) for i, w in enumerate(words)]
        if prefill == "words"
        else [],
        tokens=tokens,
        top_tokens=[first_step, *later] if first_step else [],
        finish_reason="length" if len(answer) >= max_new else "eos_token",
    )
    return JSONResponse(response_body(generation, request.parameters))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model id reported by /info")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    parser.add_argument("--max-concurrent", type=int, default=128, help="beyond it: 429")
    parser.add_argument("--prefill", choices=["empty", "words"], default="empty")
    args = parser.parse_args()
    app = create_app(
        args.model,
        latency_s=args.latency,
        max_concurrent=args.max_concurrent,
        prefill=args.prefill,
    )
    # Named as TCP so that asyncio sets TCP_NODELAY on each accepted connection, as a real
    # server does: without it, an answer's body waits for the client's delayed ACK of its
    # headers, 40 ms added to every call.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
