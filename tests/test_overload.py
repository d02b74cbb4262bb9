"""A full model server (429 with Retry-After, as TGI answers beyond max_concurrent_requests)
slows the worker down and loses nothing: every query is answered on its tier, the circuit
breaker stays closed, and the worker waited as long as the server asked."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from services.db import session_scope
from services.llm.base import ModelOverloaded, TransientModelError
from services.llm.circuit import CircuitBreaker
from services.models import ModelCall, Query
from tests.celery_workers import CeleryWorker
from tests.conftest import TenantApi
from tests.scripted_tgi import ScriptedTGI

RETRY_AFTER_S = 1
# A worker that, were overload a failure, would open its breaker after 2 and fall back at once.
STRICT = {
    "TWOTIER_CIRCUIT_BREAKER_FAILURES": "2",
    "TWOTIER_CIRCUIT_BREAKER_OPEN_S": "120",
    "TWOTIER_TASK_RETRIES": "0",
    "TWOTIER_MODEL_CALL_ATTEMPTS": "1",
    "TWOTIER_TASK_LEASE_S": "30",
    # Two waits of Retry-After fit; the third sends the query back to the queue.
    "TWOTIER_MODEL_OVERLOAD_PATIENCE_S": "3",
}


@pytest.fixture(scope="module")
def strict_worker(log_dir: Path) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(f"overload-{uuid.uuid4().hex[:6]}", log_dir=log_dir, env=STRICT)
    yield worker.start()
    worker.stop()


def test_a_full_server_slows_the_worker_and_loses_nothing(
    strict_worker: CeleryWorker,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    full = (429, {"Retry-After": str(RETRY_AFTER_S)})
    prompts = [unique(f"busy hour {i}") for i in range(4)]
    for prompt in prompts:
        small_tgi.script(prompt, answer="fine", failures=[full] * 4)
    ids = [tenant.submit(prompt, max_new_tokens=4)["id"] for prompt in prompts]
    queries = [tenant.wait_finished(query_id, timeout=90) for query_id in ids]

    for prompt, query in zip(prompts, queries, strict=True):
        assert query["status"] == "succeeded", query
        # Never handed to the large tier for want of the small one: no breaker opened.
        assert (query["tier"], query["answer"]) == ("small", "fine")
        assert query["decision"] != "small_unavailable"
        assert small_tgi.calls[prompt] == 5
        arrivals = small_tgi.arrivals[prompt]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert min(gaps) >= RETRY_AFTER_S, gaps
    with session_scope() as session:
        charged = session.scalars(select(ModelCall.query_id).where(ModelCall.query_id.in_(ids)))
        assert sorted(map(str, charged)) == sorted(ids)  # each charged once
        attempts = session.scalars(select(Query.delivery_attempts).where(Query.id.in_(ids)))
        assert set(attempts) == {1}  # overload hand-backs are not delivery attempts


def test_overload_never_opens_the_breaker_but_failures_do() -> None:
    breaker = CircuitBreaker(name="small", failures_to_open=2, open_for_s=60)

    def full() -> None:
        raise ModelOverloaded("HTTP 429: Model is overloaded", retry_after_s=1)

    def down() -> None:
        raise TransientModelError("HTTP 502")

    for _ in range(10):
        with pytest.raises(ModelOverloaded):
            breaker.call(full)
    assert not breaker.is_open
    for _ in range(2):
        with pytest.raises(TransientModelError):
            breaker.call(down)
    assert breaker.is_open
