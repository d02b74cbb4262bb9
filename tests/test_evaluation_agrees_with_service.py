"""The evaluation escalates exactly what the running service escalates on the same stream."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest

from services.evaluation.simulate import streaming_escalations
from tests.conftest import WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI

pytestmark = pytest.mark.usefixtures("worker")

RATE = 0.3


def test_same_margins_same_escalations(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=RATE)
    rng = random.Random(4)
    queries = []
    for i in range(40):
        prompt = unique(f"agreement {i}")
        small_tgi.script(prompt, margin=round(rng.random(), 4))
        # One at a time, so that the service sees the stream in this order.
        response = tenant.client.post(
            "/v1/queries", params={"wait": 30}, json={"prompt": prompt}, headers=tenant.headers
        )
        queries.append(response.json())
    assert all(query["status"] == "succeeded" for query in queries)
    assert [query["threshold_version"] for query in queries] == list(range(1, 41))

    margins = np.array([query["margin"] for query in queries])
    offline = streaming_escalations(margins, np.array([RATE]), WARMUP)[0]
    online = [bool(query["escalated"]) for query in queries]
    assert offline.tolist() == online
    assert 5 <= sum(online) <= 20
