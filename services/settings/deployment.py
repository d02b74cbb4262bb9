"""Where a process keeps its data and how its roles run: the database, the broker, the
metrics servers, the worker and api processes."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import BaseModel, Field


class DeploymentSettings(BaseModel):
    """The settings of the deployment (part of ``Settings``)."""

    home: Path = Field(
        default_factory=lambda: platformdirs.user_data_path("twotier"),
        description="Where the embedded default keeps its SQLite database and demo key, beat "
        "its schedule, and each worker or api process its metrics folder.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: platformdirs.user_cache_path("twotier"),
        description="Downloaded and converted local models.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; unset means SQLite in `home` (the embedded default).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://...) for distributed workers; unset means the "
        "in-process queue of `twotier serve`.",
    )
    broker_visibility_timeout_s: int = Field(
        default=300,
        gt=0,
        description="An unacknowledged task (its worker died) is redelivered after this long; "
        "above the longest model call with its retries, or the call's task is delivered "
        "again while it runs (harmless: the lease makes it wait). The recovery sweep finds "
        "a dead worker's queries sooner, by their leases.",
    )
    broker_restore_interval_s: int = Field(
        default=10,
        gt=0,
        description="How often a worker looks for unacknowledged tasks past the visibility "
        "timeout (tasks of workers that died).",
    )

    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of a worker's Prometheus /metrics server (all its pool processes); "
        "unset: no server. Each worker on a host needs its own: Prometheus scrapes known "
        "addresses, so a taken port stops the worker at start rather than moving.",
    )
    api_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the api's Prometheus /metrics server (every process of `twotier "
        "api`, or `twotier serve`), on the api's host; unset: no server. Keep it unpublished: "
        "the metrics name tenants and costs.",
    )
    api_public_metrics: bool = Field(
        default=False,
        description="Also answer /metrics on the API's own (public) port.",
    )
    worker_webhook_concurrency: int = Field(
        default=8,
        ge=1,
        description="Threads `twotier worker` adds for the webhooks and maintenance queues "
        "(all of its threads when it takes no model queue).",
    )
    worker_shutdown_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="On SIGTERM a worker lets running tasks finish for this long, then hands "
        "the rest back to the queue; keep it below the orchestrator's grace period.",
    )

    database_pool_size: int = Field(
        default=20,
        ge=1,
        description="Pooled database connections of an api, beat or `twotier serve` process "
        "(10 more may open under a burst); keep it above `api_database_threads`. A worker sizes "
        "its own pool from its threads.",
    )
    api_database_threads: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Threads per api process that run the requests' database work; a request "
        "holds a thread and a connection only while its statements run, never while it waits.",
    )
    api_max_waiting_requests: int = Field(
        default=2000,
        ge=1,
        description="Requests of one api process that may wait for one of those threads; "
        "beyond, the answer is 503 `overloaded` with Retry-After.",
    )
    api_max_wait_s: float = Field(
        default=15.0,
        gt=0,
        description="A request that waited this long for a thread is answered 503 "
        "`overloaded` with Retry-After instead of waiting on.",
    )
    openai_model_aliases: list[str] = Field(
        default=[],
        description="More names the OpenAI-compatible routes answer to as `model` (JSON list, "
        'e.g. ["gpt-4o-mini"]), besides `twotier`; all of them name the one cascade.',
    )
    openai_wait_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="How long `POST /v1/chat/completions` and `/v1/completions` wait for the "
        "query to finish; then they answer 504 `query_not_finished` with the query's id to poll.",
    )
