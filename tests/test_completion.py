"""Waking the long polls of finished queries (services/completion.py): waiters register, are
woken by id or all at once, cost nothing once gone, and a PostgreSQL NOTIFY (from the trigger
on ``queries`` or sent by hand) wakes them through the listener, which wakes everyone when it
(re)connects so that nothing said while it was down is missed."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.engine import make_url

from services import completion
from services.completion import Waiters
from services.db import session_scope
from services.models import Query, QueryStatus
from services.settings import get_settings
from services.tenants import create_tenant
from tests.waiting import wait_for


class Calls:
    """A wake-up callback that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_waiter_is_counted_while_registered_and_forgotten_after() -> None:
    waiters, query_id = Waiters(), uuid.uuid4()
    first, second = Calls(), Calls()
    with waiters.registered(query_id, first):
        assert waiters.count(query_id) == 1
        with waiters.registered(query_id, second):
            assert waiters.count(query_id) == 2
        assert waiters.count(query_id) == 1
    assert waiters.count(query_id) == 0
    waiters.wake(query_id)
    assert (first.count, second.count) == (0, 0)


def test_a_waiter_is_forgotten_also_when_its_block_raises() -> None:
    waiters, query_id = Waiters(), uuid.uuid4()
    with pytest.raises(RuntimeError), waiters.registered(query_id, Calls()):
        raise RuntimeError("the poll failed")
    assert waiters.count(query_id) == 0


def test_wake_calls_the_waiters_of_that_query_alone() -> None:
    waiters, mine, theirs = Waiters(), uuid.uuid4(), uuid.uuid4()
    woken, other = Calls(), Calls()
    with waiters.registered(mine, woken), waiters.registered(theirs, other):
        waiters.wake(mine)
        waiters.wake(uuid.uuid4())  # nobody waits for it
    assert (woken.count, other.count) == (1, 0)


def test_wake_all_calls_every_waiter() -> None:
    waiters = Waiters()
    calls = [Calls() for _ in range(4)]
    query_ids = [uuid.uuid4(), uuid.uuid4()]
    with (
        waiters.registered(query_ids[0], calls[0]),
        waiters.registered(query_ids[0], calls[1]),
        waiters.registered(query_ids[1], calls[2]),
        waiters.registered(query_ids[1], calls[3]),
    ):
        waiters.wake_all()
    assert [call.count for call in calls] == [1, 1, 1, 1]


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 30)), max_size=30))
def test_counts_follow_any_order_of_registrations(steps: list[tuple[int, bool, int]]) -> None:
    """Open and close registrations on four ids in any order (the long polls of many requests
    end in any order): each count is the number still open."""
    waiters, ids = Waiters(), [uuid.uuid4() for _ in range(4)]
    open_blocks: list[tuple[int, AbstractContextManager[None]]] = []
    for index, opens, which in steps:
        if opens or not open_blocks:
            block = waiters.registered(ids[index], Calls())
            block.__enter__()
            open_blocks.append((index, block))
        else:
            _, block = open_blocks.pop(which % len(open_blocks))
            block.__exit__(None, None, None)
        for position, query_id in enumerate(ids):
            expected = sum(1 for opened, _ in open_blocks if opened == position)
            assert waiters.count(query_id) == expected
    for _, block in open_blocks:
        block.__exit__(None, None, None)
    assert all(waiters.count(query_id) == 0 for query_id in ids)


def test_a_thread_waits_on_an_event_that_a_wake_from_another_thread_sets() -> None:
    waiters, query_id = Waiters(), uuid.uuid4()
    with waiters.waiting_for(query_id, None) as finished:
        assert not finished.is_set()
        threading.Thread(target=waiters.wake, args=(query_id,)).start()
        assert finished.wait(10)
    assert waiters.count(query_id) == 0


def test_without_a_listener_waiters_recheck_their_row_often() -> None:
    waiters = Waiters()
    assert waiters.recheck_s == completion.RECHECK_S
    assert completion.RECHECK_S < completion.LISTENING_RECHECK_S


@pytest.fixture
def listening() -> Iterator[tuple[Waiters, str]]:
    """Waiters of this test's own, and the test database's URL; the listener stops after."""
    waiters = Waiters()
    yield waiters, get_settings().database_url
    waiters.stop_listening()


def new_running_query() -> uuid.UUID:
    with session_scope() as session:
        tenant = create_tenant(
            session, name=f"waiter-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.3
        ).tenant
        query = Query(tenant_id=tenant.id, status=QueryStatus.RUNNING, prompt="p", max_new_tokens=1)
        session.add(query)
        session.flush()
        return query.id


def notify(database_url: str, payload: str) -> None:
    conninfo = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (completion.CHANNEL, payload))


def test_a_listener_relaxes_the_recheck_while_connected(listening: tuple[Waiters, str]) -> None:
    waiters, database_url = listening
    waiters.ensure_listener(database_url, wait_s=10)
    assert waiters.is_listening_to(database_url)
    assert not waiters.is_listening_to(database_url + "-other")
    assert waiters.recheck_s == completion.LISTENING_RECHECK_S
    waiters.stop_listening()
    assert not waiters.is_listening_to(database_url)
    assert waiters.recheck_s == completion.RECHECK_S


def test_a_notify_wakes_the_waiter_of_that_query(listening: tuple[Waiters, str]) -> None:
    waiters, database_url = listening
    query_id, bystander = uuid.uuid4(), uuid.uuid4()
    with waiters.waiting_for(bystander, database_url) as other:
        other.clear()  # woken once as the listener connected
        with waiters.waiting_for(query_id, database_url) as finished:
            notify(database_url, "not a query id")  # ignored; the listener keeps listening
            notify(database_url, str(query_id))
            assert finished.wait(10)
        assert not other.is_set()


def test_a_query_that_finishes_wakes_its_waiter_through_the_trigger(
    listening: tuple[Waiters, str],
) -> None:
    waiters, database_url = listening
    query_id = new_running_query()
    waiters.ensure_listener(database_url, wait_s=10)
    with waiters.waiting_for(query_id, database_url) as finished:
        with session_scope() as session:
            session.execute(
                update(Query).where(Query.id == query_id).values(status=QueryStatus.CANCELLED)
            )
        assert finished.wait(10)


def test_a_new_listener_wakes_every_waiter_once_it_listens(
    listening: tuple[Waiters, str],
) -> None:
    waiters, database_url = listening
    woken = threading.Event()
    with waiters.registered(uuid.uuid4(), woken.set):
        waiters.ensure_listener(database_url, wait_s=10)
        assert woken.wait(10)


def listener_pids(database_url: str) -> list[int]:
    conninfo = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = %s AND pid <> pg_backend_pid()",
            (f"LISTEN {completion.CHANNEL}",),
        ).fetchall()
    return [pid for (pid,) in rows]


def test_a_listener_whose_connection_dies_reconnects_and_wakes_everyone(
    listening: tuple[Waiters, str],
) -> None:
    waiters, database_url = listening
    waiters.ensure_listener(database_url, wait_s=10)
    # Earlier tests' listeners may still be ending: end them all, this one among them.
    pids = wait_for(lambda: listener_pids(database_url), timeout=10, what="the listener")
    woken = threading.Event()
    with waiters.registered(uuid.uuid4(), woken.set):
        conninfo = make_url(database_url).set(drivername="postgresql")
        with psycopg.connect(
            conninfo.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert woken.wait(15)  # the reconnect wakes every waiter to read its row
    wait_for(lambda: waiters.is_listening_to(database_url), timeout=15, what="listening again")
    query_id = uuid.uuid4()
    with waiters.waiting_for(query_id, database_url) as finished:
        notify(database_url, str(query_id))
        assert finished.wait(10)
