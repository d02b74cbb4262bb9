"""How services hand work to workers. The Celery implementation is in workers."""

from __future__ import annotations

import uuid
from typing import Protocol

from services.models import Tier


class Dispatcher(Protocol):
    def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        """Queue the tier's task for the query. Call only after the query row is committed."""

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        """Queue an attempt of the webhook delivery. Call only after its row is committed."""

    def is_reachable(self) -> bool: ...


_process_dispatcher: Dispatcher | None = None


def install(dispatcher: Dispatcher) -> None:
    """Make ``dispatcher`` the one this process sends webhook deliveries through.

    Events are recorded deep inside the services (a query finishing, a budget crossing), far
    from the task or route that holds a dispatcher; each process has exactly one.
    """
    global _process_dispatcher  # noqa: PLW0603 - one per process, set when it starts
    _process_dispatcher = dispatcher


def enqueue_webhook(delivery_id: uuid.UUID) -> None:
    """Queue the delivery if this process has a dispatcher; the relay finds it otherwise."""
    if _process_dispatcher is not None:
        _process_dispatcher.enqueue_webhook(delivery_id)
