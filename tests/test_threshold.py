"""The threshold rule and its shared history, on PostgreSQL, without the API or workers."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from services import threshold
from services.db import session_scope
from services.models import MarginRecord, Query, QueryStatus
from services.tenants import create_tenant


def test_quantile_index_follows_the_paper_and_stays_inside_the_history() -> None:
    assert threshold.quantile_index(100, 0.3) == 30
    assert threshold.quantile_index(7, 0.5) == 3
    assert threshold.quantile_index(10, 1.0) == 9
    assert threshold.quantile_index(10, 0.0) == 0


def test_exact_threshold_is_the_empirical_quantile() -> None:
    margins = [0.5, 0.1, 0.9, 0.3, 0.7]
    assert threshold.exact_threshold(margins, 0.4) == 0.5  # sorted[floor(5 * 0.4)] = sorted[2]
    assert threshold.exact_threshold(margins, 0.0) == 0.1


def _new_queries(count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with session_scope() as session:
        tenant = create_tenant(
            session, name=f"threshold-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.3
        ).tenant
        queries = [
            Query(
                tenant_id=tenant.id,
                status=QueryStatus.RUNNING,
                prompt="p",
                max_new_tokens=1,
                delivery_attempts=1,
            )
            for _ in range(count)
        ]
        session.add_all(queries)
    return tenant.id, [query.id for query in queries]


def test_concurrent_decisions_share_one_history_and_replay_exactly() -> None:
    tenant_id, query_ids = _new_queries(200)
    rng = random.Random(7)
    margins = {query_id: rng.random() for query_id in query_ids}

    def decide(query_id: uuid.UUID) -> threshold.Decision:
        with session_scope() as session:
            return threshold.decide(
                session,
                tenant_id=tenant_id,
                model_pair="a->b",
                task_label=None,
                query_id=query_id,
                margin=margins[query_id],
                target_escalation_rate=0.3,
                warmup=20,
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        decisions = dict(zip(query_ids, pool.map(decide, query_ids), strict=True))

    versions = sorted(d.threshold_version for d in decisions.values())
    assert versions == list(range(1, 201))
    assert len({d.scope_id for d in decisions.values()}) == 1
    with session_scope() as session:
        scope_id = next(iter(decisions.values())).scope_id
        rows = session.execute(
            select(MarginRecord.seq, MarginRecord.margin).where(MarginRecord.scope_id == scope_id)
        )
        stored = dict(rows.all())
        for query_id, decision in decisions.items():
            if decision.threshold_version <= 20:
                assert decision.reason == "warmup"
                assert not decision.escalate
                continue
            history = [stored[seq] for seq in range(1, decision.threshold_version + 1)]
            assert decision.threshold == threshold.exact_threshold(history, 0.3)
            assert decision.threshold == threshold.replay_threshold(
                session,
                scope_id=decision.scope_id,
                threshold_version=decision.threshold_version,
                target_escalation_rate=0.3,
            )
            assert decision.escalate == (margins[query_id] < decision.threshold)
    escalated = sum(d.escalate for d in decisions.values())
    assert escalated / 180 == pytest.approx(0.3, abs=0.06)


def test_task_labels_and_model_pairs_are_separate_scopes() -> None:
    tenant_id, query_ids = _new_queries(3)
    scopes = set()
    for query_id, (pair, task) in zip(
        query_ids, [("a->b", None), ("a->b", "qa"), ("a->c", None)], strict=True
    ):
        with session_scope() as session:
            decision = threshold.decide(
                session,
                tenant_id=tenant_id,
                model_pair=pair,
                task_label=task,
                query_id=query_id,
                margin=0.5,
                target_escalation_rate=0.3,
                warmup=0,
            )
        assert decision.threshold_version == 1
        scopes.add(decision.scope_id)
    assert len(scopes) == 3
