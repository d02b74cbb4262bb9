"""Webhooks survive crashes: the outbox row commits with the query, so a lost broker message
or a webhook worker SIGKILLed mid-delivery still ends in a delivery (at least once, same id)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from services.db import session_scope
from services.models import DeliveryStatus, WebhookDelivery
from tests.celery_workers import CeleryBeat, CeleryWorker
from tests.conftest import TenantApi, forget_earlier_work
from tests.scripted_tgi import ScriptedTGI
from tests.test_webhooks import add_endpoint
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="module")
def query_worker(log_dir: Path) -> Iterator[CeleryWorker]:
    """Answers queries but sends no webhooks: those wait for the worker a test starts."""
    forget_earlier_work()
    process = CeleryWorker(
        f"queries-{uuid.uuid4().hex[:6]}", log_dir=log_dir, queues="small,large,maintenance"
    ).start()
    yield process
    process.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def webhook_worker(log_dir: Path) -> CeleryWorker:
    return CeleryWorker(
        f"webhooks-{uuid.uuid4().hex[:6]}", log_dir=log_dir, queues="webhooks", concurrency=1
    )


def delivery_to(url: str) -> WebhookDelivery | None:
    with session_scope() as session:
        return session.scalars(select(WebhookDelivery).where(WebhookDelivery.url == url)).first()


def wait_until_recorded_as_delivered(url: str) -> None:
    wait_for(
        lambda: (d := delivery_to(url)) is not None and d.status == DeliveryStatus.SUCCEEDED,
        timeout=10,
        what="the delivery to be recorded as succeeded",
    )


def test_a_lost_broker_message_is_relayed_from_the_outbox(
    query_worker: CeleryWorker,
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
    broker: redis.Redis,
    log_dir: Path,
) -> None:
    tenant = make_tenant()
    url = receiver.url + "/outbox"
    endpoint = add_endpoint(tenant, url)
    prompt = unique("Outbox")
    small_tgi.script(prompt, margin=0.9)
    tenant.wait_finished(tenant.submit(prompt)["id"])
    pending = delivery_to(url)
    assert pending is not None
    assert pending.status == DeliveryStatus.PENDING
    # The worker sends the message just after its commit, which the poll may see first.
    wait_for(lambda: broker.llen("webhooks") >= 1, timeout=10, what="the webhook message")
    broker.delete("webhooks")  # every queued webhook message is lost

    beat = CeleryBeat(log_dir=log_dir).start()
    worker = webhook_worker(log_dir)
    try:
        worker.start()
        [delivery] = receiver.wait_for("/outbox", timeout=30)
        assert delivery.verified(endpoint["secret"])["type"] == "query.succeeded"
        assert delivery.webhook_id == pending.message_id
        wait_until_recorded_as_delivered(url)
    finally:
        worker.stop()
        beat.stop()


def test_a_webhook_worker_killed_mid_delivery_still_delivers(
    query_worker: CeleryWorker,
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
    log_dir: Path,
) -> None:
    tenant = make_tenant()
    url = receiver.url + "/killed"
    endpoint = add_endpoint(tenant, url)
    receiver.hold = hold = threading.Event()
    first_worker = webhook_worker(log_dir).start()
    second_worker = webhook_worker(log_dir)
    try:
        prompt = unique("Kill the sender")
        small_tgi.script(prompt, margin=0.9)
        tenant.wait_finished(tenant.submit(prompt)["id"])
        assert receiver.held.wait(30), "the first attempt never arrived"
        first_worker.kill()
        hold.set()
        second_worker.start()
        first, second = receiver.wait_for("/killed", count=2, timeout=60)
        assert first.webhook_id == second.webhook_id
        assert second.verified(endpoint["secret"])["type"] == "query.succeeded"
        wait_until_recorded_as_delivered(url)
    finally:
        first_worker.stop()
        second_worker.stop()
