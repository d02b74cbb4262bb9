"""A scope's recent decisions: the windowed threshold, the drift reading and its alert state, on
PostgreSQL without the API or workers (tests/test_threshold_drift.py runs them end to end)."""

from __future__ import annotations

import random
import uuid

import numpy as np
import pytest
from datasketches import kll_doubles_sketch

from services import threshold
from services.db import session_scope
from services.models import ThresholdScope
from services.threshold_window import (
    DriftLimits,
    DriftReading,
    RecentDecisions,
    population_stability,
)
from tests.test_threshold import _new_queries


def _sketch(values: np.ndarray) -> kll_doubles_sketch:
    sketch = kll_doubles_sketch(400)
    for value in values:
        sketch.update(float(value))
    return sketch


def test_the_ring_keeps_the_last_n_margins_and_decisions_through_storage() -> None:
    ring = RecentDecisions(4)
    for seq, margin in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], start=1):
        ring.add_margin(seq, margin)
        ring.record_decision(escalated=seq % 2 == 0, target_escalation_rate=0.25)
    stored = RecentDecisions.from_bytes(ring.to_bytes(), 4)
    assert stored is not None
    assert sorted(stored.window()) == [0.3, 0.4, 0.5, 0.6]
    assert stored.newest_seq == 6
    assert stored.decided == 4
    reading = stored.reading(_sketch(np.array([0.3, 0.4, 0.5, 0.6])))
    assert reading.realised_escalation_rate == 0.5  # seqs 4 and 6 of 3..6
    assert reading.target_escalation_rate == 0.25
    assert RecentDecisions.from_bytes(ring.to_bytes(), 5) is None  # another window size
    with pytest.raises(ValueError, match="does not follow"):
        stored.add_margin(8, 0.9)


def test_a_rebuilt_ring_knows_no_decision_until_n_new_ones() -> None:
    ring = RecentDecisions.of_history(3, [(5, 0.5), (3, 0.3), (4, 0.4), (2, 0.2)])
    assert sorted(ring.window()) == [0.3, 0.4, 0.5]
    assert ring.newest_seq == 5
    for seq in (6, 7):
        ring.add_margin(seq, 0.1)
        ring.record_decision(escalated=True, target_escalation_rate=0.3)
        assert not ring.full_since(warmup=0)
    ring.add_margin(8, 0.1)
    ring.record_decision(escalated=True, target_escalation_rate=0.3)
    assert ring.full_since(warmup=0)
    assert not ring.full_since(warmup=6)  # seq 6 was within a warm-up of 6


def test_psi_is_near_zero_for_the_same_traffic_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(3)
    long_run = _sketch(rng.random(20_000))
    assert population_stability(rng.random(1000), long_run) < 0.02
    assert population_stability(rng.random(1000) * 0.5, long_run) > 1.0
    # Ties: a long run of a few repeated values (OpenAI's log-probs of 0) gives no empty bin.
    tied = _sketch(np.repeat([0.0, -0.5, -1.0], 1000))
    assert population_stability(np.repeat([0.0, -0.5, -1.0], 100), tied) < 0.01


def test_drift_needs_a_clear_gap_and_clears_below_half_of_it() -> None:
    limits = DriftLimits(rate_tolerance=0.1, psi=0.25)
    assert not limits.drifted(DriftReading(0.38, 0.3, 0.2))
    assert limits.drifted(DriftReading(0.45, 0.3, 0.0))
    assert limits.drifted(DriftReading(0.3, 0.3, 0.3))
    assert not limits.settled(DriftReading(0.36, 0.3, 0.0))  # inside the limit, not yet half
    assert limits.settled(DriftReading(0.34, 0.3, 0.1))


def _decide(
    tenant_id: uuid.UUID, query_id: uuid.UUID, margin: float, rule: threshold.HistoryRule
) -> threshold.Decision:
    with session_scope() as session:
        return threshold.decide(
            session, tenant_id=tenant_id, model_pair="a->b", task_label="drift",
            query_id=query_id, margin=margin, target_escalation_rate=0.3, warmup=5, rule=rule,
        )  # fmt: skip


def test_a_windowed_threshold_is_the_quantile_of_the_last_n_and_replays() -> None:
    tenant_id, query_ids = _new_queries(120)
    rng = random.Random(5)
    margins = [rng.uniform(0.5, 1.0) for _ in range(80)] + [rng.uniform(0, 0.3) for _ in range(40)]
    rule = threshold.HistoryRule(history="window", window=30)
    decisions = [_decide(tenant_id, q, m, rule) for q, m in zip(query_ids, margins, strict=True)]
    for seq, decision in enumerate(decisions[5:], start=6):
        window = margins[max(0, seq - 30) : seq]
        assert decision.window == 30
        assert decision.rank_error == 0.0
        assert decision.threshold == threshold.exact_threshold(window, 0.3)
    last = decisions[-1]
    with session_scope() as session:
        replayed = threshold.replay_threshold(
            session, scope_id=last.scope_id, threshold_version=120,
            target_escalation_rate=0.3, window=30,
        )  # fmt: skip
        all_history = threshold.replay_threshold(
            session, scope_id=last.scope_id, threshold_version=120, target_escalation_rate=0.3
        )
    assert replayed == last.threshold
    assert all_history != last.threshold
    # The last 30 margins are all from the new traffic: the window escalates 30 % of them again.
    assert sum(d.escalate for d in decisions[-20:]) / 20 == pytest.approx(0.3, abs=0.15)


def test_a_shift_moves_the_scope_into_drift_once_and_the_reading_is_stored() -> None:
    tenant_id, query_ids = _new_queries(140)
    rng = random.Random(9)
    margins = [rng.uniform(0.5, 1.0) for _ in range(100)] + [rng.uniform(0, 0.3) for _ in range(40)]
    rule = threshold.HistoryRule(history="all", window=40, drift=DriftLimits(psi=1.0))
    decisions = [_decide(tenant_id, q, m, rule) for q, m in zip(query_ids, margins, strict=True)]
    assert all(d.drift is None for d in decisions[:44])  # N = 40 decisions after W = 5
    assert all(d.drift_state == "ok" for d in decisions[:100])
    detected = [i for i, d in enumerate(decisions) if d.drift_detected]
    assert len(detected) == 1
    assert detected[0] >= 100
    assert decisions[-1].drift_state == "drift"
    with session_scope() as session:
        scope = session.get_one(ThresholdScope, decisions[-1].scope_id)
        assert scope.drift_state == "drift"
        assert scope.margin_psi is not None
        assert scope.margin_psi > 1.0
        # All history: the old traffic keeps the threshold high, so the new margins all escalate.
        assert scope.realised_escalation_rate == pytest.approx(
            sum(d.escalate for d in decisions[-40:]) / 40
        )
        assert scope.realised_escalation_rate is not None
        assert scope.realised_escalation_rate > 0.9


def test_a_ring_of_another_size_is_rebuilt_from_the_history() -> None:
    tenant_id, query_ids = _new_queries(30)
    small = threshold.HistoryRule(history="window", window=10)
    for query_id in query_ids[:20]:
        _decide(tenant_id, query_id, 0.5, small)
    _decide(tenant_id, query_ids[20], 0.5, small)
    larger = threshold.HistoryRule(history="window", window=15)
    decision = _decide(tenant_id, query_ids[21], 0.1, larger)
    assert decision.window == 15
    # The rebuilt window holds the last 15 margins: 14 of 0.5 and the new 0.1.
    assert decision.threshold == 0.5
    assert decision.drift is None  # its decisions are unknown until 15 new ones
