"""How many threads a worker runs, and how many database connections they share.

A model call spends its time waiting on the model server, so one worker process runs its
tasks in a pool of threads (Celery's ``threads`` pool) and keeps as many calls in flight as
the model server takes at once (``TWOTIER_{SMALL,LARGE}__MAX_CONCURRENT_CALLS`` and a middle
tier's ``max_concurrent_calls``, 128 for TGI);
the webhooks and maintenance queues add a few threads of their own.

The threads share one database connection pool. A thread takes a connection only inside the
short transactions around a call (claim the query; record the answer, charge and decision),
never while the model answers, so a few connections serve many threads: one per 16 threads,
and as many again at a peak, e.g. 9 + 9 for 136 threads. A thread that finds them all busy
waits (up to SQLAlchemy's pool_timeout, 30 s); one that still finds none fails its task, and
the query's lease, no longer renewed, runs out and the recovery sweep queues it again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from celery.concurrency.base import BasePool
from celery.concurrency.thread import TaskPool

from services.db import PoolSize
from services.settings import Settings

MODEL_QUEUES = ("small", "large")  # and each middle tier's, named after it
THREADS_PER_CONNECTION = 16


def threads_of_queues(settings: Settings, queues: Iterable[str]) -> int:
    """Threads for a worker taking ``queues``: the most calls any of its model tiers takes at
    once, plus the threads of the other queues."""
    names = set(queues)
    tiers = dict(settings.tiers)
    model_calls = max((tiers[name].calls_in_flight for name in names & set(tiers)), default=0)
    others = names - set(tiers)
    return model_calls + (settings.worker_webhook_concurrency if others or not model_calls else 0)


def database_pool_for(threads: int) -> PoolSize:
    size = max(2, math.ceil(threads / THREADS_PER_CONNECTION))
    return PoolSize(pool_size=size, max_overflow=size)


class ThreadPool(TaskPool):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's threads pool, made to stop the way its prefork pool does.

    On a cold shutdown (SIGTERM past TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S) Celery cancels the
    tasks still running: prefork kills their processes, and their unacknowledged messages go
    back on the queue when the worker disconnects. A thread cannot be killed, and Celery's
    threads pool would wait for it (a model call, up to its timeout) before it lets the worker
    go. This one leaves such threads behind; `twotier worker` then ends the process, so their
    messages are back on the queue at once and their leases run out on their own.
    """

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """Nothing to do: the thread is left behind (see the class)."""

    def on_stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        BasePool.on_stop(self)
