"""A cascade of three tiers end to end: API -> Redis -> a real Celery worker serving the small,
the middle and the large queue -> three scripted TGI servers -> PostgreSQL. Also the middle
tiers' settings, and the recovery sweep's queue for a query at the middle stage."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from services.api.app import create_app
from services.budgets import worst_case_costs, worst_case_middle
from services.db import session_scope
from services.models import ModelCall, Query, QueryStatus, ThresholdScope, utcnow
from services.recovery import sweep
from services.settings import Settings, get_settings
from tests.celery_workers import CeleryWorker
from tests.conftest import WARMUP, TenantApi, forget_earlier_work, new_tenant_api, settings_in_env
from tests.factories import add_query, new_tenant
from tests.scripted_tgi import ScriptedTGI
from tests.three_tiers import (
    CONFIDENT,
    MIDDLE,
    MIDDLE_MODEL,
    MIDDLE_TARGET_RATE,
    TENANT_TARGET_RATE,
    Margins,
    budget_period,
    ledger,
    set_hard_limit,
    three_tier_env,
    warm_up,
)
from workers.app import app as celery_app
from workers.celery_dispatcher import CeleryDispatcher
from workers.pools import threads_of_queues

MAX_NEW_TOKENS = 16
TIERS = ("small", MIDDLE, "large")


@pytest.fixture(scope="module")
def client(middle_tgi: ScriptedTGI, log_dir: Path) -> Iterator[TestClient]:
    """The API and one `twotier worker` for every tier's queue, both with the three tiers."""
    forget_earlier_work()
    with settings_in_env(three_tier_env(middle_tgi)):
        worker = CeleryWorker(
            f"tiers-{uuid.uuid4().hex[:6]}",
            log_dir=log_dir,
            queues=f"small,{MIDDLE},large,webhooks,maintenance",
        ).start()
        try:
            with TestClient(create_app(CeleryDispatcher())) as test_client:
                yield test_client
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def margins() -> Margins:
    return Margins()


@pytest.fixture(scope="module")
def tenant(
    client: TestClient,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    margins: Margins,
) -> TenantApi:
    """A tenant with a budget (so that reservations are made) whose scopes are warm."""
    tenant = new_tenant_api(client, target_escalation_rate=TENANT_TARGET_RATE)
    set_hard_limit(tenant.tenant_id, Decimal(1000))
    run = uuid.uuid4().hex[:8]
    warm_up(tenant, small_tgi, middle_tgi, lambda text: f"{text} [{run}]", margins)
    return tenant


def tenant_spend(tenant_id: uuid.UUID) -> Decimal:
    with session_scope() as session:
        return Decimal(
            session.scalar(
                select(func.coalesce(func.sum(ModelCall.cost), 0)).where(
                    ModelCall.tenant_id == tenant_id
                )
            )
        )


def test_a_query_climbs_all_three_tiers(
    tenant: TenantApi,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> None:
    prompt = unique("Which tier knows?")
    small_tgi.script(prompt, answer="small guess", margin=margins.below_all())
    middle_tgi.script(prompt, answer="middle guess", margin=margins.below_all())
    large_tgi.script(prompt, answer="the large answer")
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])

    assert query["status"] == "succeeded"
    assert (query["tier"], query["answer"]) == ("large", "the large answer")
    small, middle, large = query["path"]
    assert [step["tier"] for step in query["path"]] == list(TIERS)
    assert [step["model"] for step in query["path"]] == [
        small_tgi.model_id, MIDDLE_MODEL, large_tgi.model_id,
    ]  # fmt: skip
    assert [step["decision"] for step in query["path"]] == [
        "below_threshold", "below_threshold", "last_tier",
    ]  # fmt: skip
    for step in (small, middle):
        assert step["threshold"] is not None
        assert step["margin"] < step["threshold"]
    # Each tier decides in its own scope, with its own history and target.
    assert small["threshold_version"] == 2 * WARMUP + 1
    assert middle["threshold_version"] == WARMUP + 1
    assert small["target_escalation_rate"] == TENANT_TARGET_RATE
    assert middle["target_escalation_rate"] == MIDDLE_TARGET_RATE
    with session_scope() as session:
        pairs = [
            session.get_one(ThresholdScope, step["threshold_scope"]).model_pair
            for step in (small, middle)
        ]
    assert pairs == [
        f"{small_tgi.model_id}->{MIDDLE_MODEL}", f"{MIDDLE}: {MIDDLE_MODEL}->test/large"
    ]  # fmt: skip
    assert (large["margin"], large["threshold"]) == (None, None)
    # The audit of the middle tier's scope shows the middle tier's decision.
    history = tenant.client.get(
        f"/v1/thresholds/{middle['threshold_scope']}/history", headers=tenant.headers
    ).json()
    [audited] = [row for row in history["data"] if row["query"] == query["id"]]
    assert (audited["margin"], audited["threshold"]) == (middle["margin"], middle["threshold"])
    assert (audited["decision"], audited["escalated"]) == ("below_threshold", True)
    assert audited["target_escalation_rate"] == MIDDLE_TARGET_RATE
    # The query's own fields are the small tier's decision, as with two tiers.
    assert (query["margin"], query["threshold"], query["decision"]) == (
        small["margin"], small["threshold"], "below_threshold",
    )  # fmt: skip

    calls = ledger(query["id"])
    assert set(calls) == set(TIERS)
    assert [Decimal(step["cost"]) for step in query["path"]] == [calls[tier].cost for tier in TIERS]
    assert Decimal(query["cost"]["total"]) == sum(call.cost for call in calls.values())
    assert small_tgi.calls[prompt] == middle_tgi.calls[prompt] == large_tgi.calls[prompt] == 1
    period = budget_period(tenant.tenant_id)
    assert period.reserved == 0
    assert period.spent == tenant_spend(tenant.tenant_id)


def test_a_query_the_middle_tier_is_sure_of_stops_there(
    tenant: TenantApi,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> None:
    prompt = unique("The middle knows this one")
    small_tgi.script(prompt, answer="small guess", margin=margins.below_all())
    middle_tgi.script(prompt, answer="the middle answer", margin=CONFIDENT)
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])

    assert (query["status"], query["tier"]) == ("succeeded", MIDDLE)
    assert query["answer"] == "the middle answer"
    assert [(step["tier"], step["decision"]) for step in query["path"]] == [
        ("small", "below_threshold"), (MIDDLE, "at_or_above_threshold"),
    ]  # fmt: skip
    assert query["path"][1]["margin"] >= query["path"][1]["threshold"]
    assert set(ledger(query["id"])) == {"small", MIDDLE}
    assert large_tgi.calls[prompt] == 0
    assert budget_period(tenant.tenant_id).reserved == 0


def worst_path(prompt: str) -> list[Decimal]:
    """The most each tier's call on ``prompt`` can cost, in cascade order."""
    settings = get_settings()
    with session_scope() as session:
        small, large = worst_case_costs(
            session, settings, prompt=prompt, max_new_tokens=MAX_NEW_TOKENS
        )
        query = Query(prompt=prompt, max_new_tokens=MAX_NEW_TOKENS, choices=None)
        middle = worst_case_middle(session, settings, query=query)
    return [small, middle[MIDDLE], large]


def warm_tenant(
    client: TestClient,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> TenantApi:
    tenant = new_tenant_api(client, target_escalation_rate=TENANT_TARGET_RATE)
    warm_up(tenant, small_tgi, middle_tgi, unique, margins)
    return tenant


def test_the_hard_limit_pays_for_the_worst_path_and_no_more(
    client: TestClient,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> None:
    tenant = warm_tenant(client, small_tgi, middle_tgi, margins, unique)
    prompt = unique("worst path")
    limit = sum(worst_path(prompt), Decimal(0))
    set_hard_limit(tenant.tenant_id, limit)  # the worst path of one query, exactly
    small_tgi.script(prompt, margin=margins.below_all(), hold=True)
    middle_tgi.script(prompt, margin=margins.below_all())
    large_tgi.script(prompt, answer="paid for")
    query_id = tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"]
    small_tgi.arrived[prompt].wait(timeout=30)
    # Its whole path is reserved, so nothing is left for another query's small call.
    assert budget_period(tenant.tenant_id).reserved == limit
    refused = client.post(
        "/v1/queries",
        json={"prompt": unique("one too many"), "max_new_tokens": MAX_NEW_TOKENS},
        headers=tenant.headers,
    )
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    small_tgi.release(prompt)
    query = tenant.wait_finished(query_id)

    assert (query["tier"], query["answer"]) == ("large", "paid for")
    assert len(query["path"]) == 3
    period = budget_period(tenant.tenant_id)
    assert period.reserved == 0
    assert period.spent == sum(call.cost for call in ledger(query_id).values()) <= limit


def test_an_escalation_the_budget_cannot_pay_stays_on_the_middle_tier(
    client: TestClient,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> None:
    tenant = warm_tenant(client, small_tgi, middle_tgi, margins, unique)
    prompt = unique("no room for the large tier")
    small_worst, middle_worst, _ = worst_path(prompt)
    limit = small_worst + middle_worst
    set_hard_limit(tenant.tenant_id, limit)
    small_tgi.script(prompt, margin=margins.below_all())
    middle_tgi.script(prompt, answer="the middle's best", margin=margins.below_all())
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])

    assert (query["tier"], query["answer"]) == (MIDDLE, "the middle's best")
    assert [step["decision"] for step in query["path"]] == ["below_threshold", "budget_guard"]
    assert query["path"][1]["margin"] < query["path"][1]["threshold"]
    assert large_tgi.calls[prompt] == 0
    period = budget_period(tenant.tenant_id)
    assert period.reserved == 0
    assert period.spent == sum(call.cost for call in ledger(query["id"]).values()) <= limit


ALWAYS_DOWN = [503] * 100


def test_a_dead_middle_tier_hands_the_query_to_the_large_tier(
    tenant: TenantApi,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> None:
    prompt = unique("the middle is down")
    small_tgi.script(prompt, margin=margins.below_all())
    middle_tgi.script(prompt, failures=list(ALWAYS_DOWN))
    large_tgi.script(prompt, answer="large stepped in")
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])

    assert (query["status"], query["tier"]) == ("succeeded", "large")
    assert query["answer"] == "large stepped in"
    assert [(step["tier"], step["decision"]) for step in query["path"]] == [
        ("small", "below_threshold"), (MIDDLE, "unavailable"), ("large", "last_tier"),
    ]  # fmt: skip
    # Three deliveries (TWOTIER_TASK_RETRIES=2), three attempts each inside the call.
    assert middle_tgi.calls[prompt] == 9
    assert set(ledger(query["id"])) == {"small", "large"}
    assert budget_period(tenant.tenant_id).reserved == 0


def test_a_dead_large_tier_answers_with_the_middle_tiers_answer(
    tenant: TenantApi,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    margins: Margins,
    unique: Callable[[str], str],
) -> None:
    prompt = unique("the large is down")
    small_tgi.script(prompt, answer="small guess", margin=margins.below_all())
    middle_tgi.script(prompt, answer="middle guess", margin=margins.below_all())
    large_tgi.script(prompt, failures=list(ALWAYS_DOWN))
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])

    assert (query["status"], query["tier"]) == ("succeeded", MIDDLE)
    assert (query["answer"], query["decision"]) == ("middle guess", "large_unavailable")
    assert set(ledger(query["id"])) == {"small", MIDDLE}


def test_a_query_stuck_at_the_middle_stage_is_sent_to_the_middle_queue_again(
    tenant: TenantApi,
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    prompt = unique("its middle worker died")
    middle_tgi.script(prompt, answer="recovered", margin=CONFIDENT)
    with session_scope() as session:
        stuck = add_query(
            session,
            tenant.tenant_id,
            status=QueryStatus.ESCALATED,
            stage=1,
            prompt=prompt,
            escalated_at=utcnow(),
            lease_expires_at=utcnow() - timedelta(seconds=1),
        ).id
    celery_app.send_task("twotier.requeue_stuck_queries", queue="maintenance")
    query = tenant.wait_finished(str(stuck))

    assert (query["tier"], query["answer"]) == (MIDDLE, "recovered")
    assert middle_tgi.calls[prompt] == 1
    assert small_tgi.calls[prompt] == large_tgi.calls[prompt] == 0


def test_the_sweep_sends_each_stuck_query_to_its_stage_s_queue() -> None:
    tenant = new_tenant()
    past, long_ago = utcnow() - timedelta(seconds=1), utcnow() - timedelta(minutes=5)
    with session_scope() as session:
        leased = {
            stage: add_query(
                session,
                tenant,
                status=QueryStatus.ESCALATED,
                stage=stage,
                lease_expires_at=past,
            ).id
            for stage in (1, 2)
        }
        # No lease, and sent before the oldest message still waiting in the middle queue:
        # its message was lost.
        lost = add_query(session, tenant, status=QueryStatus.ESCALATED, stage=1)
        lost.updated_at = long_ago
    with session_scope() as session:
        found = dict(
            sweep(
                session,
                stuck_after_s=3,
                waiting_since=dict.fromkeys(TIERS, utcnow()),
                tier_names=TIERS,
            )
        )
    assert found[leased[1]] == MIDDLE
    assert found[leased[2]] == "large"
    assert found[lost.id] == MIDDLE


def middle_tiers_env(*tiers: dict[str, object]) -> str:
    return json.dumps([{"price_input_per_mtok": 1, "price_output_per_mtok": 2, **t} for t in tiers])


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([{"name": "small"}], "a middle tier cannot be named 'small'"),
        ([{"name": "large"}], "a middle tier cannot be named 'large'"),
        # A tier's name is its queue: the webhook and maintenance queues are taken too.
        ([{"name": "webhooks"}], "a middle tier cannot be named 'webhooks'"),
        ([{"name": "maintenance"}], "a middle tier cannot be named 'maintenance'"),
        ([{"name": "mid"}, {"name": "mid"}], "TWOTIER_MIDDLE_TIERS names the tier 'mid' twice"),
        ([{"name": "Not A Slug"}], "String should match pattern"),
    ],
)
def test_middle_tiers_with_a_taken_or_bad_name_are_refused(
    monkeypatch: pytest.MonkeyPatch, tiers: list[dict[str, object]], message: str
) -> None:
    monkeypatch.setenv("TWOTIER_MIDDLE_TIERS", middle_tiers_env(*tiers))
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_middle_tiers_are_read_from_json_in_cascade_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TWOTIER_MIDDLE_TIERS",
        middle_tiers_env({"name": "eight-b"}, {"name": "thirty-b", "target_escalation_rate": 0.2}),
    )
    settings = Settings()
    assert settings.tier_names == ("small", "eight-b", "thirty-b", "large")
    assert settings.stage_target_rate(1) is None
    assert settings.stage_target_rate(2) == 0.2
    assert settings.model_pair_at(0) == f"{settings.small.model}->{settings.tier('eight-b').model}"
    assert settings.model_pair_at(1) == f"eight-b: {settings.tier('eight-b').model}->" + (
        settings.tier("thirty-b").model
    )


def test_a_middle_tier_served_over_http_needs_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOTIER_MIDDLE_TIERS", middle_tiers_env({"name": "mid", "backend": "tgi"}))
    with pytest.raises(ValidationError, match=r"TWOTIER_MIDDLE_TIERS \(mid: url\) must be set"):
        Settings()


def test_a_middle_tier_s_worker_runs_a_thread_per_call_its_server_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tier = {"name": "mid", "backend": "tgi", "url": "http://127.0.0.1:1", "max_concurrent_calls": 7}
    monkeypatch.setenv("TWOTIER_MIDDLE_TIERS", middle_tiers_env(tier))
    settings = Settings()
    assert threads_of_queues(settings, ["mid"]) == 7
    assert threads_of_queues(settings, ["mid", "webhooks"]) == 7 + (
        settings.worker_webhook_concurrency
    )


def test_the_api_schema_describes_the_path(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["QueryView"]["properties"]["path"]["items"] == {
        "$ref": "#/components/schemas/PathStep"
    }
    assert {"tier", "model", "margin", "threshold", "threshold_version", "decision", "cost"} <= set(
        schemas["PathStep"]["properties"]
    )


def test_stages_naming_the_same_models_keep_histories_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a demo runs one local model on every tier: without the tier's name in the scope, the
    # middle tier's decision on a query would land in the small tier's history a second time.
    for tier in ("SMALL", "LARGE"):
        monkeypatch.setenv(f"TWOTIER_{tier}__MODEL", "one-model")
    monkeypatch.setenv(
        "TWOTIER_MIDDLE_TIERS", middle_tiers_env({"name": "mid", "model": "one-model"})
    )
    settings = Settings()
    assert len({settings.model_pair_at(0), settings.model_pair_at(1)}) == 2
