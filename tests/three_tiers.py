"""A three-tier cascade for the tests: small -> medium -> large, each tier a scripted TGI server.

``three_tier_env`` is the settings of such a run (the session's, plus ``TWOTIER_MIDDLE_TIERS``);
``settings_in_env`` puts them in this process's environment for a module, so that the API, the
workers it starts and the embedded queue all read the same cascade; ``embedded_api`` is the API
with the embedded queue under such settings. ``warm_up`` fills both
scopes' warm-up windows of a tenant, and ``Margins`` hands out margins below every one seen so
far, which escalate at any target rate once the warm-up is over.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

from fastapi.testclient import TestClient
from sqlalchemy import select

from services.api.app import create_app
from services.cli.embedded import InProcessQueue
from services.db import session_scope
from services.models import BudgetPeriod, ModelCall, Tenant
from services.runtime import Runtime
from services.settings import get_settings
from tests.conftest import (
    MIDDLE_MODEL,
    WARMUP,
    TenantApi,
    forget_earlier_work,
    settings_in_env,
)
from tests.scripted_tgi import ScriptedTGI

MIDDLE = "medium"
# The middle tier sets its own target (the tenants below have another), so a test can tell
# which one a decision used.
MIDDLE_TARGET_RATE = 0.5
TENANT_TARGET_RATE = 0.4
CONFIDENT = 0.99


def three_tier_env(middle: ScriptedTGI) -> dict[str, str]:
    """The settings that add the middle tier (the rest are the session's)."""
    tier = {
        "name": MIDDLE,
        "backend": "tgi",
        "url": middle.url,
        "model": MIDDLE_MODEL,
        "price_input_per_mtok": 1.0,
        "price_output_per_mtok": 5.0,
        "timeout_s": 30,
        "target_escalation_rate": MIDDLE_TARGET_RATE,
    }
    return {"TWOTIER_MIDDLE_TIERS": json.dumps([tier])}


@contextmanager
def embedded_api(settings: dict[str, str]) -> Iterator[TestClient]:
    """The API with the embedded queue's workers for a dispatcher, as `twotier serve` runs
    them, under ``settings`` (the session's, with these)."""
    forget_earlier_work()
    with settings_in_env(settings):
        runtime = Runtime(get_settings())
        embedded = InProcessQueue(runtime)
        embedded.start()
        try:
            with TestClient(create_app(embedded)) as client:
                yield client
        finally:
            embedded.stop(timeout_s=30)
            runtime.close()


class Margins:
    """Margins that decrease from one to the next, so each is below every margin a scope has
    seen: with the warm-up over, it escalates at any target rate (its rank is 0)."""

    def __init__(self) -> None:
        self._next = 0.05

    def below_all(self) -> float:
        self._next *= 0.8
        return self._next


def warm_up(
    tenant: TenantApi,
    small: ScriptedTGI,
    middle: ScriptedTGI,
    unique: Callable[[str], str],
    margins: Margins,
) -> None:
    """Fill the small scope's warm-up with confident queries, then the middle scope's with
    queries the small tier escalates and the middle tier answers (its warm-up)."""
    for i in range(WARMUP):
        prompt = unique(f"small warm-up {i}")
        small.script(prompt, answer="fine", margin=0.8 + i / 100)
        assert tenant.wait_finished(tenant.submit(prompt)["id"])["decision"] == "warmup"
    for i in range(WARMUP):
        prompt = unique(f"middle warm-up {i}")
        small.script(prompt, answer="unsure", margin=margins.below_all())
        middle.script(prompt, answer="middling", margin=0.8 + i / 100)
        query = tenant.wait_finished(tenant.submit(prompt)["id"])
        assert query["tier"] == MIDDLE, query
        assert query["path"][1]["decision"] == "warmup"


def ledger(query_id: str) -> dict[str, ModelCall]:
    with session_scope() as session:
        calls = session.scalars(select(ModelCall).where(ModelCall.query_id == query_id)).all()
        return {call.tier: call for call in calls}


def budget_period(tenant_id: uuid.UUID) -> BudgetPeriod:
    with session_scope() as session:
        period = session.scalars(
            select(BudgetPeriod).where(BudgetPeriod.tenant_id == tenant_id)
        ).one()
        session.expunge(period)
        return period


def set_hard_limit(tenant_id: uuid.UUID, limit: Decimal) -> None:
    with session_scope() as session:
        tenant = session.get_one(Tenant, tenant_id)
        tenant.budget_period = "none"
        tenant.budget_hard_limit = limit
