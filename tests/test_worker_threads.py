"""One `twotier worker` process keeps many model calls in flight (a pool of threads), with its
logs, its backends and its leases working from all those threads at once."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from services.models import Tier
from services.runtime import Runtime
from services.settings import get_settings
from tests.celery_workers import CeleryBeat, CeleryWorker
from tests.conftest import TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for

LATENCY_S = 5.0  # longer than the tests' lease (tests.conftest.LEASE_S)


@pytest.fixture(scope="module")
def slow_tgi() -> Iterator[ScriptedTGI]:
    """A small-tier server that takes LATENCY_S to answer each call, as a real model does."""
    server = ScriptedTGI("test/small-4bit")
    server.delay_s = LATENCY_S
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def threaded_worker(log_dir: Path, slow_tgi: ScriptedTGI) -> Iterator[CeleryWorker]:
    """`twotier worker` with its defaults, logging JSON, its small tier the slow server."""
    process = CeleryWorker(
        f"threads-{uuid.uuid4().hex[:6]}",
        log_dir=log_dir,
        env={"TWOTIER_SMALL__URL": slow_tgi.url, "TWOTIER_LOG_JSON": "true"},
    ).start()
    yield process
    process.stop()


def test_one_worker_process_keeps_many_model_calls_in_flight(
    threaded_worker: CeleryWorker,
    slow_tgi: ScriptedTGI,
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.0)
    prompts = [unique(f"many at once {i}") for i in range(80)]
    ids = [tenant.submit(prompt)["id"] for prompt in prompts]

    wait_for(
        lambda: slow_tgi.most_in_flight >= 50,
        timeout=60,
        what=f"50 calls in flight (most so far: {slow_tgi.most_in_flight})",
    )
    finished = [tenant.wait_finished(query_id) for query_id in ids]
    assert all(query["status"] == "succeeded" for query in finished)
    assert psutil.Process(threaded_worker.pid).children() == []  # one process did it all
    assert all(slow_tgi.calls[prompt] == 1 for prompt in prompts)


def test_tasks_log_json_lines_from_the_pool_threads(
    threaded_worker: CeleryWorker,
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    query_id = tenant.submit(unique("logged"))["id"]
    tenant.wait_finished(query_id)

    def model_call_logged() -> bool:
        for line in threaded_worker.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # Celery's own lines, or a line being written
            if entry.get("event") == "model_call" and entry.get("query_id") == query_id:
                return True
        return False

    wait_for(model_call_logged, timeout=10, what="a JSON log line of the query's model call")


def test_a_call_longer_than_the_lease_is_not_made_twice(
    log_dir: Path,
    threaded_worker: CeleryWorker,
    slow_tgi: ScriptedTGI,
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    """The calls take LATENCY_S, the lease (tests.conftest.LEASE_S) less, and the sweep runs
    every second: only renewals keep it from taking the running calls for dead ones."""
    beat = CeleryBeat(log_dir=log_dir).start()
    try:
        tenant = make_tenant(target_escalation_rate=0.0)
        prompts = [unique(f"longer than the lease {i}") for i in range(10)]
        ids = [tenant.submit(prompt)["id"] for prompt in prompts]
        finished = [tenant.wait_finished(query_id) for query_id in ids]
    finally:
        beat.stop()
    assert all(query["status"] == "succeeded" for query in finished)
    assert [slow_tgi.calls[prompt] for prompt in prompts] == [1] * len(prompts)


def test_threads_asking_at_once_share_one_backend_and_one_breaker() -> None:
    runtime = Runtime(get_settings())
    threads = 64
    start = threading.Barrier(threads)
    backends: list[object] = []
    breakers: list[object] = []

    def ask() -> None:
        start.wait()
        backends.append(runtime.backend(Tier.SMALL))
        breakers.append(runtime.breaker(Tier.SMALL))

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show
    try:
        askers = [threading.Thread(target=ask) for _ in range(threads)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert len(backends) == len(breakers) == threads
    assert len({id(backend) for backend in backends}) == 1
    assert len({id(breaker) for breaker in breakers}) == 1
    runtime.close()
