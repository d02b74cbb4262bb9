"""workers.pools: a worker's threads follow its model tiers' concurrency, its database pool
follows its threads, and its thread pool stops without waiting for a running model call."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.db import PoolSize
from services.settings import Settings, get_settings
from services.settings.tiers import DEFAULT_LOCAL_BATCH_SIZE, DEFAULT_SERVER_CONCURRENCY
from workers.pools import (
    THREADS_PER_CONNECTION,
    ThreadPool,
    database_pool_for,
    threads_of_queues,
)


def settings_with(
    *, small: int | None, large: int | None, webhooks: int = 8, backend: str = "tgi"
) -> Settings:
    base = get_settings()
    return base.model_copy(
        update={
            "small": base.small.model_copy(
                update={"max_concurrent_calls": small, "backend": backend}
            ),
            "large": base.large.model_copy(
                update={"max_concurrent_calls": large, "backend": backend}
            ),
            "worker_webhook_concurrency": webhooks,
        }
    )


def test_a_model_queue_gets_one_thread_per_call_in_flight() -> None:
    settings = settings_with(small=40, large=6, webhooks=8)
    assert threads_of_queues(settings, ["small"]) == 40
    assert threads_of_queues(settings, ["large"]) == 6


def test_both_model_queues_share_threads_sized_by_the_larger_tier() -> None:
    settings = settings_with(small=40, large=6, webhooks=8)
    assert threads_of_queues(settings, ["small", "large"]) == 40
    assert threads_of_queues(settings_with(small=3, large=50), ["large", "small"]) == 50


def test_other_queues_add_the_webhook_threads() -> None:
    settings = settings_with(small=40, large=6, webhooks=8)
    assert threads_of_queues(settings, ["small", "webhooks"]) == 48
    assert threads_of_queues(settings, ["small", "large", "webhooks", "maintenance"]) == 48


def test_a_worker_without_model_queues_runs_the_webhook_threads_alone() -> None:
    settings = settings_with(small=40, large=6, webhooks=5)
    assert threads_of_queues(settings, ["webhooks"]) == 5
    assert threads_of_queues(settings, ["webhooks", "maintenance"]) == 5
    assert threads_of_queues(settings, []) == 5


def test_unset_concurrency_is_the_backends_default() -> None:
    assert threads_of_queues(settings_with(small=None, large=None), ["small"]) == (
        DEFAULT_SERVER_CONCURRENCY
    )
    local = settings_with(small=None, large=None, backend="local")
    # A local tier's threads fill its batch: the generations it decodes together.
    assert threads_of_queues(local, ["small", "large"]) == DEFAULT_LOCAL_BATCH_SIZE


@given(
    small=st.integers(1, 300),
    large=st.integers(1, 300),
    webhooks=st.integers(1, 50),
    queues=st.sets(st.sampled_from(["small", "large", "webhooks", "maintenance"])),
)
def test_threads_cover_every_tier_taken_and_never_sum_the_tiers(
    small: int, large: int, webhooks: int, queues: set[str]
) -> None:
    settings = settings_with(small=small, large=large, webhooks=webhooks)
    threads = threads_of_queues(settings, queues)
    taken = [calls for name, calls in (("small", small), ("large", large)) if name in queues]
    assert threads >= max(taken, default=0)
    assert threads <= max(taken, default=0) + webhooks
    others = queues - {"small", "large"}
    assert (threads - max(taken, default=0) == webhooks) == bool(others or not taken)


def test_the_documented_example_136_threads_get_9_plus_9_connections() -> None:
    assert database_pool_for(136) == PoolSize(pool_size=9, max_overflow=9)
    defaults = settings_with(small=None, large=None, webhooks=8)
    assert threads_of_queues(defaults, ["small", "large", "webhooks"]) == 136


def test_a_small_worker_still_gets_two_connections() -> None:
    assert database_pool_for(1) == PoolSize(pool_size=2, max_overflow=2)
    assert database_pool_for(32) == PoolSize(pool_size=2, max_overflow=2)
    assert database_pool_for(33) == PoolSize(pool_size=3, max_overflow=3)


@given(st.integers(1, 5000))
def test_one_connection_per_sixteen_threads_and_as_many_again(threads: int) -> None:
    pool = database_pool_for(threads)
    assert pool.max_overflow == pool.pool_size
    assert pool.pool_size >= 2
    assert pool.pool_size * THREADS_PER_CONNECTION >= threads
    assert pool.pool_size == 2 or (pool.pool_size - 1) * THREADS_PER_CONNECTION < threads
    assert pool.pool_size == max(2, math.ceil(threads / THREADS_PER_CONNECTION))


@pytest.fixture
def held() -> Any:
    release = threading.Event()
    yield release
    release.set()  # let the thread left behind finish


def test_stopping_the_pool_leaves_a_running_call_behind_and_drops_queued_ones(
    held: threading.Event,
) -> None:
    started = threading.Event()
    ran_after_stop: list[str] = []

    def model_call() -> None:
        started.set()
        held.wait(timeout=60)

    pool = ThreadPool(limit=1)
    pool.start()
    running = pool.on_apply(model_call, (), {})
    queued = pool.on_apply(lambda: ran_after_stop.append("queued"), (), {})
    assert started.wait(timeout=10)
    began = time.monotonic()
    pool.terminate_job(0)
    pool.stop()
    assert time.monotonic() - began < 5  # it did not wait for the model call
    assert not running.f.done()
    assert queued.f.cancelled()
    held.set()
    running.wait(timeout=10)
    assert running.f.done()
    assert ran_after_stop == []
