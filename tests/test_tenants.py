"""Tenants and their API keys (services/tenants.py): only a key's hash is stored, a key is
found by its public prefix and checked by its hash, malformed, unknown and revoked keys are
refused alike, and the rules for creating, rotating keys, disabling and updating tenants."""

from __future__ import annotations

import hashlib
import stat
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from services import tenants
from services.db import session_scope
from services.errors import (
    InvalidApiKey,
    InvalidRequest,
    NotFound,
    TenantDisabled,
    TenantNameTaken,
)
from services.models import ApiKey, Tenant


def unique_name() -> str:
    return f"tenant-{uuid.uuid4().hex[:12]}"


def new_tenant(rate: float = 0.3) -> tuple[uuid.UUID, str]:
    with session_scope() as session:
        created = tenants.create_tenant(session, name=unique_name(), target_escalation_rate=rate)
        return created.tenant.id, created.api_key


def authenticate(raw_key: str) -> uuid.UUID:
    with session_scope() as session:
        return tenants.authenticate(session, raw_key).id


KEY_TEXT = st.text(st.characters(blacklist_categories=["Cs"]))


@given(KEY_TEXT, KEY_TEXT)
def test_a_key_matches_exactly_its_own_hash(raw_key: str, other: str) -> None:
    key_hash = tenants.hash_key(raw_key)
    assert tenants.key_matches(raw_key, key_hash)
    assert tenants.key_matches(other, key_hash) == (other == raw_key)
    assert not tenants.key_matches(raw_key, tenants.UNKNOWN_KEY_HASH)


def test_a_new_tenant_gets_one_key_of_the_documented_shape_and_only_its_hash_is_stored() -> None:
    tenant_id, raw_key = new_tenant()
    shape = tenants.KEY_SHAPE.fullmatch(raw_key)
    assert shape is not None
    with session_scope() as session:
        (key,) = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id))
        assert key.prefix == shape["prefix"]
        assert key.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
        assert shape["secret"] not in (key.prefix, key.key_hash)
        assert key.revoked_at is None
    assert authenticate(raw_key) == tenant_id


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_a_blank_tenant_name_is_refused(name: str) -> None:
    with session_scope() as session, pytest.raises(InvalidRequest, match="name"):
        tenants.create_tenant(session, name=name, target_escalation_rate=0.3)


@given(st.floats(allow_nan=True).filter(lambda rate: not 0.0 <= rate <= 1.0))
def test_a_target_rate_outside_zero_to_one_is_refused(rate: float) -> None:
    with session_scope() as session, pytest.raises(InvalidRequest, match="between 0 and 1"):
        tenants.create_tenant(session, name=unique_name(), target_escalation_rate=rate)


def test_the_target_rates_bounds_are_allowed() -> None:
    assert new_tenant(0.0) != new_tenant(1.0)


def test_a_taken_name_conflicts() -> None:
    name = unique_name()
    with session_scope() as session:
        tenants.create_tenant(session, name=name, target_escalation_rate=0.3)
    with session_scope() as session, pytest.raises(TenantNameTaken, match=name):
        tenants.create_tenant(session, name=name, target_escalation_rate=0.3)


def test_concurrent_creates_of_one_name_make_one_tenant() -> None:
    name, attempts = unique_name(), 5
    start = threading.Barrier(attempts)
    outcomes: list[str] = []

    def create() -> None:
        start.wait(timeout=10)
        try:
            with session_scope() as session:
                tenants.create_tenant(session, name=name, target_escalation_rate=0.3)
        except TenantNameTaken:
            outcomes.append("taken")
        else:
            outcomes.append("created")

    threads = [threading.Thread(target=create) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["created"] + ["taken"] * (attempts - 1)


@given(st.text(max_size=120))
def test_anything_not_shaped_like_a_key_is_refused_as_malformed(raw_key: str) -> None:
    if tenants.KEY_SHAPE.fullmatch(raw_key) is None:
        with pytest.raises(InvalidApiKey, match="malformed"):
            authenticate(raw_key)


def test_a_wrong_secret_and_an_unknown_prefix_are_refused_alike() -> None:
    _, raw_key = new_tenant()
    scheme, prefix, secret = raw_key.split("_", 2)
    wrong_secret = f"{scheme}_{prefix}_{'A' * 43}"
    unknown_prefix = f"{scheme}_{'0' * 16}_{secret}"
    messages = set()
    for refused in (wrong_secret, unknown_prefix):
        with pytest.raises(InvalidApiKey) as error:
            authenticate(refused)
        messages.add(str(error.value))
    assert messages == {"the API key is unknown or revoked"}


def test_rotation_issues_a_new_key_and_the_old_one_works_until_revoked() -> None:
    tenant_id, old_key = new_tenant()
    with session_scope() as session:
        tenant = tenants.tenant_by_id(session, tenant_id)
        new_key = tenants.issue_api_key(session, tenant=tenant).raw
    assert authenticate(old_key) == authenticate(new_key) == tenant_id
    with session_scope() as session:
        old, new = tenants.list_keys(session, tenant_id=tenant_id)
        assert new.key_hash == tenants.hash_key(new_key)
        tenants.revoke_key(session, tenant_id=tenant_id, key_id=old.id)
    with pytest.raises(InvalidApiKey, match="unknown or revoked"):
        authenticate(old_key)
    assert authenticate(new_key) == tenant_id


def test_revoking_twice_keeps_the_first_revocation_time() -> None:
    tenant_id, _ = new_tenant()
    with session_scope() as session:
        (key,) = tenants.list_keys(session, tenant_id=tenant_id)
        first = tenants.revoke_key(session, tenant_id=tenant_id, key_id=key.id).revoked_at
    with session_scope() as session:
        again = tenants.revoke_key(session, tenant_id=tenant_id, key_id=key.id).revoked_at
    assert first is not None
    assert again == first


def test_a_tenant_cannot_revoke_or_list_another_tenants_keys() -> None:
    owner, owner_key = new_tenant()
    other, _ = new_tenant()
    with session_scope() as session:
        (key,) = tenants.list_keys(session, tenant_id=owner)
        with pytest.raises(NotFound):
            tenants.revoke_key(session, tenant_id=other, key_id=key.id)
        with pytest.raises(NotFound):
            tenants.revoke_key(session, tenant_id=owner, key_id=uuid.uuid4())
    assert authenticate(owner_key) == owner


def update(tenant_id: uuid.UUID, **changes: Any) -> Tenant:
    with session_scope() as session:
        return tenants.update_tenant(session, tenant_id=tenant_id, changes=changes)


def test_a_disabled_tenants_keys_are_refused_until_it_is_enabled_again() -> None:
    tenant_id, raw_key = new_tenant()
    update(tenant_id, disabled=True)
    with pytest.raises(TenantDisabled):
        authenticate(raw_key)
    update(tenant_id, disabled=None)  # None changes nothing
    with pytest.raises(TenantDisabled):
        authenticate(raw_key)
    update(tenant_id, disabled=False)
    assert authenticate(raw_key) == tenant_id


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_escalation_rate": 1.5}, "between 0 and 1"),
        ({"target_escalation_rate": -0.1}, "between 0 and 1"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute must be at least 1"),
        ({"max_concurrent_queries": 0}, "max_concurrent_queries must be at least 1"),
        ({"budget_per_query": Decimal("-0.01")}, "must not be negative"),
        ({"budget_period": "weekly"}, "period must be one of none, daily, monthly"),
        ({"budget_hard_limit": Decimal(-1)}, "must not be negative"),
        ({"budget_soft_limit": Decimal(-1)}, "must not be negative"),
    ],
)
def test_an_invalid_update_is_refused_and_changes_nothing(
    changes: dict[str, Any], message: str
) -> None:
    tenant_id, _ = new_tenant()
    with pytest.raises(InvalidRequest, match=message):
        update(tenant_id, **changes)
    with session_scope() as session:
        tenant = tenants.tenant_by_id(session, tenant_id)
        assert tenant.target_escalation_rate == 0.3
        assert tenant.rate_limit_per_minute is None
        assert tenant.budget_period == "none"


def test_an_update_sets_limits_and_null_removes_them() -> None:
    tenant_id, _ = new_tenant()
    tenant = update(
        tenant_id,
        target_escalation_rate=0.5,
        rate_limit_per_minute=60,
        max_concurrent_queries=4,
        budget_per_query=Decimal("0.002"),
        budget_period="daily",
        budget_hard_limit=Decimal(10),
    )
    assert (tenant.target_escalation_rate, tenant.rate_limit_per_minute) == (0.5, 60)
    assert (tenant.budget_period, tenant.budget_hard_limit) == ("daily", Decimal(10))
    tenant = update(tenant_id, budget_soft_limit=Decimal(5))
    assert (tenant.budget_period, tenant.budget_hard_limit) == ("daily", Decimal(10))
    assert tenant.budget_soft_limit == Decimal(5)
    tenant = update(
        tenant_id,
        rate_limit_per_minute=None,
        max_concurrent_queries=None,
        budget_per_query=None,
        budget_hard_limit=None,
    )
    assert tenant.rate_limit_per_minute is None
    assert tenant.max_concurrent_queries is None
    assert tenant.budget_per_query is None
    assert (tenant.budget_hard_limit, tenant.budget_soft_limit) == (None, Decimal(5))
    assert tenant.target_escalation_rate == 0.5  # absent: unchanged


def test_budgets_are_set_by_tenant_name() -> None:
    name = unique_name()
    with session_scope() as session:
        tenants.create_tenant(session, name=name, target_escalation_rate=0.3)
        tenant = tenants.set_budget(
            session, name=name, period="monthly", hard_limit=Decimal(3), soft_limit=None
        )
        assert (tenant.budget_period, tenant.budget_hard_limit) == ("monthly", Decimal(3))
        with pytest.raises(NotFound, match="no tenant named"):
            tenants.set_budget(
                session, name=unique_name(), period="none", hard_limit=None, soft_limit=None
            )


def test_an_unknown_tenant_id_is_not_found() -> None:
    with session_scope() as session, pytest.raises(NotFound):
        tenants.tenant_by_id(session, uuid.uuid4())
    with pytest.raises(NotFound):
        update(uuid.uuid4(), disabled=True)
    with session_scope() as session, pytest.raises(NotFound):
        tenants.list_keys(session, tenant_id=uuid.uuid4())


def test_the_demo_key_is_kept_in_a_private_file_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "state" / "demo.key"
    with session_scope() as session:
        first = tenants.ensure_demo_tenant(session, key_file=key_file, target_escalation_rate=0.3)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text() == first + "\n"
    with session_scope() as session:
        again = tenants.ensure_demo_tenant(session, key_file=key_file, target_escalation_rate=0.3)
    assert again == first
    assert authenticate(first) is not None


def test_a_revoked_or_foreign_demo_key_is_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / "demo.key"
    key_file.write_text("tt_0000000000000000_" + "A" * 43 + "\n")
    with session_scope() as session:
        fresh = tenants.ensure_demo_tenant(session, key_file=key_file, target_escalation_rate=0.3)
    assert key_file.read_text() == fresh + "\n"
    with session_scope() as session:
        demo = tenants.authenticate(session, fresh)
        assert demo.name == tenants.DEMO_TENANT
        for key in tenants.list_keys(session, tenant_id=demo.id):
            tenants.revoke_key(session, tenant_id=demo.id, key_id=key.id)
    with session_scope() as session:
        replaced = tenants.ensure_demo_tenant(
            session, key_file=key_file, target_escalation_rate=0.3
        )
    assert replaced != fresh
    assert authenticate(replaced) == demo.id
