"""The baseline of bench/pipeline.py: a bare Celery task round trip on the same Redis.

A worker runs it with ``celery -A bare_celery worker`` (bench/ on PYTHONPATH); the client
sends ``noop`` and waits for its result through the Redis result backend.
"""

from __future__ import annotations

import os

from celery import Celery

BROKER_URL = os.environ["TWOTIER_BROKER_URL"]

app = Celery("bare", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    task_default_queue="bare",
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    # The same delivery policy as twotier's tasks, so the two measure the same kind of worker.
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bare.noop")
def noop(query_id: str) -> str:
    return query_id
