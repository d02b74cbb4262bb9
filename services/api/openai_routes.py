"""OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions` and
`GET /v1/models`, answered by the cascade in OpenAI's wire format (docs/openai.md).

A call submits a query as `POST /v1/queries` does, waits for it as the long poll does (no
thread, no database connection held), and answers it; its errors come in OpenAI's error shape
(services/api/error_responses.py, services/openai_wire/errors.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from services import queries
from services.api.access_log import arrived_at
from services.api.deps import SettingsDep, TenantDep
from services.api.long_poll import read_until_finished
from services.api.submission import submit
from services.errors import AnswerNotReady, ModelNotFound
from services.models import Tenant
from services.openai_wire import conversion, replies
from services.openai_wire.outcome import QueryOutcome, read_outcome
from services.openai_wire.requests import ChatCompletionCreate, CompletionCreate
from services.settings import Settings

PATH_PREFIXES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/files",
    "/v1/batches",
)
router = APIRouter(prefix="/v1", tags=["openai"])
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200)]


def speaks_openai(path: str) -> bool:
    """Whether a request path is one of these routes or the Files and Batch APIs'
    (file_routes.py, batch_routes.py), whose errors take OpenAI's shape."""
    return any(path == prefix or path.startswith(f"{prefix}/") for prefix in PATH_PREFIXES)


async def _answered(
    caller: TenantDep,
    request: Request,
    settings: Settings,
    new_query: queries.NewQuery,
    idempotency_key: str | None,
) -> QueryOutcome:
    """Submit the query and wait, up to ``openai_wait_s``, for its answer."""
    deadline = arrived_at(request) + settings.openai_wait_s
    view, _ = await submit(
        caller, new_query=new_query, idempotency_key=idempotency_key, settings=settings
    )

    async def read() -> QueryOutcome:
        return await caller.run(lambda session, tenant: _outcome(session, tenant, view.id))

    outcome = await read_until_finished(
        read, query_id=view.id, is_finished=lambda got: got.finished, deadline=deadline
    )
    if not outcome.finished:
        raise AnswerNotReady(
            f"query {view.id} has not finished after {settings.openai_wait_s:g} s; it goes on: "
            f"poll GET /v1/queries/{view.id} for its answer",
            query_id=str(view.id),
        )
    return outcome.answered()


def _outcome(session: Session, tenant: Tenant, query_id: uuid.UUID) -> QueryOutcome:
    return read_outcome(session, queries.get_query(session, tenant_id=tenant.id, query_id=query_id))


def _reply(
    outcome: QueryOutcome, *, stream: bool, body: dict[str, Any], chunks: list[dict[str, Any]]
) -> JSONResponse | StreamingResponse:
    headers = replies.extension_headers(outcome)
    if stream:
        events = replies.server_sent_events(chunks)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return JSONResponse(body, headers=headers)


@router.post("/chat/completions")
async def create_chat_completion(
    body: ChatCompletionCreate,
    request: Request,
    caller: TenantDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """A chat completion from the cascade; `stream: true` sends it as server-sent events once
    the query has finished."""
    models = conversion.model_names(settings.openai_model_aliases)
    new_query = conversion.chat_query(body, models=models)
    outcome = await _answered(caller, request, settings, new_query, idempotency_key)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _reply(
        outcome,
        stream=bool(body.stream),
        body=replies.chat_completion(outcome, model=body.model),
        chunks=replies.chat_chunks(outcome, model=body.model, include_usage=include_usage),
    )


@router.post("/completions")
async def create_completion(
    body: CompletionCreate,
    request: Request,
    caller: TenantDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """A text completion from the cascade (OpenAI's legacy completions)."""
    models = conversion.model_names(settings.openai_model_aliases)
    new_query = conversion.completion_query(body, models=models)
    outcome = await _answered(caller, request, settings, new_query, idempotency_key)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _reply(
        outcome,
        stream=bool(body.stream),
        body=replies.text_completion(outcome, model=body.model),
        chunks=replies.completion_chunks(outcome, model=body.model, include_usage=include_usage),
    )


@router.get("/models")
async def list_models(caller: TenantDep, settings: SettingsDep) -> dict[str, Any]:
    """The names `model` may take: `twotier` and the configured aliases."""
    return replies.model_list(conversion.model_names(settings.openai_model_aliases))


@router.get("/models/{model}")
async def get_model(model: str, caller: TenantDep, settings: SettingsDep) -> dict[str, Any]:
    if model not in conversion.model_names(settings.openai_model_aliases):
        raise ModelNotFound(f"the model {model!r} does not exist", details={"param": "model"})
    return replies.model_object(model)
