"""Long polls that wait without a thread or a connection.

A waiting poll is an asyncio event registered with the process's completion waiters
(services/completion.py), which the PostgreSQL listener (or, embedded, the finishing commit)
sets from its own thread. The row is read in a short database hop when the poll starts, when
it is woken, when the listener (re)connects, and at its deadline; a thousand waiting polls
cost a thousand small objects, not a thousand threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import structlog

from services.completion import waiters
from services.db import get_engine

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def read_until_finished(
    read: Callable[[], Awaitable[T]],
    *,
    query_id: uuid.UUID,
    is_finished: Callable[[T], bool],
    deadline: float,
) -> T:
    """``await read()`` until ``is_finished`` says so or ``deadline`` (time.monotonic) passes;
    the last value read."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:  # called from the listener's or a committing thread
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(woken.set)

    _start_listening()
    with waiters.registered(query_id, wake):
        while True:
            woken.clear()
            value = await read()
            remaining = deadline - time.monotonic()
            if is_finished(value) or remaining <= 0:
                return value
            with anyio.move_on_after(min(remaining, waiters.recheck_s)):
                await woken.wait()


def _start_listening() -> None:
    engine = get_engine()
    if engine.dialect.name == "postgresql":
        url = engine.url.render_as_string(hide_password=False)
        if not waiters.is_listening_to(url):
            waiters.ensure_listener(url, wait_s=0)
