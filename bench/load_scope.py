"""Scenario ``scope`` of bench/load.py: decisions per second in ONE scope when many small-tier
calls finish at once.

Every small-tier answer is recorded in one transaction that locks the query, charges the call,
then locks the scope's row (services/threshold.py) to append the margin and read the threshold,
and commits; decisions in one scope (one tenant, one task label) are therefore serialised. This
runs that code as a worker does, in this process: ``burst`` threads each run
``cascade.answer_on_tier`` for a query of the same scope against a model server (bench/load_tgi.py)
that holds every call until all have arrived, then answers them together.

Each SQL statement is timed through SQLAlchemy's cursor events: the lock wait is the time the
``SELECT ... FROM threshold_scopes ... FOR UPDATE`` took, the hold is from its return to the
end of the thread's transaction (commit included). Decisions per second count from the first
lock request to the last commit. The control runs the same burst with every query in a scope
of its own (its own task label): if it is much faster, the row lock is the ceiling; if not, the
process (connection pool, GIL) or the database is.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from load_http import percentiles_ms
from load_stack import ModelServer, Stack
from pipeline import _wait_until
from sqlalchemy import event

from services import cascade
from services.db import get_engine, session_scope
from services.logs import configure_logging
from services.migrate import upgrade_to_head
from services.models import Tenant, Tier
from services.queries import NewQuery, submit_query
from services.runtime import Runtime
from services.settings import get_settings
from services.tenants import create_tenant


class StatementClock:
    """Per thread: when the scope lock was asked for and granted, and when the commit that
    releases it was sent."""

    def __init__(self) -> None:
        self.asked: dict[int, float] = {}
        self.granted: dict[int, float] = {}
        self.committing: dict[int, float] = {}
        engine = get_engine()
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._commit)

    def _commit(self, _conn: Any) -> None:
        self.committing[threading.get_ident()] = time.perf_counter()

    @staticmethod
    def _is_scope_lock(statement: str) -> bool:
        return "threshold_scopes" in statement and "FOR UPDATE" in statement

    def _before(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self._is_scope_lock(statement):
            self.asked.setdefault(threading.get_ident(), time.perf_counter())

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self._is_scope_lock(statement):
            self.granted[threading.get_ident()] = time.perf_counter()

    def clear(self) -> None:
        self.asked.clear()
        self.granted.clear()
        self.committing.clear()


def scope_decisions(args: Any, stack: Stack) -> dict[str, Any]:
    """Run ``args.scope_rounds`` bursts in one scope and as many in distinct scopes."""
    configure_logging(level="WARNING", json=True)
    server = ModelServer("bench/small", latency_s=0.0, max_concurrent=10_000,
                         log=stack.logs / "tgi-scope.log")  # fmt: skip
    stack.servers["small"] = server
    for tier in ("SMALL", "LARGE"):
        os.environ.update({f"TWOTIER_{tier}__BACKEND": "tgi", f"TWOTIER_{tier}__URL": server.url,
                           f"TWOTIER_{tier}__MODEL": f"bench/{tier.lower()}"})  # fmt: skip
    get_settings.cache_clear()
    upgrade_to_head()
    with session_scope() as session:
        tenant_id = create_tenant(session, name="scope", target_escalation_rate=0.3).tenant.id
    clock = StatementClock()
    runtime = Runtime(get_settings())
    warm = _submit(tenant_id, ["one"] * args.scope_warmup)
    with ThreadPoolExecutor(16) as pool:  # the scope's warm-up (W = 20) and some history
        list(pool.map(lambda q: cascade.answer_on_tier(q, Tier.SMALL, runtime), warm))
    rounds: dict[str, list[dict[str, Any]]] = {"one_scope": [], "distinct_scopes": []}
    for number in range(args.scope_rounds):
        for mode, runs in rounds.items():
            labels = [
                "one" if mode == "one_scope" else f"s{number}-{i}" for i in range(args.scope_burst)
            ]
            runs.append(_burst(_submit(tenant_id, labels), server, clock, runtime))
    pool_status = get_engine().pool.status()
    summary: dict[str, Any] = {
        "burst": args.scope_burst,
        "rounds": args.scope_rounds,
        "history_before": args.scope_warmup,
        "db_pool": pool_status,
    }
    for mode, runs in rounds.items():
        summary[mode] = {
            "decisions_per_s": statistics.median(r["decisions_per_s"] for r in runs),
            "lock_wait": percentiles_ms([w for r in runs for w in r["lock_wait_s"]]),
            "lock_hold": percentiles_ms([h for r in runs for h in r["lock_hold_s"]]),
            "of_which_commit": percentiles_ms([c for r in runs for c in r["commit_s"]]),
            "burst_seconds": statistics.median(r["seconds"] for r in runs),
            "calls_held_at_once": min(r["calls_held"] for r in runs),
            "per_round_decisions_per_s": [r["decisions_per_s"] for r in runs],
        }
    one, distinct = summary["one_scope"], summary["distinct_scopes"]
    summary["one_vs_distinct"] = round(one["decisions_per_s"] / distinct["decisions_per_s"], 2)
    return summary


def _submit(tenant_id: uuid.UUID, labels: list[str]) -> list[uuid.UUID]:
    """One query per task label, stored as the API stores them."""
    settings = get_settings()
    ids = []
    with session_scope() as session:
        tenant = session.get_one(Tenant, tenant_id)
        for label in labels:
            request = NewQuery(prompt=f"scope {uuid.uuid4().hex}", max_new_tokens=16,
                               task=label, metadata=None)  # fmt: skip
            submitted = submit_query(
                session, tenant=tenant, request=request, idempotency_key=None, settings=settings
            )
            session.flush()
            ids.append(submitted.query.id)
    return ids


def _burst(
    ids: list[uuid.UUID], server: ModelServer, clock: StatementClock, runtime: Runtime
) -> dict[str, Any]:
    """All calls held at the model server, then answered at once; each thread's timings."""
    clock.clear()
    done: dict[int, float] = {}

    def answer(query_id: uuid.UUID) -> None:
        cascade.answer_on_tier(query_id, Tier.SMALL, runtime)
        done[threading.get_ident()] = time.perf_counter()

    server.hold()
    server.reset()
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = [pool.submit(answer, query_id) for query_id in ids]
        held = _all_arrived(server)
        server.release()
        for future in futures:
            future.result()
    threads = [t for t in done if t in clock.granted]
    waits = [clock.granted[t] - clock.asked[t] for t in threads]
    holds = [done[t] - clock.granted[t] for t in threads]
    commits = [done[t] - clock.committing[t] for t in threads]
    first = min(clock.asked[t] for t in threads)
    span = max(done[t] for t in threads) - first
    return {"decisions_per_s": round(len(threads) / span, 1), "seconds": round(span, 3),
            "lock_wait_s": waits, "lock_hold_s": holds, "commit_s": commits,
            "calls_held": held}  # fmt: skip


def _all_arrived(server: ModelServer, *, settle_s: float = 1.0) -> int:
    """Wait until the calls in flight stop growing (the client may cap its connections)."""
    last = {"count": -1, "since": time.monotonic()}

    def settled() -> bool:
        count = server.gauge()["current"]
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
        return count > 0 and time.monotonic() - last["since"] >= settle_s

    _wait_until(settled, what="the burst's calls at the model server", timeout_s=60)
    return int(last["count"])
