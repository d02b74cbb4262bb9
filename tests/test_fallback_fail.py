"""With ``TWOTIER_{SMALL,LARGE}_UNAVAILABLE_FALLBACK=fail``, a query whose model server keeps
failing fails with a reason a person can act on."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.celery_workers import CeleryWorker
from tests.conftest import TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.test_cascade import ledger
from tests.test_fallback import ALWAYS_DOWN


@pytest.fixture(scope="module")
def failing_worker(log_dir: Path) -> Iterator[CeleryWorker]:
    """The only worker of this module: its fallback for a dead tier is to fail the query."""
    process = CeleryWorker(
        f"fallback-{uuid.uuid4().hex[:6]}",
        log_dir=log_dir,
        env={
            "TWOTIER_SMALL_UNAVAILABLE_FALLBACK": "fail",
            "TWOTIER_LARGE_UNAVAILABLE_FALLBACK": "fail",
        },
    ).start()
    yield process
    process.stop()


@pytest.mark.usefixtures("failing_worker")
def test_with_the_fail_fallback_the_query_fails_with_a_clear_reason(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompt = unique("Nobody answers")
    small_tgi.script(prompt, failures=list(ALWAYS_DOWN))
    query = tenant.wait_finished(tenant.submit(prompt)["id"])

    assert query["status"] == "failed"
    assert query["error"]["code"] == "model_unavailable"
    assert "small model server kept failing" in query["error"]["message"]
    assert "503" in query["error"]["message"]
    assert ledger(query["id"]) == []
