"""Prometheus metrics of the api and the workers, and what exposes them.

The metrics live in prometheus-client's default registry. A process tree that forks (the
Celery prefork pool, ``twotier api --workers N``) shares them through files in
``PROMETHEUS_MULTIPROC_DIR``, which ``twotier worker`` and ``twotier api`` set before this
module is imported; the scraped process then reads every child's file.

Counters that describe a database change are counted when its transaction commits
(``services.db.after_commit``), so a rolled-back attempt that a redelivery repeats is counted once.
Label values are ids and enum values, never free text, except the task label that tenants choose
(it is part of a threshold scope).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

import redis
import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.db import after_commit, session_scope
from services.models import Query, QueryStatus
from services.settings.tiers import SERVICE_QUEUES
from services.threshold_window import DriftReading

log = structlog.get_logger(__name__)

# Every Celery queue the deployment runs; the api reports the length of each.
QUEUES = ("small", "large", *SERVICE_QUEUES)
UNFINISHED = (QueryStatus.QUEUED, QueryStatus.RUNNING, QueryStatus.ESCALATED)
# What the webhook worker reports per delivery attempt.
WEBHOOK_OUTCOMES = ("delivered", "retrying", "dead_lettered")

QUERIES = Counter(
    "twotier_queries",
    "Queries that reached a status, by the tier they were at (queued: small; escalated: large; "
    "succeeded: the tier that answered; failed and cancelled: the tier they were waiting for).",
    ["status", "tier"],
)
DECISIONS = Counter(
    "twotier_escalation_decisions",
    "Small-tier decisions per threshold scope; the realised escalation rate is "
    'rate(escalated="true") / rate(all).',
    ["tenant", "model_pair", "task", "decision", "escalated"],
)
THRESHOLD = Gauge(
    "twotier_threshold",
    "The scope's threshold at its latest decision after the warm-up.",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
THRESHOLD_VERSION = Gauge(
    "twotier_threshold_version",
    "Margins in the scope's history at its latest decision (|H|).",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
TARGET_ESCALATION_RATE = Gauge(
    "twotier_target_escalation_rate",
    "The escalation rate the scope's latest decision aimed at (p, or p(B) under a budget per "
    "query).",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
REALISED_ESCALATION_RATE = Gauge(
    "twotier_threshold_realised_escalation_rate",
    "Share of the scope's last N decisions (TWOTIER_THRESHOLD_WINDOW) that escalated; set once "
    "N decisions follow the warm-up.",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
WINDOW_TARGET_RATE = Gauge(
    "twotier_threshold_window_target_rate",
    "The mean target escalation rate of the same N decisions.",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
MARGIN_PSI = Gauge(
    "twotier_threshold_margin_psi",
    "Population stability index of the scope's last N margins against its long-run sketch "
    "(0.1: some shift, 0.25: a major one).",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
DRIFTING = Gauge(
    "twotier_threshold_drifting",
    "1 while the scope is in drift (TWOTIER_THRESHOLD_DRIFT_*), else 0.",
    ["tenant", "model_pair", "task"],
    multiprocess_mode="mostrecent",
)
DRIFT_DETECTED = Counter(
    "twotier_threshold_drift_detected",
    "Times a scope moved into drift (each also sends a threshold.drift_detected webhook).",
    ["tenant", "model_pair", "task"],
)
MARGIN_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
MARGIN = Histogram(
    "twotier_margin",
    "First-token margins of the small tier.",
    ["model_pair", "kind"],
    # Probability margins lie in [0, 1]; logit margins (TWOTIER_MARGIN_KIND=logit) run past 1.
    buckets=(*MARGIN_BUCKETS, 2.0, 5.0, 10.0),
)
MODEL_CALL_SECONDS = Histogram(
    "twotier_model_call_seconds",
    "Duration of one model call, its retries inside the call included.",
    ["tier", "model", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)
COST = Counter(
    "twotier_cost",
    "Money charged for model calls, in the price table's currency.",
    ["tenant", "tier", "model"],
)
TOKENS = Counter(
    "twotier_tokens",
    "Tokens of the charged model calls.",
    ["tenant", "tier", "direction"],
)
BUDGET_REJECTIONS = Counter(
    "twotier_budget_rejections",
    "Submits refused with 402 budget_exceeded.",
    ["tenant"],
)
WEBHOOK_DELIVERIES = Counter(
    "twotier_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retrying, dead_lettered).",
    ["outcome"],
)
for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)


def count_query(session: Session, status: QueryStatus, tier: str) -> None:
    """Count a query reaching ``status`` at ``tier`` once the transaction commits."""
    after_commit(session, QUERIES.labels(status=status.value, tier=str(tier)).inc)


def observe_decision(
    *,
    tenant_id: str,
    model_pair: str,
    task: str | None,
    decision: str,
    escalated: bool,
    threshold: float | None,
    threshold_version: int,
    target_escalation_rate: float,
) -> None:
    scope = {"tenant": tenant_id, "model_pair": model_pair, "task": task or ""}
    DECISIONS.labels(**scope, decision=decision, escalated=str(escalated).lower()).inc()
    if threshold is not None:
        THRESHOLD.labels(**scope).set(threshold)
    THRESHOLD_VERSION.labels(**scope).set(threshold_version)
    TARGET_ESCALATION_RATE.labels(**scope).set(target_escalation_rate)


def observe_drift(
    *,
    tenant_id: str,
    model_pair: str,
    task: str | None,
    reading: DriftReading | None,
    drifting: bool,
    detected: bool,
) -> None:
    scope = {"tenant": tenant_id, "model_pair": model_pair, "task": task or ""}
    DRIFTING.labels(**scope).set(int(drifting))
    if reading is not None:
        REALISED_ESCALATION_RATE.labels(**scope).set(reading.realised_escalation_rate)
        WINDOW_TARGET_RATE.labels(**scope).set(reading.target_escalation_rate)
        MARGIN_PSI.labels(**scope).set(reading.psi)
    if detected:
        DRIFT_DETECTED.labels(**scope).inc()


def observe_margin(margin: float, *, model_pair: str, kind: str) -> None:
    MARGIN.labels(model_pair=model_pair, kind=kind).observe(margin)


def observe_model_call(*, tier: str, model: str, outcome: str, seconds: float) -> None:
    MODEL_CALL_SECONDS.labels(tier=str(tier), model=model, outcome=outcome).observe(seconds)


def count_cost(
    session: Session,
    *,
    tenant_id: str,
    tier: str,
    model: str,
    cost: Decimal,
    input_tokens: int,
    output_tokens: int,
) -> None:
    """Count a charged call once the ledger row commits."""

    def count() -> None:
        COST.labels(tenant=tenant_id, tier=str(tier), model=model).inc(float(cost))
        TOKENS.labels(tenant=tenant_id, tier=str(tier), direction="input").inc(input_tokens)
        TOKENS.labels(tenant=tenant_id, tier=str(tier), direction="output").inc(output_tokens)

    after_commit(session, count)


def count_budget_rejection(tenant_id: str) -> None:
    BUDGET_REJECTIONS.labels(tenant=tenant_id).inc()


def count_webhook_delivery(outcome: str) -> None:
    """One webhook delivery attempt: ``delivered``, ``retrying`` or ``dead_lettered``."""
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


class QueueDepthCollector(Collector):
    """Length of each Celery queue's Redis list, read at scrape time (what KEDA scales on)."""

    def __init__(self, broker_url: str, *, tier_queues: Sequence[str] = ()) -> None:
        """``tier_queues``: the middle tiers' queues, besides the fixed ones."""
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
        self._queues = (*QUEUES, *tier_queues)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "twotier_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        up = GaugeMetricFamily("twotier_broker_up", "1 if the broker answered this scrape.")
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue in self._queues:
                    pipe.llen(queue)
                lengths = pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics.broker_unreachable", error=str(exc))
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, length in zip(self._queues, lengths, strict=True):
                depth.add_metric([queue], int(length))
        yield depth
        yield up


class UnfinishedQueriesCollector(Collector):
    """Queries not yet finished, by status, counted at scrape time (an index covers it)."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "twotier_unfinished_queries", "Queries not yet finished, by status.", labels=["status"]
        )
        counts = dict.fromkeys(UNFINISHED, 0)
        try:
            with session_scope() as session:
                rows = session.execute(
                    select(Query.status, func.count())
                    .where(Query.status.in_(UNFINISHED))
                    .group_by(Query.status)
                ).all()
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            log.warning("metrics.database_unreachable", error=str(exc))
            return
        counts.update({QueryStatus(status): count for status, count in rows})
        for status, count in counts.items():
            family.add_metric([status.value], count)
        yield family


class _ProcessMetrics(Collector):
    """This process's metrics, or those of every process in the multiprocess folder."""

    def __init__(self) -> None:
        self._registry: CollectorRegistry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def exposition_registry(
    *, broker_url: str | None, database: bool, tier_queues: Sequence[str] = ()
) -> CollectorRegistry:
    """What a ``/metrics`` endpoint serves: the process's metrics, and the queue depths (the
    middle tiers' ``tier_queues`` too) and unfinished queries when asked (the api reports
    those; one reporter is enough)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        registry.register(QueueDepthCollector(broker_url, tier_queues=tier_queues))
    if database:
        registry.register(UnfinishedQueriesCollector())
    return registry


def mark_process_dead(pid: int) -> None:
    """Drop a finished pool process's live gauges (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
