"""A worker killed with SIGKILL in the middle of a batch: the batch still completes, each of its
lines answered and charged once, from what PostgreSQL holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import openai
from sqlalchemy import func, select

from services.db import session_scope
from services.models import ModelCall
from tests.celery_workers import CeleryBeat, CeleryWorker
from tests.conftest import TenantApi, forget_earlier_work
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread
from tests.waiting import wait_for

SETTINGS = {"TWOTIER_BATCH_MAX_IN_FLIGHT": "2", "TWOTIER_BATCH_FEED_INTERVAL_S": "1"}


def test_a_batch_survives_its_worker_killed_mid_call(
    log_dir: Path,
    api_server: ServerThread,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    forget_earlier_work()
    prompts = [unique(f"line {i} of a batch whose worker dies") for i in range(5)]
    for i, prompt in enumerate(prompts):
        small_tgi.script(prompt, answer=f"kept {i}", hold=i < 2)
    tenant = make_tenant()
    client = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=tenant.api_key, timeout=30)
    lines = [
        {
            "custom_id": f"k-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "twotier", "messages": [{"role": "user", "content": prompt}]},
        }
        for i, prompt in enumerate(prompts)
    ]
    text = "\n".join(json.dumps(line) for line in lines).encode()
    victim = CeleryWorker(f"victim-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=SETTINGS)
    survivor = beat = None
    try:
        victim.start()
        input_file = client.files.create(file=("lines.jsonl", text), purpose="batch").id
        batch = client.batches.create(
            input_file_id=input_file, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert small_tgi.arrived[prompts[0]].wait(timeout=30)
        assert small_tgi.arrived[prompts[1]].wait(timeout=30)
        victim.kill()  # mid-call, holding the batch's two queries in flight
        small_tgi.release(prompts[0])
        small_tgi.release(prompts[1])

        survivor = CeleryWorker(
            f"survivor-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=SETTINGS
        ).start()
        beat = CeleryBeat(log_dir=log_dir, env=SETTINGS).start()
        done = wait_for(
            lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
            timeout=90,
            what=f"batch {batch.id} to complete",
            interval=0.25,
        )
        assert done.output_file_id is not None
        output = [
            json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()
        ]
        assert [line["custom_id"] for line in output] == [f"k-{i}" for i in range(5)]
        answers = [line["response"]["body"]["choices"][0]["message"]["content"] for line in output]
        assert answers == [f"kept {i}" for i in range(5)]
        query_ids = [uuid.UUID(line["response"]["request_id"]) for line in output]
        with session_scope() as session:
            charges = dict(
                session.execute(
                    select(ModelCall.query_id, func.count())
                    .where(ModelCall.query_id.in_(query_ids))
                    .group_by(ModelCall.query_id)
                ).all()
            )
        assert charges == dict.fromkeys(query_ids, 1)  # answered again, charged once
        assert [small_tgi.calls[p] for p in prompts] == [2, 2, 1, 1, 1]
    finally:
        client.close()
        for process in (beat, survivor, victim):
            if process is not None:
                process.stop()
