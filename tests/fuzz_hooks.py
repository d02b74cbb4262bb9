"""Schemathesis hooks for tests/test_fuzz_api.py, loaded through SCHEMATHESIS_HOOKS.

Two rules of the API depend on more than a JSON schema can say, so a request that the schema
calls valid may still be refused with 422: a webhook URL must resolve to an address webhooks may
be sent to (DNS and TWOTIER_WEBHOOK_ALLOWED_NETWORKS decide), and class labels must differ in more
than case and spaces. In requests generated as valid, these hooks put a URL the tests allow and
make the labels differ; requests generated as invalid are sent as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# Long polls (`wait`, up to 60 s) would only make the run slow; no worker answers here.
LONGEST_WAIT_S = 0.1
MOST_WAIT_S = 60
# 127.0.0.0/8 is in the tests' TWOTIER_WEBHOOK_ALLOWED_NETWORKS; nothing listens on port 9.
ALLOWED_WEBHOOK_URL = "http://127.0.0.1:9/fuzz"
LONGEST_CHOICE = 100


def shorter_wait(value: Any) -> Any:
    """A valid `wait` over LONGEST_WAIT_S, shortened; any other value is left as generated, so
    that an invalid one is still refused."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return value
    if isinstance(value, bool) or not LONGEST_WAIT_S < seconds <= MOST_WAIT_S:
        return value
    return LONGEST_WAIT_S


def distinct_choices(choices: list[str]) -> list[str]:
    """The labels, each made to differ from the earlier ones in more than case and spaces."""
    seen: set[str] = set()
    distinct = []
    for position, choice in enumerate(choices):
        label = choice
        while (key := "".join(label.split()).lower()) in seen:
            suffix = f"{position}{len(seen)}"
            label = choice.strip()[: LONGEST_CHOICE - len(suffix)] + suffix
        seen.add(key)
        distinct.append(label)
    return distinct


def generated_as_valid(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None)
    mode = getattr(generation, "mode", None)
    return bool(getattr(mode, "is_positive", False))


@schemathesis.hook
def before_call(context: Any, case: Any, **_: Any) -> None:
    if isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = shorter_wait(case.query["wait"])
    body = case.body
    if not generated_as_valid(case) or not isinstance(body, dict):
        return
    for field in ("url", "webhook_url"):
        if isinstance(body.get(field), str):
            body[field] = ALLOWED_WEBHOOK_URL
    choices = body.get("choices")
    if isinstance(choices, list) and all(isinstance(choice, str) for choice in choices):
        body["choices"] = distinct_choices(choices)
