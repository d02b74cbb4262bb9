"""The Celery app. Start a pool with ``twotier worker --queues small`` (or large)."""

import os
import time
from typing import Any

import structlog
from celery import Celery
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.signals import (
    before_task_publish,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from prometheus_client import start_http_server

from services import metrics
from services.db import forget_engines, open_database
from services.llm.server_limits import check_before_work
from services.logs import configure_logging
from services.settings import get_settings
from workers.pools import database_pool_for

log = structlog.get_logger(__name__)

# Every message carries when it was sent, so that the recovery sweep can tell how long the
# oldest message waiting in a queue has waited (workers.celery_dispatcher.CeleryDispatcher).
SENT_AT_HEADER = "twotier_sent_at"

app = Celery("twotier", include=["workers.tasks"])
app.config_from_object("workers.celeryconfig")


@before_task_publish.connect
def _stamp_sent_at(headers: dict[str, object] | None = None, **_: object) -> None:
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


@worker_init.connect
def _configure_worker(sender: object = None, **_: object) -> None:
    # Runs once in the worker's main process, before its pool starts: the threads pool runs
    # the tasks right here, and prefork children inherit what is configured (worker_process_init
    # below starts their database connections afresh).
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    pool = getattr(sender, "pool_cls", None)
    threaded = isinstance(pool, type) and issubclass(pool, ThreadTaskPool)
    tasks_at_once = int(getattr(sender, "concurrency", 1)) if threaded else 1
    open_database(settings, pool=database_pool_for(tasks_at_once))
    _serve_metrics(settings.worker_metrics_port)


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pool children must not share the parent's database connections.
    forget_engines()
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)


def _serve_metrics(port: int | None) -> None:
    # The main process serves /metrics. It runs the tasks of the threads pool itself; prefork
    # pool processes write their metrics to PROMETHEUS_MULTIPROC_DIR (set by `twotier worker`),
    # where it reads them.
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
    check_before_work(get_settings(), queues=queues, tasks_at_once=sender.concurrency)


@worker_process_shutdown.connect
def _forget_process_metrics(pid: int | None = None, **_: object) -> None:
    metrics.mark_process_dead(pid or os.getpid())
