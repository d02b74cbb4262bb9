"""How services hand a query to a tier's workers. The Celery implementation is in workers."""

from __future__ import annotations

import uuid
from typing import Protocol

from services.models import Tier


class Dispatcher(Protocol):
    def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        """Queue the tier's task for the query. Call only after the query row is committed."""

    def is_reachable(self) -> bool: ...
