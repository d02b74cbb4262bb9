"""The FastAPI application."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services import metrics
from services.api import admin, queries, usage, webhooks
from services.api.body_limit import RequestBodyLimit
from services.api.errors import install_error_handlers
from services.db import database_is_reachable
from services.dispatch import Dispatcher
from services.logs import configure_logging
from services.settings import get_settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(dispatcher: Dispatcher, *, lifespan: Lifespan | None = None) -> FastAPI:
    app = FastAPI(
        title="twotier",
        version="0.1.0",
        description="A small model answers every query; unsure queries escalate to a large one.",
        lifespan=lifespan,
    )
    app.state.dispatcher = dispatcher
    app.add_middleware(RequestBodyLimit, max_bytes=get_settings().request_body_limit)
    install_error_handlers(app)
    app.include_router(queries.router)
    app.include_router(admin.router)
    app.include_router(usage.router)
    app.include_router(webhooks.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> JSONResponse:
        """The database and the broker are reachable."""
        checks = {
            "database": database_is_reachable(),
            "broker": request.app.state.dispatcher.is_reachable(),
        }
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return JSONResponse(status_code=200 if ready else 503, content=body)

    exposition = metrics.exposition_registry(broker_url=get_settings().broker_url, database=True)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def prometheus_metrics() -> Response:
        """Prometheus metrics: queries, decisions, costs, queue depths (text format)."""
        return Response(generate_latest(exposition), media_type=CONTENT_TYPE_LATEST)

    return app


def create_default_app() -> FastAPI:
    """The app wired to Celery, for ``uvicorn --factory`` and ``twotier api``."""
    from workers.dispatch import CeleryDispatcher  # noqa: PLC0415 - keeps services free of Celery

    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    return create_app(CeleryDispatcher())
