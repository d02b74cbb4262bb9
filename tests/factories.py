"""Small factories for rows that tests of the domain modules start from: a tenant with the
columns a test sets, and queries in any status, written straight to PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from services.db import session_scope
from services.models import Query, QueryStatus, Tenant, utcnow
from services.tenants import create_tenant


def new_tenant(*, target_escalation_rate: float = 0.3, **columns: Any) -> uuid.UUID:
    """A committed tenant with ``columns`` (limits, budgets) set; its id."""
    with session_scope() as session:
        tenant = create_tenant(
            session,
            name=f"tenant-{uuid.uuid4().hex[:10]}",
            target_escalation_rate=target_escalation_rate,
        ).tenant
        for name, value in columns.items():
            setattr(tenant, name, value)
        return tenant.id


def add_query(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    status: QueryStatus = QueryStatus.QUEUED,
    prompt: str = "Is the sky blue?",
    **columns: Any,
) -> Query:
    """A query row of ``tenant_id`` in ``status``, flushed in ``session``."""
    now = utcnow()
    query = Query(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        status=status,
        prompt=prompt,
        max_new_tokens=16,
        created_at=columns.pop("created_at", now),
        updated_at=now,
        **columns,
    )
    session.add(query)
    session.flush()
    return query


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    return session.get_one(Tenant, tenant_id)
