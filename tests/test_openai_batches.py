"""The Files and Batch APIs, called with OpenAI's own Python SDK over real HTTP: the API server
in a thread of this process, a real worker process (at most two batch queries in flight),
scripted TGI servers behind it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch
from sqlalchemy import func, select, update

from services.db import session_scope
from services.models import Batch as BatchRow
from services.models import BatchRequest, ModelCall, Query, Tenant, utcnow
from services.tenants import set_budget
from tests.celery_workers import CeleryWorker
from tests.conftest import TenantApi, forget_earlier_work
from tests.openai_sdk import api_with, sdk_clients
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread
from tests.waiting import wait_for
from workers.app import app as celery_app

MAX_IN_FLIGHT = 2
MAX_REQUESTS = 20
MAX_BYTES = 20_000
SETTINGS = {
    "TWOTIER_BATCH_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    "TWOTIER_BATCH_MAX_REQUESTS": str(MAX_REQUESTS),
    "TWOTIER_BATCH_FILE_MAX_BYTES": str(MAX_BYTES),
}
FINISHED = {"completed", "failed", "cancelled", "expired"}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def worker(log_dir: Path) -> Iterator[CeleryWorker]:
    forget_earlier_work()
    process = CeleryWorker(f"batches-{uuid.uuid4().hex[:6]}", log_dir=log_dir, env=SETTINGS)
    yield process.start()
    process.stop()


@pytest.fixture(scope="module")
def api_server(worker: CeleryWorker) -> Iterator[ServerThread]:
    with api_with(SETTINGS) as server:
        yield server


@pytest.fixture
def sdk(api_server: ServerThread) -> Iterator[Callable[[str], openai.OpenAI]]:
    with sdk_clients(api_server) as client_of:
        yield client_of


def chat_line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "twotier", "messages": [{"role": "user", "content": prompt}], **body},
    }


def upload(client: openai.OpenAI, lines: list[dict[str, Any] | str]) -> str:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    return client.files.create(file=("requests.jsonl", text.encode()), purpose="batch").id


def wait_finished(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Batch:
    return wait_for(
        lambda: (batch := client.batches.retrieve(batch_id)).status in FINISHED and batch,
        timeout=timeout,
        what=f"batch {batch_id} to finish",
        interval=0.2,
    )


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines()]


def batch_requests(batch_id: str) -> list[BatchRequest]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(BatchRequest)
                .where(BatchRequest.batch_id == uuid.UUID(batch_id.removeprefix("batch_")))
                .order_by(BatchRequest.line)
            )
        )


def test_a_batch_answers_every_valid_line_and_puts_the_invalid_ones_in_the_error_file(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    client = sdk(tenant.api_key)
    prompts = [unique(f"batch question {i}") for i in range(5)]
    for i, prompt in enumerate(prompts):
        small_tgi.script(prompt, answer=f"answer {i}")
    lines: list[dict[str, Any] | str] = [chat_line(f"q-{i}", p) for i, p in enumerate(prompts)]
    lines.insert(2, chat_line("hot", unique("sampled"), temperature=0.7))
    lines.append({**chat_line("elsewhere", unique("wrong url")), "url": "/v1/embeddings"})
    input_file = upload(client, lines)
    assert client.files.retrieve(input_file).purpose == "batch"

    created = client.batches.create(
        input_file_id=input_file,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert created.status == "validating"
    assert created.metadata == {"job": "nightly"}
    batch = wait_finished(client, created.id)

    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (7, 5)
    assert batch.request_counts.failed == 2
    assert batch.completed_at is not None
    assert batch.in_progress_at is not None
    output = jsonl(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"q-{i}" for i in range(5)]
    for i, line in enumerate(output):
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        reply = line["response"]["body"]
        assert reply["object"] == "chat.completion"
        assert reply["choices"][0]["message"]["content"] == f"answer {i}"
        assert reply["twotier"]["query_id"] == line["response"]["request_id"]
        assert reply["usage"]["completion_tokens"] == 2  # "answer i", one token a word
    errors = {line["custom_id"]: line for line in jsonl(client, batch.error_file_id)}
    assert set(errors) == {"hot", "elsewhere"}
    assert errors["hot"]["response"] is None
    assert errors["hot"]["error"]["code"] == "unsupported_value"
    assert "temperature" in errors["hot"]["error"]["message"]
    assert errors["elsewhere"]["error"]["code"] == "invalid_url"
    with session_scope() as session:  # each answered line is a query of the batch, charged once
        query_ids = [uuid.UUID(line["response"]["request_id"]) for line in output]
        batch_ids = set(session.scalars(select(Query.batch_id).where(Query.id.in_(query_ids))))
        charged = session.scalar(
            select(func.count()).select_from(ModelCall).where(ModelCall.query_id.in_(query_ids))
        )
    assert batch_ids == {uuid.UUID(batch.id.removeprefix("batch_"))}
    assert charged == 5
    assert all(small_tgi.calls[prompt] == 1 for prompt in prompts)


def test_interactive_queries_go_ahead_of_a_queued_batch(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    client = sdk(tenant.api_key)
    prompts = [unique(f"slow batch line {i}") for i in range(8)]
    for prompt in prompts:
        small_tgi.script(prompt, hold=True)
    batch = client.batches.create(
        input_file_id=upload(client, [chat_line(f"b-{i}", p) for i, p in enumerate(prompts)]),
        endpoint=CHAT,
        completion_window="24h",
    )
    try:
        assert all(small_tgi.arrived[p].wait(timeout=30) for p in prompts[:MAX_IN_FLIGHT])
        interactive = tenant.wait_finished(tenant.submit(unique("an interactive question"))["id"])
        assert interactive["status"] == "succeeded"
        # The batch sent no more than its share while the interactive query ran.
        waiting = [r for r in batch_requests(batch.id) if r.query_id is None]
        assert len(waiting) == len(prompts) - MAX_IN_FLIGHT
        assert all(small_tgi.calls[p] == 0 for p in prompts[MAX_IN_FLIGHT:])
    finally:
        for prompt in prompts:
            small_tgi.release(prompt)
    assert wait_finished(client, batch.id).status == "completed"
    with session_scope() as session:
        batch_finished = session.scalars(
            select(Query.finished_at).where(
                Query.id.in_([r.query_id for r in batch_requests(batch.id)])
            )
        ).all()
        interactive_finished = session.get_one(Query, uuid.UUID(interactive["id"])).finished_at
    assert interactive_finished is not None
    assert all(finished is not None for finished in batch_finished)
    assert interactive_finished < max(f for f in batch_finished if f is not None)


def test_a_cancelled_batch_stops_sending_and_cancels_what_runs(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    client = sdk(tenant.api_key)
    prompts = [unique(f"cancelled line {i}") for i in range(5)]
    for prompt in prompts:
        small_tgi.script(prompt, hold=True)
    batch = client.batches.create(
        input_file_id=upload(client, [chat_line(f"c-{i}", p) for i, p in enumerate(prompts)]),
        endpoint=CHAT,
        completion_window="24h",
    )
    try:
        assert all(small_tgi.arrived[p].wait(timeout=30) for p in prompts[:MAX_IN_FLIGHT])
        assert client.batches.cancel(batch.id).status == "cancelling"
        cancelled = wait_finished(client, batch.id)
    finally:
        for prompt in prompts:
            small_tgi.release(prompt)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None
    assert cancelled.output_file_id is None
    assert cancelled.request_counts is not None
    assert cancelled.request_counts.model_dump() == {"total": 5, "completed": 0, "failed": 5}
    codes = {
        line["custom_id"]: line["error"]["code"] for line in jsonl(client, cancelled.error_file_id)
    }
    assert codes == {
        "c-0": "query_cancelled",
        "c-1": "query_cancelled",
        "c-2": "batch_cancelled",
        "c-3": "batch_cancelled",
        "c-4": "batch_cancelled",
    }
    assert all(small_tgi.calls[p] == 0 for p in prompts[MAX_IN_FLIGHT:])
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_requests_the_budget_cannot_pay_fail_into_the_error_file(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, tenant.tenant_id).name
        set_budget(session, name=name, period="monthly", hard_limit=Decimal(0), soft_limit=None)
    client = sdk(tenant.api_key)
    lines: list[dict[str, Any] | str] = [
        chat_line(f"p-{i}", unique(f"costly {i}")) for i in range(3)
    ]
    batch = wait_finished(
        client,
        client.batches.create(
            input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h"
        ).id,
    )
    assert batch.status == "completed"  # the batch itself does not fail
    errors = jsonl(client, batch.error_file_id)
    assert [line["custom_id"] for line in errors] == ["p-0", "p-1", "p-2"]
    assert {line["error"]["code"] for line in errors} == {"insufficient_quota"}
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(Query).where(Query.tenant_id == tenant.tenant_id)
        )
    assert count == 0  # nothing reserved, nothing charged


def test_completions_batches_answer_in_the_text_completion_format(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    client = sdk(tenant.api_key)
    prompt = unique("complete this")
    small_tgi.script(prompt, answer="done it")
    line = {
        "custom_id": "only",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "twotier", "prompt": prompt, "max_tokens": 8},
    }
    batch = client.batches.create(
        input_file_id=upload(client, [line]), endpoint="/v1/completions", completion_window="24h"
    )
    [output] = jsonl(client, wait_finished(client, batch.id).output_file_id)
    assert output["response"]["body"]["object"] == "text_completion"
    assert output["response"]["body"]["choices"][0]["text"] == "done it"


def test_files_are_checked_on_upload_and_belong_to_their_tenant(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    unique: Callable[[str], str],
) -> None:
    owner, other = make_tenant(), make_tenant()
    client = sdk(owner.api_key)
    with pytest.raises(openai.BadRequestError) as too_many:
        upload(client, [chat_line(f"n-{i}", "q") for i in range(MAX_REQUESTS + 1)])
    assert too_many.value.code == "too_many_requests"
    with pytest.raises(openai.BadRequestError) as too_large:
        upload(client, [chat_line("big", "x" * MAX_BYTES)])
    assert too_large.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as not_jsonl:
        upload(client, [chat_line("fine", "q"), "not json"])
    assert not_jsonl.value.code == "invalid_jsonl"
    assert "line 2" in not_jsonl.value.message
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
    assert wrong_purpose.value.param == "purpose"

    file_id = upload(client, [chat_line("kept", unique("kept"))])
    assert file_id in [f.id for f in client.files.list(purpose="batch")]
    assert json.loads(client.files.content(file_id).text)["custom_id"] == "kept"
    with pytest.raises(openai.NotFoundError):
        sdk(other.api_key).files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        sdk(other.api_key).batches.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError) as bad_endpoint:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert bad_endpoint.value.param == "endpoint"
    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_a_bad_key_is_an_authentication_error(sdk: Callable[[str], openai.OpenAI]) -> None:
    client = sdk("tt_not-a-key")
    with pytest.raises(openai.AuthenticationError):
        client.files.create(file=("a.jsonl", b"{}"), purpose="batch")
    with pytest.raises(openai.AuthenticationError):
        client.batches.list()


def test_batches_are_listed_newest_first_and_page_with_after(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    unique: Callable[[str], str],
) -> None:
    client = sdk(make_tenant().api_key)
    file_id = upload(client, [chat_line("one", unique("listed"))])
    made = [
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2]
    assert first.has_more is True
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == made[:1]
    assert rest.has_more is False
    for batch_id in made:
        wait_finished(client, batch_id)


def test_a_batch_past_its_completion_window_expires_with_what_it_answered(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    client = sdk(tenant.api_key)
    prompts = [unique(f"line of a batch that runs out of time {i}") for i in range(4)]
    for i, prompt in enumerate(prompts):
        small_tgi.script(prompt, hold=i > 0)
    batch = client.batches.create(
        input_file_id=upload(client, [chat_line(f"e-{i}", p) for i, p in enumerate(prompts)]),
        endpoint=CHAT,
        completion_window="24h",
    )
    batch_uuid = uuid.UUID(batch.id.removeprefix("batch_"))
    try:
        # e-0 answered, so the feeder sent e-2 beside e-1 (both held)
        assert small_tgi.arrived[prompts[2]].wait(timeout=30)
        with session_scope() as session:  # 24 hours later
            session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_uuid)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        celery_app.send_task("twotier.feed_batches", queue="maintenance")
        expired = wait_finished(client, batch.id)
    finally:
        for prompt in prompts:
            small_tgi.release(prompt)
    assert expired.status == "expired"
    assert expired.expired_at is not None
    [answered] = jsonl(client, expired.output_file_id)
    assert answered["custom_id"] == "e-0"
    codes = [line["error"]["code"] for line in jsonl(client, expired.error_file_id)]
    assert codes == ["query_cancelled", "query_cancelled", "batch_expired"]  # e-1, e-2, e-3
    assert small_tgi.calls[prompts[3]] == 0
