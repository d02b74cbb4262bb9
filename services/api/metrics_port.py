"""The api's Prometheus metrics on a port of their own, away from the public API.

The metrics name tenant ids and costs, so they are not served on the API's port (unless
``TWOTIER_API_PUBLIC_METRICS`` says so) but on ``TWOTIER_API_METRICS_PORT``, which a deployment
leaves unpublished. ``twotier api`` starts this server in its first process before uvicorn
starts its worker processes; they write their metrics to ``PROMETHEUS_MULTIPROC_DIR``, where
this server reads them (``services.metrics.exposition_registry``).
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import start_http_server

from services import metrics
from services.db import open_database
from services.settings import Settings

log = structlog.get_logger(__name__)


def serve_api_metrics(
    settings: Settings, *, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on ``host:port`` from a daemon thread: this process's metrics (or every
    api process's), the queue depths and the unfinished queries (from ``settings``' database)."""
    open_database(settings)
    registry = metrics.exposition_registry(
        broker_url=settings.broker_url,
        database=True,
        tier_queues=[tier.name for tier in settings.middle_tiers],
    )
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics.serving", host=host, port=port)
    return server, thread
