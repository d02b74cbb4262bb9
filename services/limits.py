"""Per-tenant request rate and unfinished-query limits, checked at submit.

Both checks run under the tenant row's lock, so concurrent submits of one tenant are counted
one after another and a burst cannot slip past a limit.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.errors import RateLimited
from services.models import TERMINAL_STATUSES, Query, QueryStatus, Tenant, utcnow

WINDOW = timedelta(minutes=1)
UNFINISHED = [status for status in QueryStatus if status not in TERMINAL_STATUSES]


def check_limits(session: Session, *, tenant: Tenant) -> None:
    """Raise RateLimited (with a Retry-After) if this submit would break a limit."""
    if tenant.rate_limit_per_minute is None and tenant.max_concurrent_queries is None:
        return
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    if tenant.max_concurrent_queries is not None:
        unfinished = session.scalar(
            select(func.count())
            .select_from(Query)
            .where(Query.tenant_id == tenant.id, Query.status.in_(UNFINISHED))
        )
        if (unfinished or 0) >= tenant.max_concurrent_queries:
            raise RateLimited(
                f"{unfinished} queries are still unfinished; the limit is "
                f"{tenant.max_concurrent_queries}. Retry when some have finished.",
                retry_after_s=5,
                code="too_many_unfinished_queries",
            )
    if tenant.rate_limit_per_minute is not None:
        now = utcnow()
        in_window = session.scalars(
            select(Query.created_at)
            .where(Query.tenant_id == tenant.id, Query.created_at > now - WINDOW)
            .order_by(Query.created_at)
        ).all()
        if len(in_window) >= tenant.rate_limit_per_minute:
            wait = (in_window[0] + WINDOW - now).total_seconds()
            raise RateLimited(
                f"{tenant.rate_limit_per_minute} queries a minute is this tenant's limit",
                retry_after_s=max(1, math.ceil(wait)),
            )
