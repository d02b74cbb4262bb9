"""The Celery app. Start a pool with ``twotier worker --queues small`` (or large)."""

import os
from typing import Any

import structlog
from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown
from prometheus_client import start_http_server

from services import metrics
from services.db import forget_engines
from services.llm.server_limits import check_before_work
from services.logs import configure_logging
from services.settings import get_settings

log = structlog.get_logger(__name__)

app = Celery("twotier", include=["workers.tasks"])
app.config_from_object("workers.celeryconfig")


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pool children must not share the parent's database connections.
    forget_engines()
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    # The main process serves /metrics; the pool processes that run the tasks write their
    # metrics to PROMETHEUS_MULTIPROC_DIR (set by `twotier worker`), where it reads them.
    port = get_settings().worker_metrics_port
    if port is None:
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning("metrics.no_multiprocess_dir", hint="start workers with `twotier worker`")
    start_http_server(port, registry=metrics.exposition_registry(broker_url=None, database=False))
    log.info("metrics.serving", port=port)


@worker_init.connect
def _check_model_servers(sender: Any, **_: object) -> None:
    # Stops the worker with a message naming the setting when its model servers cannot serve
    # what the settings ask; names the tiers' models after the servers' when none is set.
    queues = list(sender.app.amqp.queues.consume_from)
    check_before_work(queues=queues, tasks_at_once=sender.concurrency)


@worker_process_shutdown.connect
def _forget_process_metrics(pid: int | None = None, **_: object) -> None:
    metrics.mark_process_dead(pid or os.getpid())
