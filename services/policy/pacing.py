"""The large-alone step: a query goes straight to the large model, with no small call, when the
tenant's budget per query has left enough unspent to pay for it.

A tenant with an average budget per query B has been allowed B for every query it sent so far,
the current one included. When what it has spent leaves the large call's cost c_l within that
allowance,

    B * (answered + 1) - spent >= c_l,

the query is answered by the large model alone: the small call would cost c_s and, at best,
give the same answer. The rule needs no labels and no knowledge of how many queries will come.
With B >= c_l it holds for every query (the large model alone is affordable on average); with a
smaller B it spends, as it accrues, what the cascade leaves unspent: the warm-up, margins tied
at the threshold that cannot escalate, escalations the budget guard refused. The paper's code
instead sends the stream's last queries to L alone once its remaining budget pays L for all of
them, which needs the stream's length in advance.

Under ``TWOTIER_BUDGET_PACING_QUERIES`` (N) the surplus is spent by the threshold instead:
the rate is p(B) plus what the answered queries left unspent, spread over the next N queries,

    p_t = clip(p(B) + (B * answered - spent) / (c_l * N), 0, 1),

so that the least confident queries get the surplus rather than whichever query comes next,
and a query goes to L alone only when B >= c_l (the large model alone is affordable on
average). On the recorded chains this spends 96 % of B and gains more than the large-alone
step on three tasks of four (docs/evaluation.md). ``paced_rate`` and ``large_alone_when_paced``
are the rules; the service (``rates.target_escalation_rate``, ``escalation.goes_large_alone``)
and the offline evaluation (``services.policy.offline.PacedThreshold``) both ask them.

``covers_large`` is the one test; the service (``escalation.goes_large_alone``) and the
offline evaluation (``services.evaluation.simulate.Stream.run``) both ask it. The service counts
the tenant's last ``RECENT_QUERIES`` answered queries and their spend (``answered_and_spent``),
so the surplus is B's over a recent window rather than over the tenant's whole history.

B is an average the tenant aims at, not a limit: two small-tier workers deciding at the same
moment may both spend one surplus (at most one large call each too many, and only then). The
hard limit is the budget's (``services.budgets``) and holds regardless: a large-alone query
reserves its large call before it moves, and gives back its small reservation.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.models import ModelCall, Query, QueryStatus

# The window of the tenant's answered queries whose spend the service compares with B.
RECENT_QUERIES = 1000
Amount = TypeVar("Amount", Decimal, float, npt.NDArray[np.float64])
Rate = TypeVar("Rate", float, npt.NDArray[np.float64])
BoolArray = npt.NDArray[np.bool_]


def surplus(*, budget_per_query: Amount, answered: int, spent: Amount) -> Amount:
    """What the budget per query allowed for the answered queries and the current one, less
    what was spent: B * (answered + 1) - spent."""
    return budget_per_query * (answered + 1) - spent


def covers_large(
    *, budget_per_query: Amount, answered: int, spent: Amount, large_cost: Amount
) -> bool | BoolArray:
    """Whether the surplus pays the large call: then the query goes to the large model alone."""
    left = surplus(budget_per_query=budget_per_query, answered=answered, spent=spent)
    return (
        np.greater_equal(left, large_cost) if isinstance(left, np.ndarray) else left >= large_cost
    )


def paced_rate(
    rate: Rate, *, budget_per_query: Rate, answered: int, spent: Rate, large_cost: Rate, window: int
) -> Rate:
    """p(B) with what the ``answered`` queries left unspent spread over the next ``window``:
    clip(rate + (B * answered - spent) / (c_l * window), 0, 1). Overspending lowers it."""
    unspent = budget_per_query * answered - spent
    paced = np.clip(rate + unspent / (large_cost * window), 0.0, 1.0)
    return paced if isinstance(paced, np.ndarray) else float(paced)  # type: ignore[return-value]


def large_alone_when_paced(*, budget_per_query: Amount, large_cost: Amount) -> bool | BoolArray:
    """Under pacing a query skips the small model only when B pays the large call for every
    query: the surplus goes to the threshold, not to L alone."""
    return covers_large(
        budget_per_query=budget_per_query, answered=0, spent=budget_per_query * 0,
        large_cost=large_cost,
    )  # fmt: skip


def answered_and_spent(
    session: Session, *, tenant_id: uuid.UUID, large_cost: Decimal, exclude: uuid.UUID
) -> tuple[int, Decimal]:
    """The tenant's recent answered queries (at most ``RECENT_QUERIES``: succeeded, or
    escalated and waiting for the large model) and what they spent: the ledger's charges, and
    ``large_cost`` for each large call still to come. Queries still on the small tier are
    left out of both: their allowance is not yet earned nor their cost known."""
    recent = (
        select(Query.id, Query.status)
        .where(
            Query.tenant_id == tenant_id,
            Query.status.in_((QueryStatus.SUCCEEDED, QueryStatus.ESCALATED)),
            Query.id != exclude,
        )
        .order_by(Query.created_at.desc())
        .limit(RECENT_QUERIES)
        .subquery()
    )
    charged = (
        select(func.coalesce(func.sum(ModelCall.cost), 0))
        .where(ModelCall.query_id.in_(select(recent.c.id)))
        .scalar_subquery()
    )
    waiting = case((recent.c.status == QueryStatus.ESCALATED, 1), else_=0)
    answered, large_to_come, spent = session.execute(
        select(func.count(recent.c.id), func.coalesce(func.sum(waiting), 0), charged)
    ).one()
    return int(answered), Decimal(spent) + int(large_to_come) * large_cost
