"""Schemathesis against the running API: requests generated from its own OpenAPI schema, both
valid and deliberately invalid ones, sent over HTTP to a real server with a real tenant key (and
the admin token on /v1/admin). No response may be a 5xx, and every response must be one the
schema documents, in the shape it documents."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select, update

from services.api.app import create_app
from services.db import session_scope
from services.models import TERMINAL_STATUSES, DeliveryStatus, Query, WebhookDelivery
from services.queries import cancel_query
from services.webhooks import endpoints
from tests.conftest import ADMIN_TOKEN, TenantApi
from tests.server_thread import ServerThread
from workers.app import app as celery_app
from workers.dispatch import CeleryDispatcher

# Per operation and generation mode; about 30 operations, so about 2,500 requests in all.
EXAMPLES_PER_OPERATION = 50
# Long polls (`wait`, up to 60 s) would only make the run slow; no worker answers here.
LONGEST_WAIT_S = 0.1
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Tally:
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.by_status.items() if status >= 500)


@pytest.fixture
def api_server() -> Iterator[ServerThread]:
    """The real app over HTTP, wired to the real broker. No worker runs in this module: what
    the fuzzing submits waits in the queues until the tenant's fixture clears it away."""
    server = ServerThread(create_app(CeleryDispatcher())).start()
    yield server
    server.stop()


@pytest.fixture
def fuzz_tenant(make_tenant: Callable[..., TenantApi]) -> Iterator[TenantApi]:
    tenant = make_tenant()
    yield tenant
    _finish_fuzz_work(tenant.tenant_id)


def _finish_fuzz_work(tenant_id: uuid.UUID) -> None:
    """Cancel what the fuzzing submitted, drop its webhook endpoints and deliveries and purge
    the queues (they hold only this test's messages), so that no later test's worker or
    recovery sweep picks any of it up."""
    with session_scope() as session:
        open_ids = session.scalars(
            select(Query.id).where(
                Query.tenant_id == tenant_id, Query.status.not_in(TERMINAL_STATUSES)
            )
        ).all()
        for query_id in open_ids:
            cancel_query(session, tenant_id=tenant_id, query_id=query_id)
        for endpoint in endpoints.list_endpoints(session, tenant_id=tenant_id):
            endpoints.delete_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint.id)
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.tenant_id == tenant_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(status=DeliveryStatus.DISCARDED, lease_expires_at=None)
        )
    celery_app.control.purge()


def _shorten_long_polls(case: Case) -> None:
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > LONGEST_WAIT_S:
        case.query["wait"] = LONGEST_WAIT_S


def _fuzz(case_strategy: Any, headers: dict[str, str], tally: Tally) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure in CI reproduces
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=case_strategy)
    def send(case: Case) -> None:
        _shorten_long_polls(case)
        response = case.call(headers=headers, timeout=30)
        tally.requests += 1
        tally.by_status[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    send()


def test_generated_requests_get_documented_responses_and_no_server_error(
    api_server: ServerThread, fuzz_tenant: TenantApi, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    tally = Tally()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 25  # the whole API, not a schema that failed to load
    for operation in operations:
        admin = operation.path.startswith("/v1/admin")
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN if admin else fuzz_tenant.api_key}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation.as_strategy(generation_mode=mode), headers, tally)
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing of it can be invalid
            except (Exception, FailureGroup) as failure:  # noqa: BLE001 - gather them all
                tally.failures.append(f"{operation.label} ({mode}): {failure}")
    with capsys.disabled():
        print(
            f"\nfuzzing: {len(operations)} operations, {tally.requests} requests, "
            f"{tally.server_errors} 5xx; statuses {dict(sorted(tally.by_status.items()))}"
        )
    assert not tally.failures, "\n\n".join(tally.failures)
    assert tally.server_errors == 0
    assert tally.requests > 20 * len(operations)
