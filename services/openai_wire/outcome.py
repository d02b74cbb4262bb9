"""What a finished query tells an OpenAI-format caller: its answer, the tokens and money it
was charged over both tiers, and how the cascade decided."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.errors import QueryCancelled, QueryFailed
from services.models import TERMINAL_STATUSES, ModelCall, Query, QueryStatus


@dataclass(frozen=True)
class TierCall:
    model: str
    input_tokens: int
    output_tokens: int
    cost: Decimal


@dataclass(frozen=True)
class QueryOutcome:
    query_id: uuid.UUID
    status: QueryStatus
    created: int  # seconds since 1970, as OpenAI's `created`
    max_new_tokens: int
    answer: str | None
    tier: str | None
    escalated: bool | None
    margin: float | None
    threshold: float | None
    threshold_version: int | None
    decision: str | None
    calls: dict[str, TierCall]  # by tier: the ledger's rows, each call charged once
    error_code: str | None
    error_message: str | None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def prompt_tokens(self) -> int:
        return sum(call.input_tokens for call in self.calls.values())

    @property
    def completion_tokens(self) -> int:
        return sum(call.output_tokens for call in self.calls.values())

    def cost(self, tier: str | None = None) -> Decimal:
        """What the tenant was charged for the query (for one tier's call, with ``tier``)."""
        if tier is None:
            return sum((call.cost for call in self.calls.values()), Decimal(0))
        call = self.calls.get(tier)
        return call.cost if call is not None else Decimal(0)

    @property
    def answering_call(self) -> TierCall | None:
        return self.calls.get(self.tier) if self.tier else None

    @property
    def finish_reason(self) -> str:
        """``length`` when the answering call generated as many tokens as it was allowed (the
        answer may be cut short), ``stop`` otherwise."""
        call = self.answering_call
        cut = call is not None and call.output_tokens >= self.max_new_tokens
        return "length" if cut else "stop"

    def answered(self) -> QueryOutcome:
        """This outcome, or QueryFailed or QueryCancelled."""
        if self.status == QueryStatus.FAILED:
            raise QueryFailed(
                f"query {self.query_id} failed: {self.error_message or self.error_code}",
                code=self.error_code or "query_failed",
                query_id=str(self.query_id),
            )
        if self.status == QueryStatus.CANCELLED:
            raise QueryCancelled(
                f"query {self.query_id} was cancelled before it was answered",
                query_id=str(self.query_id),
            )
        return self


def read_outcome(session: Session, query: Query) -> QueryOutcome:
    rows = session.scalars(select(ModelCall).where(ModelCall.query_id == query.id))
    return outcome_of(query, list(rows))


def read_batch_outcomes(session: Session, batch_id: uuid.UUID) -> dict[uuid.UUID, QueryOutcome]:
    """The outcomes of every query of a batch, by query id, in two statements."""
    batch_queries = session.scalars(select(Query).where(Query.batch_id == batch_id)).all()
    calls: dict[uuid.UUID, list[ModelCall]] = {query.id: [] for query in batch_queries}
    for row in session.scalars(
        select(ModelCall)
        .join(Query, Query.id == ModelCall.query_id)
        .where(Query.batch_id == batch_id)
    ):
        calls[row.query_id].append(row)
    return {query.id: outcome_of(query, calls[query.id]) for query in batch_queries}


def outcome_of(query: Query, ledger_rows: list[ModelCall]) -> QueryOutcome:
    """The outcome of a query and its ledger rows."""
    calls = {
        row.tier: TierCall(row.model, row.input_tokens, row.output_tokens, Decimal(row.cost))
        for row in ledger_rows
    }
    created_at = query.created_at
    if created_at.tzinfo is None:  # SQLite keeps no zone; the column holds UTC
        created_at = created_at.replace(tzinfo=UTC)
    return QueryOutcome(
        query_id=query.id,
        status=QueryStatus(query.status),
        created=int(created_at.timestamp()),
        max_new_tokens=query.max_new_tokens,
        answer=query.answer,
        tier=query.answered_by,
        escalated=query.escalated,
        margin=query.margin,
        threshold=query.threshold,
        threshold_version=query.threshold_version,
        decision=query.decision,
        calls=calls,
        error_code=query.error_code,
        error_message=query.error_message,
    )
