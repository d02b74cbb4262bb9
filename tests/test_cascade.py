"""The cascade end to end: API -> Redis -> real Celery worker -> scripted TGI -> Postgres."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from sqlalchemy import select

from services.db import session_scope
from services.models import ModelCall
from tests.celery_workers import CeleryWorker
from tests.conftest import WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("worker")

CONFIDENT, UNSURE = 0.9, 0.02


def ledger(query_id: str) -> list[ModelCall]:
    with session_scope() as session:
        return list(session.scalars(select(ModelCall).where(ModelCall.query_id == query_id)).all())


def warm_up(
    tenant: TenantApi, small_tgi: ScriptedTGI, unique: Callable[[str], str], **body: str
) -> None:
    """Fill the warm-up window of a scope with confident queries of distinct margins."""
    for i in range(WARMUP):
        prompt = unique(f"warm-up {i}")
        small_tgi.script(prompt, answer="fine", margin=0.8 + i / 100)
        finished = tenant.wait_finished(tenant.submit(prompt, **body)["id"])
        assert finished["decision"] == "warmup"


def test_confident_query_is_answered_by_the_small_tier(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    warm_up(tenant, small_tgi, unique)
    prompt = unique("Is the sky blue?")
    small_tgi.script(prompt, answer="Yes it is", margin=0.95)
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=16)["id"])

    assert query["status"] == "succeeded"
    assert query["tier"] == "small"
    assert query["answer"] == "Yes it is"
    assert query["escalated"] is False
    assert query["decision"] == "at_or_above_threshold"
    assert query["margin"] == pytest.approx(0.95)
    assert query["threshold"] is not None
    assert query["margin"] >= query["threshold"]
    assert query["threshold_version"] == WARMUP + 1
    assert large_tgi.calls[prompt] == 0
    [call] = ledger(query["id"])
    assert (call.tier, call.model, call.output_tokens) == ("small", "test/small-4bit", 3)
    assert call.input_tokens == len(prompt.split())
    assert Decimal(query["cost"]["total"]) == call.cost > 0


def test_unsure_query_is_escalated_and_answered_by_the_large_tier(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.3)
    warm_up(tenant, small_tgi, unique, task="trivia")
    prompt = unique("Who wrote the Voynich manuscript?")
    small_tgi.script(prompt, answer="Maybe Bacon", margin=UNSURE)
    large_tgi.script(prompt, answer="Unknown author")
    query = tenant.wait_finished(tenant.submit(prompt, task="trivia")["id"])

    assert query["status"] == "succeeded"
    assert query["tier"] == "large"
    assert query["answer"] == "Unknown author"
    assert query["escalated"] is True
    assert query["decision"] == "below_threshold"
    assert query["margin"] < query["threshold"]
    stamps = query["timestamps"]
    assert stamps["small_finished_at"] <= stamps["escalated_at"] <= stamps["large_started_at"]
    assert stamps["large_started_at"] <= stamps["finished_at"]
    calls = {call.tier: call for call in ledger(query["id"])}
    assert set(calls) == {"small", "large"}
    assert calls["large"].model == "test/large"
    assert Decimal(query["cost"]["large"]) == calls["large"].cost
    assert Decimal(query["cost"]["total"]) == calls["small"].cost + calls["large"].cost
    assert small_tgi.calls[prompt] == large_tgi.calls[prompt] == 1


def test_warm_up_never_escalates(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.99)  # at 1 the small model is skipped
    prompts = [unique(f"very unsure {i}") for i in range(WARMUP)]
    for i, prompt in enumerate(prompts):
        small_tgi.script(prompt, margin=0.01 + i / 1000)
    ids = [tenant.submit(prompt)["id"] for prompt in prompts]
    finished = [tenant.wait_finished(query_id) for query_id in ids]
    assert all(q["tier"] == "small" and q["decision"] == "warmup" for q in finished)
    assert sorted(q["threshold_version"] for q in finished) == list(range(1, WARMUP + 1))
    assert all(large_tgi.calls[prompt] == 0 for prompt in prompts)


def test_transient_model_errors_are_retried(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    prompt = unique("flaky server")
    small_tgi.script(prompt, answer="eventually", failures=[503, 429, 503, 500])
    query = tenant.wait_finished(tenant.submit(prompt)["id"])
    assert query["status"] == "succeeded"
    assert query["answer"] == "eventually"
    assert small_tgi.calls[prompt] == 5
    assert len(ledger(query["id"])) == 1


def test_a_request_the_model_server_rejects_fails_with_its_reason(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    prompt = unique("write a very long essay")
    rejected = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=4000)["id"])
    assert rejected["status"] == "failed"
    assert rejected["error"]["code"] == "model_error"
    assert "HTTP 422" in rejected["error"]["message"]
    assert "max_new_tokens" in rejected["error"]["message"]
    assert small_tgi.calls[prompt] == 1  # a validation error is not retried
    assert ledger(rejected["id"]) == []

    # A server without top-n support gives no first-token candidates: fail loudly, do not guess.
    blind = unique("no top tokens")
    small_tgi.script(blind, answer="ok", first_token=[])
    failed = tenant.wait_finished(tenant.submit(blind)["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "margin_unavailable"
    assert "max-top-n-tokens" in failed["error"]["message"]
    assert len(ledger(failed["id"])) == 1  # the call happened and is paid for


def test_cancelling_a_running_query_stops_it_and_charges_the_call_once(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    prompt = unique("long generation")
    small_tgi.script(prompt, answer="never shown", hold=True)
    query_id = tenant.submit(prompt)["id"]
    small_tgi.arrived[prompt].wait(timeout=30)
    assert tenant.get(query_id)["status"] == "running"
    cancelled = tenant.client.delete(f"/v1/queries/{query_id}", headers=tenant.headers)
    assert cancelled.status_code == 200
    small_tgi.release(prompt)
    wait_for(lambda: len(ledger(query_id)) == 1, timeout=30, what="the paid call to be recorded")
    query = tenant.get(query_id)
    assert query["status"] == "cancelled"
    assert query["answer"] is None
    assert Decimal(query["cost"]["small"]) > 0


def test_worker_answers_queries_submitted_before_it_started(
    worker: CeleryWorker, make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    ids = [tenant.submit(unique(f"batch {i}"))["id"] for i in range(20)]
    assert all(tenant.wait_finished(query_id)["status"] == "succeeded" for query_id in ids)
    assert worker.process is not None
    assert worker.process.poll() is None


def test_wait_returns_the_answer_in_the_submit_response(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    prompt = unique("answer me right away")
    small_tgi.script(prompt, answer="right away")
    response = tenant.client.post(
        "/v1/queries", params={"wait": 30}, json={"prompt": prompt}, headers=tenant.headers
    )
    assert response.status_code == 202
    assert response.json()["status"] == "succeeded"
    assert response.json()["answer"] == "right away"

    held = unique("still thinking")
    small_tgi.script(held, hold=True)
    pending = tenant.client.post(
        "/v1/queries", params={"wait": 0.3}, json={"prompt": held}, headers=tenant.headers
    ).json()
    assert pending["status"] in {"queued", "running"}
    small_tgi.release(held)
    finished = tenant.client.get(
        f"/v1/queries/{pending['id']}", params={"wait": 30}, headers=tenant.headers
    ).json()
    assert finished["status"] == "succeeded"
    assert (
        tenant.client.get(
            f"/v1/queries/{pending['id']}", params={"wait": 61}, headers=tenant.headers
        ).status_code
        == 422
    )


def test_choices_take_the_margin_over_the_labels_and_answer_with_one(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.5)
    labels = ["positive", "negative"]
    warm_up(tenant, small_tgi, unique, task="sentiment")
    clear = unique("Review: loved every minute. Positive or negative?")
    small_tgi.script(clear, answer="Positive, clearly", first_token=[
        (" Positive", 0.70), ("positive", 0.25), (" Negative", 0.02), (" The", 0.01),
    ])  # fmt: skip
    confident = tenant.wait_finished(
        tenant.submit(clear, task="sentiment", choices=labels, max_new_tokens=3)["id"]
    )
    assert confident["answer"] == "positive"
    assert confident["choices"] == labels
    assert confident["margin"] == pytest.approx(0.95 - 0.02)
    assert confident["tier"] == "small"

    torn = unique("Review: it was fine I guess. Positive or negative?")
    small_tgi.script(torn, answer="Negative", first_token=[
        (" Negative", 0.34), (" Positive", 0.33), (" It", 0.2),
    ])  # fmt: skip
    large_tgi.script(torn, answer="Negative overall", first_token=[
        (" Negative", 0.8), (" Positive", 0.1),
    ])  # fmt: skip
    escalated = tenant.wait_finished(
        tenant.submit(torn, task="sentiment", choices=labels, max_new_tokens=3)["id"]
    )
    assert escalated["tier"] == "large"
    assert escalated["answer"] == "negative"
    assert escalated["margin"] == pytest.approx(0.01)


def test_choices_must_be_distinct_labels(make_tenant: Callable[..., TenantApi]) -> None:
    tenant = make_tenant()
    for choices in (["only"], ["Yes", " yes "], ["ok", ""], ["x" * 101, "y"]):
        response = tenant.client.post(
            "/v1/queries", json={"prompt": "?", "choices": choices}, headers=tenant.headers
        )
        assert response.status_code == 422, choices
        assert response.json()["error"]["code"] == "invalid_request"
