"""The FastAPI application."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services import metrics
from services.api import (
    admin_routes,
    batch_routes,
    file_routes,
    openai_routes,
    query_routes,
    threshold_routes,
    usage_routes,
    webhook_routes,
)
from services.api.access_log import AccessLog
from services.api.body_encoding import JsonBody, Utf8Body
from services.api.body_limit import RequestBodyLimit
from services.api.database import RequestDatabase
from services.api.error_responses import install_error_handlers
from services.api.openapi import state_limits_in_schema
from services.db import database_is_reachable, open_database
from services.dispatch import Dispatcher
from services.logs import configure_logging
from services.settings import get_settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

# An upload's multipart framing and fields besides the file itself.
MULTIPART_ROOM = 64 * 1024
# /readyz reports "not ready" rather than making a prober wait longer than this.
READINESS_TIMEOUT_S = 2.0
# The health routes get threads of their own, so that no load on the requests' database
# threads can slow them down.
_health_threads = anyio.CapacityLimiter(4)


def create_app(dispatcher: Dispatcher, *, lifespan: Lifespan | None = None) -> FastAPI:
    settings = get_settings()
    open_database(settings)
    app = FastAPI(
        title="twotier",
        version="0.1.0",
        description="A small model answers every query; unsure queries escalate to a large one.",
        lifespan=lifespan,
    )
    app.state.dispatcher = dispatcher
    app.state.database = RequestDatabase(
        dispatcher=dispatcher,
        threads=settings.api_database_threads,
        max_waiting=settings.api_max_waiting_requests,
        max_wait_s=settings.api_max_wait_s,
    )
    # An upload is multipart, not JSON, and may be as large as a batch file.
    uploads = frozenset({file_routes.UPLOAD_PATH})
    app.add_middleware(JsonBody, raw_paths=uploads)
    app.add_middleware(Utf8Body, raw_paths=uploads)
    app.add_middleware(
        RequestBodyLimit,
        max_bytes=settings.request_body_limit,
        larger={file_routes.UPLOAD_PATH: settings.batch_file_max_bytes + MULTIPART_ROOM},
    )
    app.add_middleware(AccessLog)
    install_error_handlers(app)
    state_limits_in_schema(app, settings)
    app.include_router(query_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(usage_routes.router)
    app.include_router(webhook_routes.router)
    app.include_router(threshold_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(file_routes.router)
    app.include_router(batch_routes.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (answered by the event loop alone)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The database and the broker are reachable."""
        checks = {"database": False, "broker": False}
        with anyio.move_on_after(READINESS_TIMEOUT_S):
            checks["database"] = await anyio.to_thread.run_sync(
                database_is_reachable, limiter=_health_threads, abandon_on_cancel=True
            )
            checks["broker"] = await anyio.to_thread.run_sync(
                request.app.state.dispatcher.is_reachable,
                limiter=_health_threads,
                abandon_on_cancel=True,
            )
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return JSONResponse(status_code=200 if ready else 503, content=body)

    if settings.api_public_metrics:
        tier_queues = [tier.name for tier in settings.middle_tiers]
        _add_public_metrics(app, broker_url=settings.broker_url, tier_queues=tier_queues)
    return app


def _add_public_metrics(app: FastAPI, *, broker_url: str | None, tier_queues: list[str]) -> None:
    """/metrics on the API's own port, only where ``TWOTIER_API_PUBLIC_METRICS`` turns it on:
    the metrics name tenants and costs (services.api.metrics_port serves them elsewhere)."""
    exposition = metrics.exposition_registry(
        broker_url=broker_url, database=True, tier_queues=tier_queues
    )

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: queries, decisions, costs, queue depths (text format)."""
        text = await anyio.to_thread.run_sync(generate_latest, exposition, limiter=_health_threads)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


def create_default_app() -> FastAPI:
    """The app wired to Celery, for ``uvicorn --factory`` and ``twotier api``."""
    from workers.celery_dispatcher import CeleryDispatcher  # noqa: PLC0415 - keeps services free of Celery

    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    return create_app(CeleryDispatcher())
