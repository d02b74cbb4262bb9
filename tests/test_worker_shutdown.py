"""Scaling a worker pool down loses nothing: `twotier worker` given SIGTERM (what Kubernetes
sends a pod's main process) lets a running task finish for TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S,
then puts it back on its queue at once, where another worker answers it."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from tests.celery_workers import CeleryWorker
from tests.conftest import TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for


def test_sigterm_hands_a_running_task_back_to_the_queue(
    log_dir: Path,
    broker: redis.Redis,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompt = unique("a long answer")
    small_tgi.script(prompt, answer="done", hold=True)
    leaving = CeleryWorker(
        f"leaving-{uuid.uuid4().hex[:6]}",
        log_dir=log_dir,
        queues="small",
        env={"TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S": "1"},
        via_cli=True,
    ).start()
    try:
        query_id = tenant.submit(prompt)["id"]
        assert small_tgi.arrived[prompt].wait(timeout=30)
        assert broker.llen("small") == 0  # the worker holds the message, unacknowledged
        os.kill(leaving.pid, signal.SIGTERM)  # to the main process only, as a kubelet does
        assert leaving.process is not None
        leaving.process.wait(timeout=30)
    finally:
        leaving.stop()
    # Back on the queue at once: not after the broker's visibility timeout, nor by the sweep.
    assert broker.llen("small") == 1
    assert tenant.get(query_id)["status"] == "running"

    small_tgi.release(prompt)
    staying = CeleryWorker(
        f"staying-{uuid.uuid4().hex[:6]}", log_dir=log_dir, queues="small", via_cli=True
    ).start()
    try:
        query = tenant.wait_finished(query_id, timeout=60)
    finally:
        staying.stop()
    assert query["status"] == "succeeded"
    assert query["answer"] == "done"
    wait_for(lambda: broker.llen("small") == 0, timeout=5, what="the queue to drain")
