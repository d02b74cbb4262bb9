"""From a request body in OpenAI's format to a twotier query.

``chat_query`` and ``completion_query`` are the one place where that conversion happens: the
HTTP front door calls them, and so can anything else that receives such bodies (each line of a
batch file is one), after ``parse_chat_body``/``parse_completion_body`` read a raw body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from services.errors import InvalidParameter, ModelNotFound
from services.openai_wire.errors import invalid_parameter
from services.openai_wire.requests import (
    ChatCompletionCreate,
    ChatMessage,
    CommonBody,
    CompletionCreate,
)
from services.queries import NewQuery

DEFAULT_MODEL = "twotier"
SPEAKERS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def model_names(aliases: Sequence[str]) -> list[str]:
    """The names `model` may take: the cascade's own, then the configured aliases."""
    return [DEFAULT_MODEL, *(alias for alias in dict.fromkeys(aliases) if alias != DEFAULT_MODEL)]


def parse_chat_body(body: Mapping[str, Any]) -> ChatCompletionCreate:
    try:
        return ChatCompletionCreate.model_validate(body)
    except ValidationError as invalid:
        raise invalid_parameter(invalid.errors()) from None


def parse_completion_body(body: Mapping[str, Any]) -> CompletionCreate:
    try:
        return CompletionCreate.model_validate(body)
    except ValidationError as invalid:
        raise invalid_parameter(invalid.errors()) from None


def chat_query(body: ChatCompletionCreate, *, models: Sequence[str]) -> NewQuery:
    """The query a chat completion request asks for."""
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise InvalidParameter(
            "max_tokens and max_completion_tokens differ: send one of them",
            param="max_completion_tokens",
            code="invalid_value",
        )
    return _query(
        body,
        prompt=prompt_of_messages(body.messages),
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        models=models,
    )


def completion_query(body: CompletionCreate, *, models: Sequence[str]) -> NewQuery:
    """The query a (legacy) completion request asks for."""
    if not body.prompt_text:
        raise InvalidParameter("prompt must not be empty", param="prompt", code="invalid_value")
    return _query(body, prompt=body.prompt_text, max_new_tokens=body.max_tokens, models=models)


def prompt_of_messages(messages: Sequence[ChatMessage]) -> str:
    """One user message is the prompt as it is, the same query `POST /v1/queries` would make
    of it; a conversation becomes one prompt that names each turn's speaker ("System: ...",
    "User: ...", "Assistant: ...", a blank line between turns), which the small model reads
    as one user turn."""
    if not any(message.role == "user" for message in messages):
        raise InvalidParameter(
            "messages must hold at least one message with role user",
            param="messages",
            code="invalid_value",
        )
    if len(messages) == 1:
        prompt = messages[0].text
        if not prompt:
            raise InvalidParameter(
                "the message must not be empty", param="messages[0].content", code="invalid_value"
            )
        return prompt
    return "\n\n".join(f"{SPEAKERS[message.role]}: {message.text}" for message in messages)


def _query(
    body: CommonBody, *, prompt: str, max_new_tokens: int | None, models: Sequence[str]
) -> NewQuery:
    if body.model not in models:
        raise ModelNotFound(
            f"the model {body.model!r} does not exist; this service answers as "
            + ", ".join(repr(name) for name in models),
            details={"param": "model"},
        )
    options = body.twotier
    return NewQuery(
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        task=options.task if options else None,
        metadata=dict(body.metadata) if body.metadata is not None else None,
        choices=options.choices if options else None,
        webhook_url=options.webhook_url if options else None,
    )
