"""How services hand webhook deliveries to workers (services/dispatch.py): through the
session's dispatcher if it has one, else the process's, only once the session commits, never
on a rollback, and with neither dispatcher not at all (the relay finds the delivery)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from services import dispatch
from services.db import session_factory
from services.models import Tier


class Recorder:
    """A dispatcher that records what it is asked to send."""

    def __init__(self, *, fails: bool = False) -> None:
        self.webhooks: list[uuid.UUID] = []
        self.fails = fails

    def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        raise AssertionError("only webhook deliveries are sent here")

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        if self.fails:
            raise ConnectionError("the broker is down")
        self.webhooks.append(delivery_id)

    def feed_batches(self) -> None:
        raise AssertionError("no batch is fed here")

    def is_reachable(self) -> bool:
        return not self.fails


@pytest.fixture
def process_dispatcher(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """A dispatcher installed as the process's for one test; the earlier one returns after."""
    monkeypatch.setattr(dispatch, "_process_dispatcher", None)
    recorder = Recorder()
    dispatch.install(recorder)
    return recorder


@pytest.fixture
def no_process_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_process_dispatcher", None)


def test_a_delivery_is_sent_through_the_sessions_dispatcher_after_commit(
    no_process_dispatcher: None,
) -> None:
    session_dispatcher, delivery_id = Recorder(), uuid.uuid4()
    with session_factory()() as session:
        dispatch.use_in_session(session, session_dispatcher)
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, delivery_id)
        session.flush()
        assert session_dispatcher.webhooks == []  # not before the commit
        session.commit()
    assert session_dispatcher.webhooks == [delivery_id]


def test_a_rolled_back_session_sends_nothing(process_dispatcher: Recorder) -> None:
    session_dispatcher = Recorder()
    with session_factory()() as session:
        dispatch.use_in_session(session, session_dispatcher)
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, uuid.uuid4())
        session.rollback()
        session.execute(text("SELECT 1"))
        session.commit()  # a later commit of the same session does not send it either
    assert session_dispatcher.webhooks == []
    assert process_dispatcher.webhooks == []


def test_without_a_session_dispatcher_the_process_one_sends(process_dispatcher: Recorder) -> None:
    delivery_ids = [uuid.uuid4(), uuid.uuid4()]
    with session_factory()() as session:
        session.execute(text("SELECT 1"))
        for delivery_id in delivery_ids:
            dispatch.enqueue_webhook_after_commit(session, delivery_id)
        session.commit()
    assert process_dispatcher.webhooks == delivery_ids  # in the order they were recorded


def test_the_sessions_dispatcher_wins_over_the_process_one(process_dispatcher: Recorder) -> None:
    session_dispatcher, delivery_id = Recorder(), uuid.uuid4()
    with session_factory()() as session:
        dispatch.use_in_session(session, session_dispatcher)
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, delivery_id)
        session.commit()
    assert session_dispatcher.webhooks == [delivery_id]
    assert process_dispatcher.webhooks == []


def test_with_no_dispatcher_nothing_is_sent_and_the_commit_succeeds(
    no_process_dispatcher: None,
) -> None:
    with session_factory()() as session:
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, uuid.uuid4())
        session.commit()


def test_a_dispatcher_that_fails_after_commit_does_not_undo_or_break_the_commit(
    no_process_dispatcher: None,
) -> None:
    broken, working = Recorder(fails=True), Recorder()
    first, second = uuid.uuid4(), uuid.uuid4()
    with session_factory()() as session:
        dispatch.use_in_session(session, broken)
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, first)
        session.commit()  # the relay sends what failed here
        dispatch.use_in_session(session, working)
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, second)
        session.commit()
    assert working.webhooks == [second]  # the failed send was not kept for the next commit


def test_each_commit_sends_only_what_its_own_transaction_recorded(
    process_dispatcher: Recorder,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    with session_factory()() as session:
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, first)
        session.commit()
        session.execute(text("SELECT 1"))
        dispatch.enqueue_webhook_after_commit(session, second)
        session.commit()
    assert process_dispatcher.webhooks == [first, second]
