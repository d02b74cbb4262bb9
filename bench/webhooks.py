"""Webhook deliveries per second for one worker against a local receiver.

    python bench/webhooks.py [--deliveries 2000] [--concurrency 2] [--pool prefork]
        [--admin-url postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/11]

Creates a throwaway PostgreSQL database, starts one Celery worker on the `webhooks` queue and a
receiver on loopback, writes the events to the outbox in batches (as finishing queries do) and
times until every delivery is recorded as succeeded. A sample of the deliveries is verified
with the `standardwebhooks` library. Prints and writes bench/results/webhooks.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import redis
from sqlalchemy import func, select

from services import dispatch
from services.db import session_scope
from services.migrate import upgrade_to_head
from services.models import DeliveryStatus, WebhookDelivery
from services.settings import get_settings
from services.tenants import create_tenant
from services.webhooks.endpoints import create_endpoint
from services.webhooks.events import EventType, record_event
from tests.celery_workers import CeleryWorker
from tests.throwaway_database import throwaway_database
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver

BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--out", type=Path, default=Path("bench/results/webhooks.json"))
    args = parser.parse_args()

    os.environ.update(
        {
            "TWOTIER_BROKER_URL": args.redis,
            "TWOTIER_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            "TWOTIER_LOG_LEVEL": "WARNING",
            "TWOTIER_LOG_JSON": "false",
        }
    )
    redis.Redis.from_url(args.redis).flushdb()
    with throwaway_database(args.admin_url):
        results = run(args.deliveries, args.concurrency, args.pool)
    for name, value in results.items():
        print(f"{name:>28}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def run(deliveries: int, concurrency: int, pool: str) -> dict[str, float | str]:
    from workers.celery_dispatcher import CeleryDispatcher  # noqa: PLC0415 - needs the broker set

    upgrade_to_head()
    receiver = WebhookReceiver().start()
    with session_scope() as session:
        tenant = create_tenant(session, name="bench", target_escalation_rate=0.3).tenant
        secret = create_endpoint(
            session,
            tenant=tenant,
            url=receiver.url + "/bench",
            description=None,
            event_types=None,
            thin_payload=False,
            settings=get_settings(),
        ).webhook_secret
        tenant_id = tenant.id
    dispatch.install(CeleryDispatcher())
    worker = CeleryWorker(
        "bench-webhooks",
        log_dir=Path(tempfile.mkdtemp(prefix="twotier-bench-")),
        queues="webhooks",
        concurrency=concurrency,
        pool=pool,
    ).start()
    try:
        started = time.perf_counter()
        for first in range(0, deliveries, BATCH):
            with session_scope() as session:
                for number in range(first, min(first + BATCH, deliveries)):
                    record_event(
                        session,
                        tenant_id=tenant_id,
                        event_type=EventType.QUERY_SUCCEEDED,
                        data=functools.partial(
                            dict, query_id=str(uuid.uuid4()), number=number, answer="Yes"
                        ),
                    )
        recorded = time.perf_counter() - started
        wait_for(
            lambda: _succeeded() >= deliveries,
            timeout=600,
            interval=0.1,
            what=f"{deliveries} deliveries",
        )
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        receiver.stop()
    sample = receiver.at("/bench")[:: max(deliveries // 50, 1)]
    for delivery in sample:
        delivery.verified(secret)
    return {
        "deliveries": deliveries,
        "pool": pool,
        "concurrency": concurrency,
        "outbox_writes_per_s": round(deliveries / recorded, 1),
        "deliveries_per_s": round(deliveries / elapsed, 1),
        "requests_received": len(receiver.at("/bench")),
        "verified_sample": len(sample),
    }


def _succeeded() -> int:
    with session_scope() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.status == DeliveryStatus.SUCCEEDED)
            )
            or 0
        )


if __name__ == "__main__":
    main()
