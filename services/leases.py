"""Leases of the model calls that run in this process, kept alive while the calls run.

A query's lease (``queries.lease_expires_at``) says "a worker is calling the model for this
query": a second delivery that finds it waits instead of calling the model again. The lease is
short (``task_lease_s``) and renewed while the call runs, so a lease that has run out really
means that its worker died, and the recovery sweep can queue the query again within seconds
rather than after the longest call a model could take.

One thread per process renews every lease that has been held for a fifth of the lease, in one
UPDATE: a call shorter than that costs no renewal at all, and a hundred long calls cost one
statement every few seconds, not a hundred. The UPDATE skips the rows another transaction has
locked (a call whose answer is being recorded, which sets the lease itself): waiting for them
would make every answer that then locks a row the UPDATE already holds wait in turn. A skipped
lease is renewed at the next tick.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import structlog
from sqlalchemy import select, update

from services.db import session_scope
from services.models import Query, utcnow

log = structlog.get_logger(__name__)


class LeaseKeeper:
    def __init__(self, *, lease_s: float) -> None:
        self.lease_s = lease_s
        self._lock = threading.Lock()
        # query id -> (calls holding it in this process, when its lease was last set)
        self._held: dict[uuid.UUID, tuple[int, float]] = {}
        self._renewer: threading.Thread | None = None
        self._renewer_pid = 0

    @contextmanager
    def held(self, query_id: uuid.UUID) -> Iterator[None]:
        """Keep the query's lease (just taken by its claim) alive while the block runs."""
        with self._lock:
            count, _ = self._held.get(query_id, (0, 0.0))
            self._held[query_id] = (count + 1, time.monotonic())
            self._start_renewer()
        try:
            yield
        finally:
            with self._lock:
                count, renewed = self._held[query_id]
                if count > 1:
                    self._held[query_id] = (count - 1, renewed)
                else:
                    del self._held[query_id]

    def held_now(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self._held)

    def renew_due(self) -> int:
        """Renew the leases held for a fifth of their length or more; returns how many."""
        lease_s = self.lease_s
        now = time.monotonic()
        with self._lock:
            due = sorted(
                query_id
                for query_id, (_, renewed) in self._held.items()
                if now - renewed >= lease_s / 5
            )
        if not due:
            return 0
        # A finished query has no lease to renew; a cancelled one keeps its lease while the
        # call runs, so that its reservation is kept for the call to settle.
        free = (
            select(Query.id)
            .where(Query.id.in_(due), Query.lease_expires_at.is_not(None))
            .with_for_update(skip_locked=True)
        )
        with session_scope() as session:
            renewed = session.scalars(
                update(Query)
                .where(Query.id.in_(free.scalar_subquery()))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
                .returning(Query.id)
                .execution_options(synchronize_session=False)
            ).all()
        with self._lock:
            for query_id in renewed:
                if query_id in self._held:
                    self._held[query_id] = (self._held[query_id][0], now)
        return len(renewed)

    def _start_renewer(self) -> None:
        """Start this process's renewer thread, once (again in a forked child); the caller
        holds the lock."""
        if self._renewer is not None and self._renewer_pid == os.getpid():
            return
        self._renewer_pid = os.getpid()
        self._renewer = threading.Thread(target=self._renew_forever, name="lease-renewer")
        self._renewer.daemon = True
        self._renewer.start()

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self.lease_s / 10)
            try:
                self.renew_due()
            except Exception:  # the database may be away for a moment; try again next tick
                log.exception("lease_renewal_failed")
