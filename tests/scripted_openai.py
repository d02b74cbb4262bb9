"""An OpenAI-compatible HTTP server (chat and legacy completions, with log-probs; ``GET
/v1/models``) whose answers and first-token distributions a test scripts. Like OpenAI and
vLLM, it refuses more than 20 top log-probs and reports ``usage`` (words stand for tokens);
``sends_usage = False`` makes it a server that reports none."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.scripted_tgi import distribution_with_margin
from tests.server_thread import ServerThread

MAX_TOP_LOGPROBS = 20


class ScriptedOpenAI:
    def __init__(self, model: str, *, api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        self.answers: dict[str, tuple[str, list[tuple[str, float]]]] = {}
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.sends_usage = True
        self._server = ServerThread(self._app())
        self.url = self._server.url

    def script(self, prompt: str, *, answer: str, margin: float = 0.9) -> None:
        self.answers[prompt] = (answer, distribution_with_margin(margin))

    def start(self) -> ScriptedOpenAI:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request) -> JSONResponse:
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return _error(401, "invalid_api_key", "Incorrect API key provided")
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "test"}
            return JSONResponse({"object": "list", "data": [model]})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            refusal = self._refusal(request, body, body.get("top_logprobs"))
            if refusal is not None:
                return refusal
            prompt = body["messages"][-1]["content"]
            answer, first = self._answer(prompt)
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in first]
            later = [
                {"token": word, "logprob": -0.1, "bytes": None, "top_logprobs": []}
                for word in answer.split()[1:]
            ]  # one entry per generated token
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "logprobs": {"content": [{"token": first[0][0], "logprob": top[0]["logprob"],
                                          "bytes": None, "top_logprobs": top}, *later]},
                "finish_reason": "stop",
            }  # fmt: skip
            return JSONResponse(self._completion("chat.completion", prompt, answer, choice))

        @app.post("/v1/completions")
        async def completions(request: Request) -> JSONResponse:
            body = await request.json()
            refusal = self._refusal(request, body, body.get("logprobs"))
            if refusal is not None:
                return refusal
            prompt = body["prompt"]
            answer, first = self._answer(prompt)
            choice = {
                "index": 0,
                "text": answer,
                "logprobs": {"tokens": [first[0][0], *answer.split()[1:]],
                             "token_logprobs": [math.log(first[0][1])],
                             "top_logprobs": [{t: math.log(p) for t, p in first}],
                             "text_offset": [0]},
                "finish_reason": "stop",
            }  # fmt: skip
            return JSONResponse(self._completion("text_completion", prompt, answer, choice))

        return app

    def _refusal(self, request: Request, body: dict[str, Any], top: Any) -> JSONResponse | None:
        self.requests.append(body)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_api_key", "Incorrect API key provided")
        if body.get("model") != self.model:
            return _error(404, "model_not_found", f"The model `{body.get('model')}` does not exist")
        if not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            return _error(400, "invalid_request_error", "top_logprobs must be between 0 and 20")
        return None

    def _answer(self, prompt: str) -> tuple[str, list[tuple[str, float]]]:
        self.calls[prompt] += 1
        answer, first = self.answers.get(prompt, ("large answer", distribution_with_margin(0.9)))
        return answer, sorted(first, key=lambda t: t[1], reverse=True)

    def _completion(
        self, kind: str, prompt: str, answer: str, choice: dict[str, Any]
    ) -> dict[str, Any]:
        completion: dict[str, Any] = {
            "id": f"cmpl-{self.calls.total()}",
            "object": kind,
            "created": 0,
            "model": self.model,
            "choices": [choice],
        }
        if self.sends_usage:
            completion["usage"] = {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(answer.split()),
                "total_tokens": len(prompt.split()) + len(answer.split()),
            }
        return completion


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": code, "param": None, "code": code}}, status
    )
