"""Wake the long polls of queries that finish, instead of polling the database for them.

On PostgreSQL a trigger on ``queries`` (migration 0008) sends ``NOTIFY twotier_query_finished,
'<id>'`` when a query's status becomes terminal, whichever process or path finishes it (a tier's
answer, a failure, a cancel); PostgreSQL delivers it only if and when that transaction commits.
A process with waiters keeps one connection LISTENing and wakes the waiters of each id it hears.
Within one process (the embedded default, where SQLite has no NOTIFY) the query lifecycle
(services/lifecycle.py), which finishes every query, wakes the waiters once that transaction
commits.

A waiter costs no thread and no connection: it is a callback in a dictionary. The API's long
polls register an asyncio event's setter (services.api.long_poll). Whenever the listener
(re)connects, every waiter is woken to read its row once, so a notification lost while the
listener was down delays no one; while no listener is connected, waiters look at their row
every ``RECHECK_S``.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger(__name__)

CHANNEL = "twotier_query_finished"
RECHECK_S = 0.5  # a waiter's own look at the row while no listener is connected
LISTENING_RECHECK_S = 15.0  # the same while one is: notifications carry the news

Wake = Callable[[], None]


class Waiters:
    """The wake-up callbacks of this process's long polls, by query id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wakes: defaultdict[uuid.UUID, list[Wake]] = defaultdict(list)
        self._listen_url: str | None = None  # the database the current listener listens to
        self._listening = threading.Event()

    @property
    def recheck_s(self) -> float:
        """How long a waiter may go without looking at its row itself."""
        return LISTENING_RECHECK_S if self._listening.is_set() else RECHECK_S

    def is_listening_to(self, database_url: str) -> bool:
        return self._listen_url == database_url and self._listening.is_set()

    @contextmanager
    def registered(self, query_id: uuid.UUID, wake: Wake) -> Iterator[None]:
        """Call ``wake`` (from any thread) when ``query_id`` finishes; register before
        reading the row, so that a finish between the read and the wait is not missed."""
        with self._lock:
            self._wakes[query_id].append(wake)
        try:
            yield
        finally:
            with self._lock:
                wakes = self._wakes.get(query_id, [])
                if wake in wakes:
                    wakes.remove(wake)
                if not wakes:
                    self._wakes.pop(query_id, None)

    @contextmanager
    def waiting_for(
        self, query_id: uuid.UUID, database_url: str | None
    ) -> Iterator[threading.Event]:
        """A thread's way to wait: an event set when ``query_id`` finishes."""
        if database_url is not None:
            self.ensure_listener(database_url)
        finished = threading.Event()
        with self.registered(query_id, finished.set):
            yield finished

    def count(self, query_id: uuid.UUID) -> int:
        """How many waiters ``query_id`` has."""
        with self._lock:
            return len(self._wakes.get(query_id, ()))

    def wake(self, query_id: uuid.UUID) -> None:
        with self._lock:
            wakes = list(self._wakes.get(query_id, ()))
        for wake in wakes:
            wake()

    def wake_all(self) -> None:
        with self._lock:
            wakes = [wake for each in self._wakes.values() for wake in each]
        for wake in wakes:
            wake()

    def stop_listening(self) -> None:
        """Let the listener end (within a second); the next waiter starts a new one."""
        with self._lock:
            self._listen_url = None
            self._listening.clear()

    def ensure_listener(self, database_url: str, *, wait_s: float = 2.0) -> None:
        """Start LISTENing to ``database_url`` unless already; wait up to ``wait_s`` for it."""
        with self._lock:
            if self._listen_url != database_url:
                self._listen_url = database_url
                self._listening.clear()
                threading.Thread(
                    target=self._listen, args=(database_url,), name="twotier-listen", daemon=True
                ).start()
        self._listening.wait(timeout=wait_s)

    def _listen(self, database_url: str) -> None:
        conninfo = make_url(database_url).set(drivername="postgresql")
        while self._listen_url == database_url:
            try:
                with psycopg.connect(
                    conninfo.render_as_string(hide_password=False), autocommit=True
                ) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    self.wake_all()  # what finished while nobody listened is read now
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
