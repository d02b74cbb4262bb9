"""How a request reaches the database without holding anything while it waits.

The routes are ``async``: a request waiting for its turn, for a long poll's notification or for
its client costs neither a thread nor a connection. Its database work is one plain function
run in one hop on a bounded set of threads; the function opens a session, does its
statements, commits if it writes, and closes, so a connection is checked out only while
statements run. The threads are fewer than the pooled connections, so a hop never waits on
the pool; a request waits for a thread instead, without holding anything, and beyond
``api_max_waiting_requests`` waiting (or after ``api_max_wait_s``) it is answered 503
``overloaded`` with Retry-After rather than queued into a wedge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session

from services import dispatch
from services.db import session_factory
from services.dispatch import Dispatcher
from services.errors import ServiceOverloaded

T = TypeVar("T")

RETRY_AFTER_S = 1


class RequestDatabase:
    """One per api process: runs the requests' database work on ``threads`` threads."""

    def __init__(
        self, *, dispatcher: Dispatcher, threads: int, max_waiting: int, max_wait_s: float
    ) -> None:
        self.dispatcher = dispatcher
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._turns = anyio.CapacityLimiter(threads)
        # to_thread's own limiter, as large as ours: it never makes a turn wait again.
        self._thread_limiter = anyio.CapacityLimiter(threads)

    @property
    def waiting(self) -> int:
        return self._turns.statistics().tasks_waiting

    async def run(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` on a database thread; the session is closed when it returns
        (rolled back unless ``work`` committed). What the session records for workers goes
        through the app's dispatcher."""
        if self.waiting >= self.max_waiting:
            raise ServiceOverloaded(
                f"{self.waiting} requests are already waiting for the database; retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
        acquired = False
        with anyio.move_on_after(self.max_wait_s):
            await self._turns.acquire()
            acquired = True
        if not acquired:
            raise ServiceOverloaded(
                f"no database thread was free for {self.max_wait_s:g} s; retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
        try:
            return await anyio.to_thread.run_sync(
                self._in_session, work, limiter=self._thread_limiter
            )
        finally:
            self._turns.release()

    def _in_session(self, work: Callable[[Session], T]) -> T:
        with session_factory()() as session:
            dispatch.use_in_session(session, self.dispatcher)
            return work(session)
