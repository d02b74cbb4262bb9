"""The lease renewer of a worker process (services/leases.py) against a row that another
transaction holds locked, as a call's answer being recorded holds its query."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update

from services.db import session_factory, session_scope
from services.leases import LeaseKeeper
from services.models import Query, utcnow
from tests.conftest import LEASE_S, TenantApi
from tests.waiting import wait_for


def _lease_until(query_id: uuid.UUID) -> datetime | None:
    with session_scope() as session:
        return session.scalar(select(Query.lease_expires_at).where(Query.id == query_id))


def test_a_locked_query_holds_up_no_other_lease(
    make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    locked, free = (uuid.UUID(tenant.submit(unique(f"leased {i}"))["id"]) for i in range(2))
    taken_until = utcnow() + timedelta(seconds=60)
    with session_scope() as session:  # as a claim leaves them
        session.execute(
            update(Query).where(Query.id.in_([locked, free])).values(lease_expires_at=taken_until)
        )
    keeper = LeaseKeeper(lease_s=LEASE_S)
    with session_factory()() as holder, keeper.held(locked), keeper.held(free):
        holder.get_one(Query, locked, with_for_update=True)
        assert wait_for(
            lambda: (_lease_until(free) or taken_until) != taken_until,
            timeout=20,
            what="the free query's lease to be renewed while the other is locked",
        )
        assert _lease_until(locked) == taken_until
        holder.rollback()
        assert wait_for(
            lambda: (_lease_until(locked) or taken_until) != taken_until,
            timeout=20,
            what="the locked query's lease to be renewed once it is free",
        )
