"""``twotier model-server``: a TGI-compatible HTTP server over the local model.

It serves ``POST /generate`` (and ``POST /``, as TGI does) with TGI's request and response shape
and TGI's 422 validation errors, plus ``/tokenize``, ``/health``, ``/info`` and Prometheus
``/metrics`` with TGI's metric names, so the small-tier workers run the TGI client unchanged on
a laptop. It behaves as TGI 3.x does by default: ``details.prefill`` is empty unless started
with prefill log-probs on (``--enable-prefill-logprobs``), the prompt's token count comes in the
``x-prompt-tokens`` header, and beyond ``max_concurrent_requests`` calls in flight it answers
429 "Model is overloaded". The prompt's tokens are those the model ran: with the chat template
applied (unless ``--raw-prompts``), which is what ``/tokenize`` counts too. Requests in flight
are decoded together (continuous batching, as TGI does; ``tgi_batch_current_size`` is the
batch's size; an ``x-fairness-key`` header makes requests take turns by key), and a client that
disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError

from services.llm.local_model import LocalModel
from services.llm.tgi_wire import (
    FAIRNESS_HEADER,
    DetailedGeneration,
    GenerateRequest,
    ServerLimits,
    count_headers,
    error_body,
    max_new_tokens,
    response_body,
    tokenize_body,
    validation_error,
)

VERSION = "twotier-model-server"
# Requests that name a key here (a tenant) take turns by it when more wait than the batch
# holds; those without one wait first come, first served.


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tgi_request_count", "Requests received", registry=self.registry)
        self.successes = Counter("tgi_request_success", "Requests answered", registry=self.registry)
        self.failures = Counter(
            "tgi_request_failure", "Requests refused", ["err"], registry=self.registry
        )
        self.queue_size = Gauge("tgi_queue_size", "Requests waiting", registry=self.registry)
        self.batch_size = Gauge(
            "tgi_batch_current_size", "Sequences in the running batch", registry=self.registry
        )
        self.duration = Histogram(
            "tgi_request_duration", "Seconds per request", registry=self.registry
        )
        self.generated_tokens = Histogram(
            "tgi_request_generated_tokens",
            "Tokens generated per request",
            buckets=(1, 4, 16, 64, 256, 1024, 4096),
            registry=self.registry,
        )


def create_model_server(
    model: LocalModel,
    *,
    model_id: str,
    max_top_n_tokens: int = 5,
    max_input_tokens: int | None = None,
    max_concurrent_requests: int = 128,
    prefill_logprobs: bool = False,
) -> FastAPI:
    limits = ServerLimits(
        max_input_tokens=max_input_tokens or model.max_total_tokens - 1,
        max_total_tokens=model.max_total_tokens,
        max_top_n_tokens=max_top_n_tokens,
    )
    metrics = ServerMetrics()
    app = FastAPI(title="twotier model-server", version=VERSION)
    in_flight = 0  # requests admitted and not answered; only the event loop changes it

    def refuse(message: str, status: int = 422) -> JSONResponse:
        metrics.failures.labels(err="validation").inc()
        return JSONResponse(error_body(message), status_code=status)

    async def generate(request: Request) -> JSONResponse:
        nonlocal in_flight
        metrics.requests.inc()
        if in_flight >= max_concurrent_requests:
            metrics.failures.labels(err="overloaded").inc()
            return JSONResponse(error_body("Model is overloaded", "overloaded"), status_code=429)
        in_flight += 1
        try:
            return await generate_admitted(request)
        finally:
            in_flight -= 1

    async def generate_admitted(request: Request) -> JSONResponse:
        try:
            generate_request = GenerateRequest.model_validate(json.loads(await request.body()))
        except json.JSONDecodeError as exc:
            return refuse(f"Failed to parse the request body as JSON: {exc}", status=400)
        except ValidationError as exc:
            return refuse(f"Failed to deserialize the JSON body: {exc.errors()[0]['msg']}")
        input_ids = model.encode(generate_request.inputs) if generate_request.inputs else []
        error = validation_error(
            generate_request, input_tokens=len(input_ids), limits=limits
        ) or _unsupported(generate_request)
        if error:
            return refuse(error)
        params = generate_request.parameters
        started = time.perf_counter()
        metrics.queue_size.inc()
        try:
            generation = await _generate_while_connected(
                request,
                model,
                input_ids,
                max_new_tokens=max_new_tokens(
                    generate_request, input_tokens=len(input_ids), limits=limits
                ),
                top_n=params.top_n_tokens or 0,
                prompt_logprobs=prefill_logprobs
                and params.details
                and params.decoder_input_details,
            )
        finally:
            metrics.queue_size.dec()
        if generation is None:  # nobody reads this answer
            metrics.failures.labels(err="cancelled").inc()
            return JSONResponse(error_body("Client disconnected", "cancelled"), status_code=499)
        metrics.duration.observe(time.perf_counter() - started)
        metrics.generated_tokens.observe(len(generation.tokens))
        metrics.successes.inc()
        return JSONResponse(
            response_body(generation, params, prefill_logprobs=prefill_logprobs),
            headers=count_headers(
                input_tokens=len(input_ids), generated_tokens=len(generation.tokens)
            ),
        )

    app.add_api_route("/generate", generate, methods=["POST"])
    app.add_api_route("/", generate, methods=["POST"])

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        try:
            inputs = str(json.loads(await request.body())["inputs"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            return refuse(f"Failed to deserialize the JSON body: {exc!r}")
        ids = await run_in_threadpool(model.encode, inputs) if inputs else []
        pieces = [model.tokenizer.decode([token_id]) for token_id in ids]
        return JSONResponse(tokenize_body(ids, pieces))

    @app.get("/health")
    def health() -> Response:
        return Response(status_code=200)

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {
            "model_id": model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": max_concurrent_requests,
            "max_best_of": 1,
            "max_stop_sequences": 0,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "max_top_n_tokens": limits.max_top_n_tokens,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "twotier",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
        }

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        metrics.batch_size.set(model.decoder.stats.current_batch)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _unsupported(generate_request: GenerateRequest) -> str | None:
    """What this server cannot do of what TGI can, as TGI's validation error would say it."""
    params = generate_request.parameters
    if params.do_sample:
        return "Input validation error: this server decodes greedily; `do_sample` is not supported"
    if params.stop:
        return (
            f"Input validation error: `stop` supports up to 0 stop sequences. "
            f"Given: {len(params.stop)}"
        )
    return None


async def _generate_while_connected(
    request: Request,
    model: LocalModel,
    input_ids: list[int],
    *,
    max_new_tokens: int,
    top_n: int,
    prompt_logprobs: bool,
) -> DetailedGeneration | None:
    """The generation, or None if the client went away first (which stops it)."""
    cancelled = threading.Event()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, cancelled))
    try:
        generation = await run_in_threadpool(
            model.generate,
            input_ids,
            max_new_tokens=max_new_tokens,
            top_n=top_n,
            fairness_key=request.headers.get(FAIRNESS_HEADER, ""),
            cancelled=cancelled,
            prompt_logprobs=prompt_logprobs,
        )
    finally:
        watcher.cancel()
    return None if cancelled.is_set() else generation


async def _cancel_on_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Set ``cancelled`` when the client goes away. The body has been read, so the next
    message the server sends the app is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancelled.set()
