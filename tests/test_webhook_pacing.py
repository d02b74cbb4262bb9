"""Webhook attempts that cannot be held: one total deadline per attempt (a receiver that
trickles its answer is cut off), never two attempts of one delivery at once, and a slow
receiver holds up no other tenant's deliveries. Real Celery workers and the scheduler."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from services.db import session_scope
from services.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, utcnow
from tests.celery_workers import CeleryBeat, CeleryWorker
from tests.conftest import TenantApi, forget_earlier_work
from tests.scripted_tgi import ScriptedTGI
from tests.test_webhooks import add_endpoint, attempt_log, finish_a_query
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver

DEADLINE_S = 6  # the workers' attempt deadline here; a slow attempt runs past half of it


@pytest.fixture(scope="module")
def worker(log_dir: Path) -> Iterator[CeleryWorker]:
    """Two pool processes for every queue, with a longer attempt deadline than elsewhere, and
    the scheduler, whose relay sends the deliveries paced for longer than the broker holds a
    message here."""
    forget_earlier_work()
    process = CeleryWorker(
        f"egress-{uuid.uuid4().hex[:6]}",
        log_dir=log_dir,
        env={"TWOTIER_WEBHOOK_TIMEOUT_S": str(DEADLINE_S)},
    ).start()
    beat = CeleryBeat(log_dir=log_dir).start()
    yield process
    beat.stop()
    process.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.mark.usefixtures("worker")
def test_a_trickling_receiver_is_cut_off_at_the_deadline_and_never_gets_two_attempts_at_once(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
    slow_urls: list[str],
) -> None:
    tenant = make_tenant()
    path = f"/trickle/{uuid.uuid4().hex[:8]}"
    receiver.trickle[path] = 4 * DEADLINE_S  # a byte a second, far past the deadline
    slow_urls.append(receiver.url + path)
    endpoint = add_endpoint(tenant, receiver.url + path)
    finish_a_query(tenant, small_tgi, unique("Trickle"))

    first, second = receiver.wait_for(path, count=2, timeout=60)
    assert first.webhook_id == second.webhook_id
    assert receiver.most_in_flight[first.webhook_id] == 1  # the retry came after the cut-off
    earliest = wait_for(
        lambda: (log := attempt_log(tenant, endpoint["id"])) and log[-1],
        timeout=30,
        what="the first attempt in the log",
    )
    assert DEADLINE_S * 1000 <= earliest["duration_ms"] < (DEADLINE_S + 2) * 1000
    assert "deadline" in earliest["error"]
    assert len(earliest["response_excerpt"] or "") <= 500


@pytest.fixture
def slow_urls() -> Iterator[list[str]]:
    """URLs of slow receivers whose deliveries are discarded after the test, so that their
    retries take no worker from the tests that follow."""
    urls: list[str] = []
    yield urls
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.url.in_(urls), WebhookDelivery.status == DeliveryStatus.PENDING)
            .values(status=DeliveryStatus.DISCARDED, finished_at=utcnow())
        )


def attempts_to(url: str) -> list[WebhookAttempt]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
                .where(WebhookDelivery.url == url)
            )
        )


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("target", ["endpoint", "query_webhook_url"])
def test_a_slow_receiver_does_not_hold_up_another_tenants_deliveries(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
    target: str,
    slow_urls: list[str],
) -> None:
    slow_tenant, other_tenant = make_tenant(), make_tenant()
    slow_url = receiver.url + f"/slow/{uuid.uuid4().hex[:8]}"
    slow_urls.append(slow_url)
    other_path = f"/other/{uuid.uuid4().hex[:8]}"
    receiver.trickle[slow_url.removeprefix(receiver.url)] = 4 * DEADLINE_S
    add_endpoint(other_tenant, receiver.url + other_path)
    callback: dict[str, str] = {}
    if target == "endpoint":
        add_endpoint(slow_tenant, slow_url)
    else:
        callback["webhook_url"] = slow_url

    def finish_slow(prompt: str) -> None:
        small_tgi.script(prompt, margin=0.9)
        slow_tenant.wait_finished(slow_tenant.submit(prompt, **callback)["id"])

    finish_slow(unique("Slow first"))
    wait_for(
        lambda: attempts_to(slow_url),
        timeout=DEADLINE_S + 10,
        what="the slow receiver's first attempt to end",
    )
    for i in range(4):  # more for the slow receiver than the worker has processes
        prompt = unique(f"Slow {i}")
        small_tgi.script(prompt, margin=0.9)
        slow_tenant.submit(prompt, **callback)
    finish_a_query(other_tenant, small_tgi, unique("Not held up"))
    finished = time.monotonic()
    [delivered] = receiver.wait_for(other_path, timeout=DEADLINE_S + 10)
    # With both worker processes on the slow receiver it would wait for a deadline (6 s).
    assert delivered.arrived_s - finished < DEADLINE_S / 2
