"""Two worker processes at once, one threshold: the realised escalation rate meets the target."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.db import session_scope
from services.threshold import exact_threshold, replay_threshold
from tests.celery_workers import CeleryWorker
from tests.conftest import WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI

QUERIES = 300
TARGET = 0.3
# The rule escalates the queries below the running 30% quantile; with the history growing from
# W = 4 margins, the realised share over 296 decisions stays within 5 points of the target.
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def two_workers(log_dir: Path) -> Iterator[list[CeleryWorker]]:
    workers = [
        CeleryWorker(f"shared-{i}-{uuid.uuid4().hex[:4]}", log_dir=log_dir, concurrency=1).start()
        for i in range(2)
    ]
    yield workers
    for worker in workers:
        worker.stop()


def test_realised_escalation_rate_matches_the_target_across_two_workers(
    two_workers: list[CeleryWorker],
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    before = _tasks_done(two_workers)
    tenant = make_tenant(target_escalation_rate=TARGET)
    rng = random.Random(2405)
    margins = {}
    for i in range(QUERIES):
        prompt = unique(f"stream {i}")
        margins[prompt] = round(rng.random(), 6)
        small_tgi.script(prompt, answer=f"small {i}", margin=margins[prompt])
        large_tgi.script(prompt, answer=f"large {i}")
    ids = [tenant.submit(prompt, task="stream")["id"] for prompt in margins]
    finished = [tenant.wait_finished(query_id, timeout=180) for query_id in ids]

    assert all(q["status"] == "succeeded" for q in finished)
    by_version = sorted(finished, key=lambda q: q["threshold_version"])
    assert [q["threshold_version"] for q in by_version] == list(range(1, QUERIES + 1))

    # Every decision replays from the stored history, in the order the workers made them.
    history: list[float] = []
    scope_id = _scope_of(ids[0])
    with session_scope() as session:
        for query in by_version:
            history.append(query["margin"])
            if query["threshold_version"] <= WARMUP:
                assert query["decision"] == "warmup"
                assert query["tier"] == "small"
                continue
            assert query["threshold_rank_error"] == 0.0  # 300 margins: the sketch is exact
            assert query["threshold"] == exact_threshold(history, TARGET)
            assert query["threshold"] == replay_threshold(
                session,
                scope_id=scope_id,
                threshold_version=query["threshold_version"],
                target_escalation_rate=TARGET,
            )
            assert query["escalated"] == (query["margin"] < query["threshold"])
            assert query["tier"] == ("large" if query["escalated"] else "small")

    decided = [q for q in finished if q["decision"] != "warmup"]
    realised = sum(q["escalated"] for q in decided) / len(decided)
    print(f"realised escalation rate {realised:.3f} (target {TARGET}) over {len(decided)}")
    assert realised == pytest.approx(TARGET, abs=TOLERANCE)

    done = _tasks_done(two_workers)
    per_worker = {name: done[name] - before.get(name, 0) for name in done}
    assert len(per_worker) == 2, per_worker
    assert all(count > 0 for count in per_worker.values()), per_worker


def _tasks_done(workers: list[CeleryWorker]) -> dict[str, int]:
    from workers.app import app

    stats = app.control.inspect(destination=[w.name for w in workers], timeout=5).stats() or {}
    return {name: sum(s.get("total", {}).values()) for name, s in stats.items()}


def _scope_of(query_id: str) -> int:
    from services.models import Query

    with session_scope() as session:
        scope_id = session.get_one(Query, uuid.UUID(query_id)).scope_id
    assert scope_id is not None
    return scope_id
