"""Wake the long polls of queries that finish, instead of polling the database for them.

On PostgreSQL a trigger on ``queries`` (migration 0008) sends ``NOTIFY twotier_query_finished,
'<id>'`` when a query's status becomes terminal, whichever process or path finishes it (a tier's
answer, a failure, a cancel); PostgreSQL delivers it only if and when that transaction commits.
A process with waiters keeps one connection LISTENing and wakes the waiters of each id it hears.
Within one process (the embedded default, where SQLite has no NOTIFY) a flush hook on the
session factory sees the change and wakes the waiters once the transaction commits.

A waiter still reads the row itself, and looks again every ``RECHECK_S`` in case a notification
was missed (the listener reconnecting after a database restart), so a long poll never depends
on a notification for its correctness, only for its speed.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, attributes, sessionmaker

from services.db import after_commit
from services.models import TERMINAL_STATUSES, Query

log = structlog.get_logger(__name__)

CHANNEL = "twotier_query_finished"
RECHECK_S = 0.5  # a waiter's own look at the row when no notification came


def watch(factory: sessionmaker[Session]) -> None:
    """Wake this process's waiters on the queries that sessions of ``factory`` finish."""
    event.listen(factory, "before_flush", _wake_once_committed)


def _wake_once_committed(session: Session, _context: Any, _instances: Any) -> None:
    for query in session.dirty:
        if (
            isinstance(query, Query)
            and query.status in TERMINAL_STATUSES
            and attributes.get_history(query, "status").added
        ):
            after_commit(session, functools.partial(waiters.wake, query.id))


class Waiters:
    """The events that long polls of this process wait on, by query id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: defaultdict[uuid.UUID, list[threading.Event]] = defaultdict(list)
        self._listen_url: str | None = None  # the database the current listener listens to
        self._listening = threading.Event()

    @contextmanager
    def waiting_for(
        self, query_id: uuid.UUID, database_url: str | None
    ) -> Iterator[threading.Event]:
        """An event set when ``query_id`` finishes; register it before reading the row, so that
        a finish between the read and the wait is not missed."""
        if database_url is not None:
            self._ensure_listener(database_url)
        finished = threading.Event()
        with self._lock:
            self._events[query_id].append(finished)
        try:
            yield finished
        finally:
            with self._lock:
                events = self._events.get(query_id, [])
                if finished in events:
                    events.remove(finished)
                if not events:
                    self._events.pop(query_id, None)

    def wake(self, query_id: uuid.UUID) -> None:
        with self._lock:
            events = list(self._events.get(query_id, ()))
        for finished in events:
            finished.set()

    def stop_listening(self) -> None:
        """Let the listener end (within a second); the next waiter starts a new one."""
        with self._lock:
            self._listen_url = None
            self._listening.clear()

    def _ensure_listener(self, database_url: str) -> None:
        with self._lock:
            if self._listen_url != database_url:
                self._listen_url = database_url
                self._listening.clear()
                threading.Thread(
                    target=self._listen, args=(database_url,), name="twotier-listen", daemon=True
                ).start()
        # The first waiters wait until LISTEN is in place; later ones find it there.
        self._listening.wait(timeout=2.0)

    def _listen(self, database_url: str) -> None:
        conninfo = make_url(database_url).set(drivername="postgresql")
        while self._listen_url == database_url:
            try:
                with psycopg.connect(
                    conninfo.render_as_string(hide_password=False), autocommit=True
                ) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    while self._listen_url == database_url:
                        for notification in connection.notifies(timeout=1.0):
                            self._wake_payload(notification.payload)
            except psycopg.Error as exc:
                if self._listen_url != database_url:
                    return
                self._listening.clear()
                log.warning("completion.listen_failed", error=str(exc))
                # Waiters fall back to looking at the row every RECHECK_S meanwhile.
                threading.Event().wait(1.0)

    def _wake_payload(self, payload: str) -> None:
        try:
            query_id = uuid.UUID(payload)
        except ValueError:
            return
        self.wake(query_id)


waiters = Waiters()
