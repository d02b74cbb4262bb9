"""A finished batch's output and error files, in OpenAI's line format.

The output file holds a line for each request answered (its reply, as the endpoint's route
answers it); the error file a line for each request that was invalid, refused (over budget),
failed, cancelled or never sent because the batch was stopped first. Lines follow the order of
the input file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.batches.files import store_output_file
from services.batches.lines import CHAT_ENDPOINT
from services.models import Batch, BatchRequest, QueryStatus
from services.openai_wire import batch_objects, replies
from services.openai_wire.outcome import QueryOutcome, read_batch_outcomes

# Why a request that was never sent has no answer, by how its batch was stopped.
NOT_SENT = {
    "cancelled": ("batch_cancelled", "the batch was cancelled before this request was sent"),
    "expired": ("batch_expired", "the batch expired before this request was sent"),
}


@dataclass(frozen=True)
class Results:
    output: list[str]
    errors: list[str]

    @property
    def total(self) -> int:
        return len(self.output) + len(self.errors)


def collect_results(session: Session, batch: Batch, *, stopped_as: str | None) -> Results:
    """The batch's lines, once every request it sent has finished. ``stopped_as``
    (``cancelled`` or ``expired``) says why the requests never sent have no answer."""
    outcomes = read_batch_outcomes(session, batch.id)
    output: list[str] = []
    errors: list[str] = []
    requests = session.scalars(
        select(BatchRequest).where(BatchRequest.batch_id == batch.id).order_by(BatchRequest.line)
    )
    for request in requests:
        if request.query_id is not None:
            outcome = outcomes[request.query_id]
            if outcome.status == QueryStatus.SUCCEEDED:
                reply = _reply(batch.endpoint, outcome, request.body or {})
                line = batch_objects.output_line(
                    request.id, request.custom_id, outcome.query_id, reply
                )
                output.append(line)
                continue
            code, message = _query_error(outcome)
        elif request.error_code is not None:
            code, message = request.error_code, request.error_message or request.error_code
        else:
            code, message = NOT_SENT[stopped_as or "cancelled"]
        errors.append(batch_objects.error_line(request.id, request.custom_id, code, message))
    return Results(output=output, errors=errors)


def write_result_files(session: Session, batch: Batch, results: Results) -> None:
    """Store the output and error files (each only if it has a line) and name them."""
    stem = batch_objects.batch_id(batch.id)
    if results.output:
        output = store_output_file(
            session, tenant_id=batch.tenant_id, filename=f"{stem}_output.jsonl",
            lines=results.output,
        )  # fmt: skip
        batch.output_file_id = output.id
    if results.errors:
        errors = store_output_file(
            session, tenant_id=batch.tenant_id, filename=f"{stem}_error.jsonl",
            lines=results.errors,
        )  # fmt: skip
        batch.error_file_id = errors.id


def _reply(endpoint: str, outcome: QueryOutcome, body: dict[str, Any]) -> dict[str, Any]:
    model = str(body.get("model", ""))
    if endpoint == CHAT_ENDPOINT:
        return replies.chat_completion(outcome, model=model)
    return replies.text_completion(outcome, model=model)


def _query_error(outcome: QueryOutcome) -> tuple[str, str]:
    if outcome.status == QueryStatus.CANCELLED:
        return "query_cancelled", f"query {outcome.query_id} was cancelled before it was answered"
    code = outcome.error_code or "query_failed"
    return code, f"query {outcome.query_id} failed: {outcome.error_message or code}"
