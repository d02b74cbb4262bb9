"""The bodies of OpenAI's `POST /v1/chat/completions` and `POST /v1/completions`, as far as the
cascade can honour them.

A parameter the cascade cannot honour is refused, never ignored: the small model answers
greedily and its first-token distribution is read as the model gives it, so sampling
(temperature other than 0 or 1, top_p, penalties), several answers (n > 1), tools, log-probs
and structured output would change either the answer or the margin the escalation is decided
on. Such a parameter is refused with code ``unsupported_parameter`` or ``unsupported_value``
(OpenAI's own codes for them), one the API does not know with ``unknown_parameter``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError

from services.llm.labels import check_distinct_labels
from services.storable import TaskLabel, WebhookUrl, storable_text

StoredText = Annotated[str, AfterValidator(storable_text)]
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(storable_text),
]

# Parameters accepted only at these values: each is what greedy decoding already does.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "temperature": (0, 1),
    "top_p": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False, 0),
    "echo": (False,),
}
# Parameters the cascade has no counterpart for, accepted only when empty.
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "top_logprobs",
    "logit_bias",
    "stop",
    "suffix",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
)


def _same(value: Any, neutral: Any) -> bool:
    """``value`` is ``neutral`` as JSON reads it: 0 and 0.0 alike, but never true for 1."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return bool(value == neutral)


class OpenAIBody(BaseModel):
    """Unknown parameters are refused, and values keep their JSON type (strict)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator(*NEUTRAL_VALUES, check_fields=False)
    @classmethod
    def _neutral(cls, value: Any, info: Any) -> Any:
        allowed = NEUTRAL_VALUES[info.field_name]
        if value is not None and not any(_same(value, neutral) for neutral in allowed):
            shown = " or ".join(repr(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
            raise PydanticCustomError(
                "unsupported_value",
                "{name} must be {allowed}: twotier answers greedily, with one answer whose "
                "first-token margin decides the escalation",
                {"name": info.field_name, "allowed": shown},
            )
        return value

    @field_validator(*UNSUPPORTED, check_fields=False)
    @classmethod
    def _unsupported(cls, value: Any, info: Any) -> Any:
        if value not in (None, [], {}):
            raise PydanticCustomError(
                "unsupported_parameter",
                "{name} is not supported by twotier's cascade",
                {"name": info.field_name},
            )
        return value


class TwotierOptions(BaseModel):
    """The query fields OpenAI's bodies have no place for (``extra_body={"twotier": {...}}``
    in the SDK)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: TaskLabel | None = None
    choices: list[Label] | None = Field(default=None, min_length=2, max_length=50)
    webhook_url: WebhookUrl | None = None

    @field_validator("choices")
    @classmethod
    def _distinct_choices(cls, choices: list[str] | None) -> list[str] | None:
        if choices is not None:
            check_distinct_labels(choices)
        return choices


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    text: StoredText | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, kind: str) -> str:
        if kind != "text":
            raise PydanticCustomError(
                "unsupported_value",
                "content parts of type {kind} are not supported: send text",
                {"kind": kind},
            )
        return kind


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: StoredText | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # the SDK may send it; there is nothing to hide


Metadata = dict[Annotated[str, Field(max_length=64)], Annotated[StoredText, Field(max_length=512)]]


class CommonBody(OpenAIBody):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)
    user: str | None = None  # accepted as OpenAI does, and not stored
    seed: int | None = None  # greedy decoding gives the same answer with any seed
    service_tier: str | None = None
    twotier: TwotierOptions | None = None
    # Accepted at their neutral values only (NEUTRAL_VALUES) or when empty (UNSUPPORTED).
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    stop: str | list[str] | None = None


class ChatCompletionCreate(CommonBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    store: bool | None = None  # twotier keeps every query; OpenAI's flag changes nothing here
    modalities: list[Literal["text"]] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, response_format: dict[str, Any] | None) -> dict[str, Any] | None:
        if response_format is not None and response_format != {"type": "text"}:
            raise PydanticCustomError(
                "unsupported_value",
                "response_format must be of type text: twotier does not constrain answers to "
                "JSON (twotier.choices constrains them to labels)",
            )
        return response_format


class CompletionCreate(CommonBody):
    prompt: StoredText | list[StoredText]
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise PydanticCustomError(
                "unsupported_value", "prompt must be one text: send one request per prompt"
            )
        return prompt

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
