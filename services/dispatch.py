"""How services hand work to workers. The Celery implementation is in workers."""

from __future__ import annotations

import functools
import uuid
from typing import Protocol

from sqlalchemy.orm import Session

from services.db import after_commit


class Dispatcher(Protocol):
    def enqueue(self, tier: str, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        """Queue the tier's task for the query (a tier's name: small, a middle tier's, large).
        Call only after the query row is committed."""

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        """Queue an attempt of the webhook delivery. Call only after its row is committed."""

    def feed_batches(self) -> None:
        """Run the batch feeder (services/batches/feeder.py) soon; calls close together may
        share one run. Call only after what prompted it is committed."""

    def is_reachable(self) -> bool: ...


_process_dispatcher: Dispatcher | None = None
_SESSION_DISPATCHER = "twotier.dispatcher"


def install(dispatcher: Dispatcher) -> None:
    """Make ``dispatcher`` the one this process's workers send webhook deliveries through.

    Events are recorded deep inside the services (a query finishing, a budget crossing), far
    from the task that holds a dispatcher; a worker process has exactly one.
    """
    global _process_dispatcher  # noqa: PLW0603 - one per process, set when it starts
    _process_dispatcher = dispatcher


def use_in_session(session: Session, dispatcher: Dispatcher) -> None:
    """Send what ``session`` records through ``dispatcher`` (an API request's app's own)."""
    session.info[_SESSION_DISPATCHER] = dispatcher


def enqueue_webhook_after_commit(session: Session, delivery_id: uuid.UUID) -> None:
    """Queue the delivery once ``session`` commits, through the session's dispatcher or the
    process's; with neither, the relay finds the delivery when it is due."""
    dispatcher: Dispatcher | None = session.info.get(_SESSION_DISPATCHER, _process_dispatcher)
    if dispatcher is not None:
        after_commit(session, functools.partial(dispatcher.enqueue_webhook, delivery_id))


def feed_batches_after_commit(session: Session) -> None:
    """Run the batch feeder once ``session`` commits (a batch created or cancelled, a batch's
    query finished), through the session's dispatcher or the process's; with neither, the
    feeder's periodic run comes soon enough."""
    dispatcher: Dispatcher | None = session.info.get(_SESSION_DISPATCHER, _process_dispatcher)
    if dispatcher is not None:
        after_commit(session, dispatcher.feed_batches)
