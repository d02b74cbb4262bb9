"""Cost of one threshold decision as a scope's history grows, and the sketch's rank error.

    python bench/threshold.py [--sizes 1000,100000,1000000] [--decisions 300] [--k 400]
        [--admin-url postgresql://postgres@127.0.0.1:5432/test]

Creates a throwaway PostgreSQL database; for each size N, a scope whose history already holds N
margins (uniform floats, so no ties hide a rank error), written in bulk by SQL. Then
``--decisions`` decisions run one after another, each as in the small tier: its own transaction
that locks the scope, updates its sketch and appends the margin, then commits. The first
decision of a scope without a sketch builds it from the history once; it is timed apart.

Beside it, the exact rule as it ran before the sketch (an index scan with OFFSET on
(scope_id, margin)) is timed on the same history. The rank error is how far each decision's
threshold sits from the exact p-quantile of its history (a share of |H|), and, for the final
sketch, at p = 0.01 ... 0.99.

Prints a table and writes bench/results/threshold.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch
from sqlalchemy import select, text

from services import threshold
from services.db import get_engine, session_scope
from services.migrate import upgrade_to_head
from services.models import ThresholdScope
from services.tenants import create_tenant
from tests.throwaway_database import throwaway_database

RATE = 0.3
PAIR = "bench/small->bench/large"
PROBES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99)
# Every NOT NULL column of a query, for rows written in bulk.
QUERY_ROWS = """
INSERT INTO queries (id, tenant_id, status, prompt, max_new_tokens, delivery_attempts,
                     reserved_small, reserved_large, created_at, updated_at)
SELECT gen_random_uuid(), :tenant, 'succeeded', 'p', 1, 1, 0, 0, now(), now()
FROM generate_series(1, :count)
RETURNING id
"""
HISTORY_ROWS = """
INSERT INTO margin_history (scope_id, seq, query_id, margin, created_at)
SELECT :scope, row_number() OVER (), id, random(), now()
FROM queries WHERE tenant_id = :tenant
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--k", type=int, default=400)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=Path("bench/results/threshold.json"))
    args = parser.parse_args()

    with throwaway_database(args.admin_url):
        upgrade_to_head()
        rows = [
            measure(int(size), decisions=args.decisions, k=args.k) for size in args.sizes.split(",")
        ]
    smallest = rows[0]
    for row in rows:
        row["decision_p50_vs_smallest"] = round(
            row["decision_p50_ms"] / smallest["decision_p50_ms"], 2
        )
    results: dict[str, Any] = {
        "k": args.k,
        "rank_error_bound": kll_doubles_sketch.get_normalized_rank_error(args.k, False),
        "target_escalation_rate": RATE,
        "decisions_per_size": args.decisions,
        "sizes": rows,
    }
    _print(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def measure(size: int, *, decisions: int, k: int) -> dict[str, Any]:
    print(f"history of {size} margins ...", flush=True)
    tenant_id, scope_id, new_queries = _history(size, decisions)
    rng = np.random.default_rng(size)
    margins = rng.random(decisions)
    timings: list[float] = []
    made: list[threshold.Decision] = []
    build_ms = 0.0
    for i, (query_id, margin) in enumerate(zip(new_queries, margins, strict=True)):
        started = time.perf_counter()
        with session_scope() as session:
            made.append(
                threshold.decide(
                    session, tenant_id=tenant_id, model_pair=PAIR, task_label=None,
                    query_id=query_id, margin=float(margin), target_escalation_rate=RATE,
                    warmup=20, sketch_k=k,
                )
            )  # fmt: skip
        elapsed = 1000 * (time.perf_counter() - started)
        if i == 0:
            build_ms = elapsed  # the scope had no sketch yet: built from the history
        else:
            timings.append(elapsed)
    exact_ms = _time_exact_rule(scope_id, size + decisions)
    errors = _rank_errors(scope_id, size, made, margins)
    sketch = _final_sketch(scope_id)
    history = np.sort(_margins(scope_id))
    probe_errors = [
        threshold.rank_distance(history, threshold.sketch_threshold(sketch, p), p) for p in PROBES
    ]
    return {
        "history": size,
        "decision_p50_ms": round(statistics.median(timings), 3),
        "decision_p99_ms": round(float(np.percentile(timings, 99)), 3),
        "first_decision_builds_sketch_ms": round(build_ms, 1),
        "exact_rule_p50_ms": round(statistics.median(exact_ms), 3),
        "sketch_bytes": len(sketch.serialize()),
        "rank_error_max": round(max(errors), 5),
        "rank_error_mean": round(float(np.mean(errors)), 5),
        "rank_error_max_over_p": round(max(probe_errors), 5),
        "stored_bound": made[-1].rank_error,
    }


def _history(size: int, decisions: int) -> tuple[uuid.UUID, int, list[uuid.UUID]]:
    """A tenant and scope with ``size`` margins stored, and ``decisions`` fresh query ids."""
    with session_scope() as session:
        tenant_id = create_tenant(
            session, name=f"bench-{size}-{uuid.uuid4().hex[:6]}", target_escalation_rate=RATE
        ).tenant.id
        scope = ThresholdScope(tenant_id=tenant_id, model_pair=PAIR, task_label="")
        session.add(scope)
        session.flush()
        params = {"tenant": tenant_id, "scope": scope.id}
        session.execute(text(QUERY_ROWS), {**params, "count": size})
        session.execute(text(HISTORY_ROWS), params)
        scope.margin_count = size
        new_queries = list(session.scalars(text(QUERY_ROWS), {**params, "count": decisions}).all())
    with get_engine().connect() as connection:
        connection.execute(text("ANALYZE queries"))
        connection.execute(text("ANALYZE margin_history"))
        connection.commit()
    return tenant_id, scope.id, new_queries


def _time_exact_rule(scope_id: int, size: int, repeats: int = 50) -> list[float]:
    """The quantile as the service read it before the sketch, on the index it had."""
    with get_engine().connect() as connection:
        connection.execute(
            text(
                "CREATE INDEX IF NOT EXISTS bench_margin_history_scope_margin "
                "ON margin_history (scope_id, margin)"
            )
        )
        connection.commit()
        offset = int(threshold.quantile_index(size, RATE))
        statement = text(
            "SELECT margin FROM margin_history WHERE scope_id = :scope "
            "ORDER BY margin OFFSET :offset LIMIT 1"
        )
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            connection.execute(statement, {"scope": scope_id, "offset": offset}).scalar_one()
            timings.append(1000 * (time.perf_counter() - started))
        connection.execute(text("DROP INDEX bench_margin_history_scope_margin"))
        connection.commit()
    return timings


def _rank_errors(
    scope_id: int, size: int, made: list[threshold.Decision], margins: np.ndarray
) -> list[float]:
    """Each decision's distance from the exact quantile of the history it was made with
    (threshold.rank_distance, counted against the sorted base history plus the new margins)."""
    base = np.sort(_margins(scope_id, most_seq=size))
    errors = []
    for i, decision in enumerate(made):
        assert decision.threshold is not None
        extra = margins[: i + 1]
        total = size + i + 1
        target = int(threshold.quantile_index(total, RATE))
        first = int(np.searchsorted(base, decision.threshold, "left")) + int(
            np.count_nonzero(extra < decision.threshold)
        )
        last = (
            int(np.searchsorted(base, decision.threshold, "right"))
            + int(np.count_nonzero(extra <= decision.threshold))
            - 1
        )
        inside = first <= target <= last
        errors.append(0.0 if inside else min(abs(target - first), abs(target - last)) / total)
    return errors


def _margins(scope_id: int, most_seq: int | None = None) -> np.ndarray:
    statement = "SELECT margin FROM margin_history WHERE scope_id = :scope"
    params: dict[str, int] = {"scope": scope_id}
    if most_seq is not None:
        statement += " AND seq <= :most"
        params["most"] = most_seq
    with get_engine().connect() as connection:
        rows = connection.execute(text(statement), params)
        return np.fromiter((row[0] for row in rows), dtype=np.float64)


def _final_sketch(scope_id: int) -> kll_doubles_sketch:
    with session_scope() as session:
        stored = session.scalar(select(ThresholdScope.sketch).where(ThresholdScope.id == scope_id))
    assert stored is not None
    return kll_doubles_sketch.deserialize(stored)


def _print(results: dict[str, Any]) -> None:
    print(
        f"k = {results['k']}: rank-error bound {results['rank_error_bound']:.4f} "
        f"(99 % confidence), p = {results['target_escalation_rate']}"
    )
    header = (
        f"{'history':>9} {'decision p50':>13} {'p99':>9} {'vs 10^3':>8} {'exact rule':>11} "
        f"{'build once':>11} {'sketch':>8} {'rank err max':>13} {'max over p':>11}"
    )
    print(header)
    for row in results["sizes"]:
        print(
            f"{row['history']:>9} {row['decision_p50_ms']:>10.3f} ms "
            f"{row['decision_p99_ms']:>6.2f} ms {row['decision_p50_vs_smallest']:>7.2f}x "
            f"{row['exact_rule_p50_ms']:>8.2f} ms "
            f"{row['first_decision_builds_sketch_ms']:>8.0f} ms {row['sketch_bytes']:>7}B "
            f"{row['rank_error_max']:>13.4f} {row['rank_error_max_over_p']:>11.4f}"
        )


if __name__ == "__main__":
    main()
