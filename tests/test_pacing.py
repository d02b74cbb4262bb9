"""services.webhooks.pacing: a target whose last attempt was slow gets one attempt at a time
and none for one deadline after it; a target whose last attempt was quick is not paced; a
first attempt that runs slow holds back the second. Targets are endpoints, or a tenant's own
URL, and never pace one another."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.db import session_scope
from services.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, utcnow
from services.webhooks.pacing import LEASE_MARGIN_S, lease_s, wait_for_slow_target
from tests.factories import add_delivery, new_tenant

DEADLINE_S = 10.0
SLOW_MS = 6000  # past half the deadline
QUICK_MS = 4000
OWN_URL = "http://127.0.0.1:9/own"


class Target:
    """A tenant's own URL (no endpoint): deliveries to it, their attempts and leases."""

    def __init__(self, tenant_id: uuid.UUID | None = None, url: str = OWN_URL) -> None:
        self.tenant_id = tenant_id or new_tenant()
        self.url = url

    def delivery(self, **columns: object) -> uuid.UUID:
        with session_scope() as session:
            return add_delivery(session, self.tenant_id, url=self.url, **columns).id  # type: ignore[arg-type]

    def attempted(self, *, duration_ms: int, at: datetime, **delivery: object) -> uuid.UUID:
        """A pending delivery to the target with one attempt that took ``duration_ms``."""
        delivery_id = self.delivery(**delivery)
        with session_scope() as session:
            session.add(
                WebhookAttempt(
                    delivery_id=delivery_id, endpoint_id=None, attempt=1, status_code=500,
                    duration_ms=duration_ms, attempted_at=at,
                )
            )  # fmt: skip
        return delivery_id

    def in_flight(self, *, started_s_ago: float, now: datetime | None = None) -> uuid.UUID:
        """Another delivery whose attempt runs now, started ``started_s_ago``."""
        started = (now or utcnow()) - timedelta(seconds=started_s_ago)
        return self.delivery(lease_expires_at=started + timedelta(seconds=lease_s(DEADLINE_S)))

    def wait(
        self, delivery_id: uuid.UUID | None = None, *, now: datetime | None = None
    ) -> float | None:
        with session_scope() as session:
            delivery = session.get_one(WebhookDelivery, delivery_id or self.delivery())
            return wait_for_slow_target(
                session, delivery, deadline_s=DEADLINE_S, now=now or utcnow()
            )


def test_a_lease_outlasts_the_attempt_deadline() -> None:
    assert lease_s(DEADLINE_S) == DEADLINE_S + LEASE_MARGIN_S


def test_a_target_with_no_attempt_and_nothing_in_flight_is_not_paced() -> None:
    assert Target().wait() is None


def test_after_a_quick_attempt_attempts_may_run_side_by_side() -> None:
    target = Target()
    target.attempted(duration_ms=QUICK_MS, at=utcnow())
    target.in_flight(started_s_ago=9)
    assert target.wait() is None


def test_after_a_slow_attempt_the_target_waits_one_deadline() -> None:
    target = Target()
    now = utcnow()
    target.attempted(duration_ms=SLOW_MS, at=now - timedelta(seconds=3))
    wait = target.wait(now=now)
    assert wait == pytest.approx(DEADLINE_S - 3, abs=0.01)


def test_a_deadline_after_a_slow_attempt_the_target_is_free_again() -> None:
    target = Target()
    now = utcnow()
    target.attempted(duration_ms=SLOW_MS, at=now - timedelta(seconds=DEADLINE_S + 1))
    assert target.wait(now=now) is None


def test_after_a_slow_attempt_only_one_attempt_runs_at_a_time() -> None:
    target = Target()
    now = utcnow()
    target.attempted(duration_ms=SLOW_MS, at=now - timedelta(seconds=60))
    target.in_flight(started_s_ago=1, now=now)  # its lease runs 14 s more
    wait = target.wait(now=now)
    assert wait is not None
    assert lease_s(DEADLINE_S) - 1 - 0.5 < wait <= lease_s(DEADLINE_S) - 1


def test_a_first_attempt_that_runs_slow_holds_back_the_second() -> None:
    target = Target()
    target.in_flight(started_s_ago=DEADLINE_S / 2 + 1)
    wait = target.wait()
    assert wait is not None
    assert wait > 0


def test_a_first_attempt_still_quick_does_not_hold_back_the_second() -> None:
    target = Target()
    target.in_flight(started_s_ago=1)
    assert target.wait() is None


def test_a_lease_about_to_run_out_still_waits_half_a_second() -> None:
    target = Target()
    now = utcnow()
    target.attempted(duration_ms=SLOW_MS, at=now - timedelta(seconds=60))
    target.delivery(lease_expires_at=now + timedelta(milliseconds=100))
    assert target.wait(now=now) == 0.5


def test_the_deliverys_own_lease_does_not_pace_it() -> None:
    target = Target()
    now = utcnow()
    target.attempted(duration_ms=SLOW_MS, at=now - timedelta(seconds=60))
    mine = target.delivery(lease_expires_at=now + timedelta(seconds=10))
    assert target.wait(mine, now=now) is None


def test_other_targets_do_not_pace_one_another() -> None:
    slow = Target()
    now = utcnow()
    slow.attempted(duration_ms=SLOW_MS, at=now - timedelta(seconds=1))
    slow.in_flight(started_s_ago=8)
    assert slow.wait(now=now) is not None
    assert Target(slow.tenant_id, url="http://127.0.0.1:9/other").wait(now=now) is None
    assert Target(url=slow.url).wait(now=now) is None  # the same URL, another tenant's


def test_a_finished_delivery_to_the_own_url_no_longer_paces_it() -> None:
    target = Target()
    now = utcnow()
    target.attempted(
        duration_ms=SLOW_MS, at=now - timedelta(seconds=1), status=DeliveryStatus.SUCCEEDED
    )
    assert target.wait(now=now) is None


def endpoint_delivery(tenant_id: uuid.UUID, endpoint_id: uuid.UUID, **columns: object) -> uuid.UUID:
    with session_scope() as session:
        return add_delivery(session, tenant_id, endpoint_id=endpoint_id, **columns).id  # type: ignore[arg-type]


def test_an_endpoints_slow_attempt_paces_its_other_deliveries() -> None:
    from tests.test_events import add_endpoint

    tenant_id = new_tenant()
    endpoint_id = add_endpoint(tenant_id, "paced")
    other_endpoint = add_endpoint(tenant_id, "other")
    now = utcnow()
    finished = endpoint_delivery(tenant_id, endpoint_id, status=DeliveryStatus.SUCCEEDED)
    with session_scope() as session:
        session.add(
            WebhookAttempt(
                delivery_id=finished, endpoint_id=endpoint_id, attempt=1, status_code=200,
                duration_ms=SLOW_MS, attempted_at=now - timedelta(seconds=2),
            )
        )  # fmt: skip
    with session_scope() as session:
        paced = session.get_one(WebhookDelivery, endpoint_delivery(tenant_id, endpoint_id))
        other = session.get_one(WebhookDelivery, endpoint_delivery(tenant_id, other_endpoint))
        assert wait_for_slow_target(
            session, paced, deadline_s=DEADLINE_S, now=now
        ) == pytest.approx(DEADLINE_S - 2, abs=0.01)
        assert wait_for_slow_target(session, other, deadline_s=DEADLINE_S, now=now) is None


@given(
    last_ms=st.one_of(st.none(), st.integers(0, 20_000)),
    last_s_ago=st.floats(0, 30),
    flight_s_ago=st.one_of(st.none(), st.floats(0, lease_s(DEADLINE_S) - 0.1)),
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_quick_last_attempt_is_never_paced_and_a_wait_never_outlasts_a_lease_or_deadline(
    last_ms: int | None, last_s_ago: float, flight_s_ago: float | None
) -> None:
    target = Target()
    now = utcnow()
    if last_ms is not None:
        target.attempted(duration_ms=last_ms, at=now - timedelta(seconds=last_s_ago))
    if flight_s_ago is not None:
        started = now - timedelta(seconds=flight_s_ago)
        target.delivery(lease_expires_at=started + timedelta(seconds=lease_s(DEADLINE_S)))
    wait = target.wait(now=now)
    if last_ms is not None and last_ms <= DEADLINE_S * 1000 / 2:
        assert wait is None
    if wait is not None:
        assert 0 < wait <= max(lease_s(DEADLINE_S), DEADLINE_S)
    if last_ms is None and flight_s_ago is None:
        assert wait is None
