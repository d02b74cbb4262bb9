"""A model server that keeps failing: bounded retries, then the configured fallback; and a
circuit breaker that stops calling a dead server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.llm.base import TransientModelError
from services.llm.circuit import CircuitBreaker, CircuitOpen
from services.llm.tgi import TGIBackend
from tests.conftest import TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.test_cascade import UNSURE, ledger, warm_up

ALWAYS_DOWN = [503] * 100


@pytest.mark.usefixtures("worker")
class TestDefaultFallback:
    def test_a_dead_small_tier_escalates_to_the_large_tier(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant()
        prompt = unique("Small is down")
        small_tgi.script(prompt, failures=list(ALWAYS_DOWN))
        large_tgi.script(prompt, answer="Large answered")
        query = tenant.wait_finished(tenant.submit(prompt)["id"])

        assert (query["status"], query["tier"]) == ("succeeded", "large")
        assert query["decision"] == "small_unavailable"
        assert query["answer"] == "Large answered"
        assert query["margin"] is None
        # Three deliveries (TWOTIER_TASK_RETRIES=2), three attempts each inside the call.
        assert small_tgi.calls[prompt] == 9
        assert [call.tier for call in ledger(query["id"])] == ["large"]

    def test_a_dead_large_tier_answers_with_the_small_tiers_answer(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant()
        warm_up(tenant, small_tgi, unique)
        prompt = unique("Large is down")
        small_tgi.script(prompt, answer="Small guess", margin=UNSURE)
        large_tgi.script(prompt, failures=list(ALWAYS_DOWN))
        query = tenant.wait_finished(tenant.submit(prompt)["id"])

        assert (query["status"], query["tier"]) == ("succeeded", "small")
        assert query["decision"] == "large_unavailable"
        assert query["answer"] == "Small guess"
        assert query["escalated"] is True
        assert query["margin"] < query["threshold"]
        assert [call.tier for call in ledger(query["id"])] == ["small"]


def test_the_circuit_opens_after_failures_in_a_row_and_closes_after_a_success(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(name="small", failures_to_open=2, open_for_s=30, clock=lambda: now[0])
    prompt = unique("Dead server")
    small_tgi.script(prompt, answer="back", failures=[503, 503, 503])
    with TGIBackend(
        url=small_tgi.url, model=small_tgi.model_id, timeout_s=5, top_n_tokens=2, attempts=1
    ) as backend:

        def call() -> str:
            return backend.generate(prompt, max_new_tokens=4).text

        for _ in range(2):
            with pytest.raises(TransientModelError, match="503"):
                breaker.call(call)
        assert breaker.is_open
        with pytest.raises(CircuitOpen, match="failed 2 times in a row"):
            breaker.call(call)
        assert small_tgi.calls[prompt] == 2  # the open circuit did not call the server

        now[0] += 31  # the circuit lets calls through again; one more failure reopens it
        with pytest.raises(TransientModelError, match="503"):
            breaker.call(call)
        assert breaker.is_open
        now[0] += 31
        assert breaker.call(call).startswith("back")
        assert not breaker.is_open
        assert small_tgi.calls[prompt] == 4
