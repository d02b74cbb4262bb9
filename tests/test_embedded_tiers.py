"""The embedded default's in-process queue (``twotier serve``) with three tiers: its threads
serve every tier of the settings' cascade, and a query climbs them as on Celery."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantApi, new_tenant_api
from tests.scripted_tgi import ScriptedTGI
from tests.three_tiers import (
    CONFIDENT,
    MIDDLE,
    TENANT_TARGET_RATE,
    Margins,
    embedded_api,
    ledger,
    three_tier_env,
    warm_up,
)


@pytest.fixture(scope="module")
def client(middle_tgi: ScriptedTGI) -> Iterator[TestClient]:
    """The API with the in-process queue for a dispatcher, as `twotier serve` runs them."""
    with embedded_api(three_tier_env(middle_tgi)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tenant(
    client: TestClient, small_tgi: ScriptedTGI, middle_tgi: ScriptedTGI
) -> tuple[TenantApi, Margins]:
    tenant, margins = new_tenant_api(client, target_escalation_rate=TENANT_TARGET_RATE), Margins()
    warm_up(tenant, small_tgi, middle_tgi, lambda text: f"{text} [embedded]", margins)
    return tenant, margins


def test_the_embedded_queue_runs_every_tier(
    tenant: tuple[TenantApi, Margins],
    small_tgi: ScriptedTGI,
    middle_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    api, margins = tenant
    climbs, stops = unique("embedded climbs"), unique("embedded stops")
    for prompt in (climbs, stops):
        small_tgi.script(prompt, margin=margins.below_all())
    middle_tgi.script(climbs, margin=margins.below_all())
    middle_tgi.script(stops, answer="middle it is", margin=CONFIDENT)
    large_tgi.script(climbs, answer="large it is")
    climbed = api.wait_finished(api.submit(climbs)["id"])
    stopped = api.wait_finished(api.submit(stops)["id"])

    assert (climbed["tier"], climbed["answer"]) == ("large", "large it is")
    assert [(step["tier"], step["decision"]) for step in climbed["path"]] == [
        ("small", "below_threshold"), (MIDDLE, "below_threshold"), ("large", "last_tier"),
    ]  # fmt: skip
    assert all(step["margin"] < step["threshold"] for step in climbed["path"][:2])
    assert set(ledger(climbed["id"])) == {"small", MIDDLE, "large"}
    assert (stopped["tier"], stopped["answer"]) == (MIDDLE, "middle it is")
    assert [step["tier"] for step in stopped["path"]] == ["small", MIDDLE]
    assert large_tgi.calls[stops] == 0
