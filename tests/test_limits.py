"""services.limits: a tenant's unfinished-query limit and per-minute rate limit, checked at
submit under the tenant row's lock."""

from __future__ import annotations

import math
import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from services.db import get_engine, session_scope
from services.errors import RateLimited
from services.limits import WINDOW, check_limits
from services.models import TERMINAL_STATUSES, QueryStatus, utcnow
from tests.factories import add_query, get_tenant, new_tenant
from tests.waiting import wait_for


def check(tenant_id: uuid.UUID) -> None:
    with session_scope() as session:
        check_limits(session, tenant=get_tenant(session, tenant_id))


def add_queries(tenant_id: uuid.UUID, count: int, **columns: object) -> None:
    with session_scope() as session:
        for _ in range(count):
            add_query(session, tenant_id, **columns)  # type: ignore[arg-type]


def test_a_tenant_without_limits_is_never_limited() -> None:
    tenant_id = new_tenant()
    add_queries(tenant_id, 30)
    check(tenant_id)


def test_unfinished_queries_up_to_the_limit_are_refused_with_their_own_code() -> None:
    tenant_id = new_tenant(max_concurrent_queries=3)
    add_queries(tenant_id, 2, status=QueryStatus.QUEUED)
    check(tenant_id)  # 2 unfinished: a third may come
    add_queries(tenant_id, 1, status=QueryStatus.ESCALATED)
    with pytest.raises(RateLimited) as refused:
        check(tenant_id)
    assert refused.value.code == "too_many_unfinished_queries"
    assert refused.value.retry_after_s == 5
    assert "3 queries are still unfinished" in str(refused.value)


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_finished_queries_do_not_count_as_unfinished(status: QueryStatus) -> None:
    tenant_id = new_tenant(max_concurrent_queries=1)
    add_queries(tenant_id, 5, status=status)
    check(tenant_id)


@pytest.mark.parametrize("status", [QueryStatus.QUEUED, QueryStatus.RUNNING, QueryStatus.ESCALATED])
def test_every_unfinished_status_counts(status: QueryStatus) -> None:
    tenant_id = new_tenant(max_concurrent_queries=1)
    add_queries(tenant_id, 1, status=status)
    with pytest.raises(RateLimited):
        check(tenant_id)


def test_another_tenants_queries_do_not_count() -> None:
    busy = new_tenant()
    add_queries(busy, 5)
    limited = new_tenant(max_concurrent_queries=1, rate_limit_per_minute=1)
    check(limited)


def test_the_rate_limit_counts_the_last_minute_and_asks_to_wait_for_the_oldest() -> None:
    tenant_id = new_tenant(rate_limit_per_minute=2)
    now = utcnow()
    add_queries(tenant_id, 1, created_at=now - timedelta(seconds=40), status=QueryStatus.SUCCEEDED)
    check(tenant_id)  # one in the window: a second may come
    add_queries(tenant_id, 1, created_at=now - timedelta(seconds=10), status=QueryStatus.SUCCEEDED)
    with pytest.raises(RateLimited) as refused:
        check(tenant_id)
    assert refused.value.code == "rate_limited"
    # The oldest of the window leaves it about 20 s from now.
    assert 18 <= refused.value.retry_after_s <= math.ceil(WINDOW.total_seconds() - 40) + 1
    assert "2 queries a minute" in str(refused.value)


def test_queries_older_than_the_window_do_not_count() -> None:
    tenant_id = new_tenant(rate_limit_per_minute=1)
    add_queries(tenant_id, 10, created_at=utcnow() - WINDOW - timedelta(seconds=5))
    check(tenant_id)


def test_the_retry_after_is_at_least_one_second() -> None:
    tenant_id = new_tenant(rate_limit_per_minute=1)
    # Leaves the window within a fraction of a second: the wait still rounds up to 1 s.
    add_queries(tenant_id, 1, created_at=utcnow() - WINDOW + timedelta(milliseconds=300))
    with pytest.raises(RateLimited) as refused:
        check(tenant_id)
    assert refused.value.retry_after_s == 1


def test_the_unfinished_limit_is_checked_before_the_rate_limit() -> None:
    tenant_id = new_tenant(max_concurrent_queries=1, rate_limit_per_minute=1)
    add_queries(tenant_id, 1, status=QueryStatus.RUNNING)
    with pytest.raises(RateLimited) as refused:
        check(tenant_id)
    assert refused.value.code == "too_many_unfinished_queries"


def lock_waiters() -> int:
    with get_engine().connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(waiting or 0)


def test_a_concurrent_submit_waits_for_the_first_and_then_counts_it() -> None:
    tenant_id = new_tenant(max_concurrent_queries=1)
    second_result: list[BaseException | None] = []

    def second_submit() -> None:
        try:
            check(tenant_id)
            second_result.append(None)
        except RateLimited as exc:
            second_result.append(exc)

    with session_scope() as first:
        check_limits(first, tenant=get_tenant(first, tenant_id))  # takes the tenant's lock
        add_query(first, tenant_id)
        second = threading.Thread(target=second_submit)
        second.start()
        wait_for(lambda: lock_waiters() >= 1, timeout=10, what="the second submit to wait")
        assert second_result == []  # still waiting on the first submit's lock
    second.join(timeout=10)
    assert len(second_result) == 1
    assert isinstance(second_result[0], RateLimited)
    assert second_result[0].code == "too_many_unfinished_queries"
