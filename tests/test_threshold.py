"""The threshold rule and its shared history, on PostgreSQL, without the API or workers."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, update

from services import threshold
from services.db import session_scope
from services.models import MarginRecord, Query, QueryStatus, ThresholdScope
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
            assert decision.rank_error == 0.0  # 200 margins fit a sketch of k = 400 whole
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


def _decide_in_order(
    tenant_id: uuid.UUID, margins: dict[uuid.UUID, float], *, sketch_k: int, rate: float
) -> list[threshold.Decision]:
    decisions = []
    for query_id, margin in margins.items():
        with session_scope() as session:
            decisions.append(
                threshold.decide(
                    session, tenant_id=tenant_id, model_pair="a->b", task_label="sketch",
                    query_id=query_id, margin=margin, target_escalation_rate=rate, warmup=0,
                    sketch_k=sketch_k,
                )
            )  # fmt: skip
    return decisions


def test_past_k_margins_the_threshold_stays_within_the_sketchs_rank_error() -> None:
    tenant_id, query_ids = _new_queries(600)
    rng = random.Random(11)
    # Ties included: margins rounded to two places repeat often.
    margins = {query_id: round(rng.random(), rng.choice([2, 6])) for query_id in query_ids}
    decisions = _decide_in_order(tenant_id, margins, sketch_k=16, rate=0.3)

    history: list[float] = []
    with session_scope() as session:
        for decision, margin in zip(decisions, margins.values(), strict=True):
            history.append(margin)
            assert decision.threshold is not None
            assert decision.rank_error is not None
            size = decision.threshold_version
            assert size == len(history)
            if size <= 16:  # the sketch still holds every margin: the paper's rule exactly
                assert decision.rank_error == 0.0
                assert decision.threshold == threshold.exact_threshold(history, 0.3)
                continue
            bound = threshold.kll_doubles_sketch.get_normalized_rank_error(16, False)
            assert decision.rank_error == pytest.approx(bound)
            observed = threshold.rank_distance(history, decision.threshold, 0.3)
            assert observed <= decision.rank_error + 1 / size
            assert observed == threshold.replay_rank_error(
                session, scope_id=decision.scope_id, threshold_version=size,
                threshold=decision.threshold, target_escalation_rate=0.3,
            )  # fmt: skip
            assert decision.escalate == (margin < decision.threshold)


def test_a_scope_without_a_sketch_builds_it_from_its_history() -> None:
    tenant_id, query_ids = _new_queries(60)
    rng = random.Random(5)
    margins = {query_id: rng.random() for query_id in query_ids}
    first = dict(list(margins.items())[:50])
    decisions = _decide_in_order(tenant_id, first, sketch_k=400, rate=0.3)
    with session_scope() as session:  # as a scope kept before sketches were stored
        session.execute(
            update(ThresholdScope).where(ThresholdScope.tenant_id == tenant_id).values(sketch=None)
        )
    rest = dict(list(margins.items())[50:])
    decisions += _decide_in_order(tenant_id, rest, sketch_k=400, rate=0.3)

    assert [d.threshold_version for d in decisions] == list(range(1, 61))
    for decision in decisions[50:]:
        history = list(margins.values())[: decision.threshold_version]
        assert decision.threshold == threshold.exact_threshold(history, 0.3)
