"""Schemathesis against the running API: `schemathesis run --checks all`, every check it has,
over every phase (the schema's examples, coverage of each parameter's edges, random valid and
invalid requests, and stateful sequences that follow the links between operations), sent over
HTTP to a real server with a real tenant key (and the admin token on /v1/admin).

Besides no 5xx and responses in the documented shape, that means: what the schema calls valid
is accepted and what it calls invalid is refused, a method the path does not have is 405 with
`Allow`, a missing key is 401, and a deleted resource is gone. tests/fuzz_hooks.py and
tests/schemathesis.toml hold the few adjustments, each with its reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from services.api.app import create_app
from services.db import session_scope
from services.models import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    ModelPrice,
    Query,
    WebhookDelivery,
)
from services.queries import cancel_query
from services.settings import get_settings
from services.webhooks import endpoints
from tests.conftest import ADMIN_TOKEN, TenantApi
from tests.server_thread import ServerThread
from workers.app import app as celery_app
from workers.celery_dispatcher import CeleryDispatcher

# Test cases per operation and phase; the whole run takes about 2-3 minutes.
EXAMPLES_PER_OPERATION = 30
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).parent / "schemathesis.toml"
ROOT = Path(__file__).resolve().parent.parent
# The tenant's API and the admin API, each with its own credentials.
RUNS = {"tenant": r"^/v1/(queries|usage|webhooks)", "admin": r"^/v1/admin"}


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
    with session_scope() as session:
        prices = [(p.model, p.price_input_per_mtok, p.price_output_per_mtok)
                  for p in session.scalars(select(ModelPrice))]  # fmt: skip
    yield tenant
    _finish_fuzz_work(tenant.tenant_id, prices)


def _finish_fuzz_work(tenant_id: uuid.UUID, prices: list[tuple[str, object, object]]) -> None:
    """Cancel what the fuzzing submitted, drop its webhook endpoints and deliveries, put the
    admin prices back as they were and purge the queues (they hold only this test's messages),
    so that no later test's worker or recovery sweep picks any of it up."""
    with session_scope() as session:
        open_ids = session.scalars(
            select(Query.id).where(
                Query.tenant_id == tenant_id, Query.status.not_in(TERMINAL_STATUSES)
            )
        ).all()
        for query_id in open_ids:
            cancel_query(
                session, tenant_id=tenant_id, query_id=query_id,
                tier_names=get_settings().tier_names,
            )  # fmt: skip
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
        session.execute(delete(ModelPrice))
        for model, price_in, price_out in prices:
            session.add(ModelPrice(model=model, price_input_per_mtok=price_in,
                                   price_output_per_mtok=price_out))  # fmt: skip
    celery_app.control.purge()


def _schemathesis(
    url: str, *, paths: str, token: str, workdir: Path
) -> subprocess.CompletedProcess[str]:
    """`schemathesis run` in ``workdir``, where it keeps its cache of failures."""
    command = [
        str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run",
        f"{url}/openapi.json", "--include-path-regex", paths,
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "1",  # reproducible in CI
        "--workers", "1", "--request-timeout", "30", "--output-truncate", "false",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, check=False
    )


@pytest.mark.timeout(420)
def test_schemathesis_with_every_check_finds_nothing(
    api_server: ServerThread,
    fuzz_tenant: TenantApi,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    tokens = {"tenant": fuzz_tenant.api_key, "admin": ADMIN_TOKEN}
    reports = []
    for name, paths in RUNS.items():  # the tenant's first: the admin run may disable tenants
        result = _schemathesis(api_server.url, paths=paths, token=tokens[name], workdir=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        summary = re.search(r"(\d+) generated, (\d+) passed", output)
        operations = re.search(r"Selected: (\d+)/\d+", output)
        assert summary, output
        assert operations, output
        generated, tested = int(summary[1]), int(operations[1])
        assert tested > (15 if name == "tenant" else 8), output  # the whole API was loaded
        assert generated > 20 * tested, output
        seconds = re.search(r"in ([\d.]+)s =+$", output.strip())
        reports.append(f"{name}: {tested} operations, {generated} requests generated, "
                       f"{seconds[1] if seconds else '?'} s")  # fmt: skip
    with capsys.disabled():
        print("\nschemathesis --checks all: " + "; ".join(reports) + ", no failure")
