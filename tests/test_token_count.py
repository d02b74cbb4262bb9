"""The prompt token estimate used when a server reports no count: against a real tokenizer it
charges at least about the real count, and never more than the budget reserved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from transformers import AutoTokenizer

from services.llm.model_files import prepare_local_model
from services.llm.token_count import estimate_tokens
from services.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
TEXTS = {
    "question": "What is the capital of France?",
    "review": "Is the following review positive or negative? I loved every minute of it.",
    "digits": "3.14159265358979 2718281828 1234567890 0x7fff 192.168.0.1",
    "code": "def f(x):\n    return {k: v for k, v in x.items() if v is not None}  # filter\n",
    "german": "Größenwahnsinnige Straßenbahnfahrer überqueren die Brücke.",
    "russian": "Привет, как дела? Это тестовое предложение.",
    "chinese": "我们今天去公园散步，天气很好。",  # noqa: RUF001 - a Chinese comma, on purpose
    "emoji": "🙂🚀🔥 ok 👍🏽",
    "spaces": "a    b     c      d",
    "prose": (ROOT / "README.md").read_text()[:3000],
    "python": (ROOT / "services/cascade.py").read_text()[:3000],
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    source = prepare_local_model(None, cache_dir=get_settings().cache_dir, console=Console())
    return AutoTokenizer.from_pretrained(source)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_the_estimate_rarely_undercounts_and_stays_within_the_reservation(
    tokenizer: Any, name: str
) -> None:
    text = TEXTS[name]
    real = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    estimate = estimate_tokens(text)
    assert estimate >= 0.9 * real, (estimate, real)
    assert estimate <= max(1.7 * real, 2)
    assert estimate <= len(text.encode())  # the budget's worst case reserves one per byte


def test_a_non_empty_prompt_is_never_zero_tokens() -> None:
    assert estimate_tokens("") == 0
    assert all(estimate_tokens(text) >= 1 for text in ("a", " ", "\n", "?", "é", "  "))
