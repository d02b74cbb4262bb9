"""`twotier eval-live`'s prompts: a template per data set, the completion style sent to the
model as plain text (no chat template), and its class margin read off the real local model."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.cli import main as twotier
from services.evaluation.prompts import read_examples, template_for
from services.evaluation.scores import auroc
from services.llm.http_backend import HttpBackend
from services.llm.local_model import LocalBackend, LocalModel
from services.llm.registry import build_backend, local_model
from services.models import Tier
from services.runtime import Runtime
from services.settings import Settings, get_settings
from tests.scripted_openai import ScriptedOpenAI
from tests.scripted_tgi import ScriptedTGI

CHAT_MARKERS = ("<|im_start|>", "<|im_end|>", "system", "assistant")
REVIEWS = [
    {"id": 0, "text": "a gorgeous , witty , seductive movie .", "label": 1},
    {"id": 1, "text": "the acting is stiff and the plot is a mess .", "label": 0},
    {"id": 2, "text": "one of the best films of the year .", "label": 1},
    {"id": 3, "text": "dull , lifeless and far too long .", "label": 0},
    {"id": 4, "text": "a warm , funny and moving story .", "label": 1},
]


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_completion_prompt_is_plain_few_shot_text(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "sst2_tiny.jsonl", REVIEWS[:3])
    [example] = read_examples(data, style="completion", shots=2)
    assert example.prompt == (
        "Review: a gorgeous , witty , seductive movie .\nSentiment: positive\n\n"
        "Review: the acting is stiff and the plot is a mess .\nSentiment: negative\n\n"
        "Review: one of the best films of the year .\nSentiment:"
    )
    assert (example.choices, example.gold, example.query) == (
        ["negative", "positive"], "positive", "one of the best films of the year .")  # fmt: skip
    [chat] = read_examples(data, style="chat", shots=2)
    assert chat.prompt == (
        "Classify the review's sentiment as one of: negative, positive. "
        f"Answer with the label only.\n\n{example.prompt}"
    )


def test_multiple_choice_and_passage_prompts_in_the_completion_style(tmp_path: Path) -> None:
    questions = [
        {"question": "2 + 2 =", "choices": ["3", "4", "5", "6"], "answer_idx": 1},
        {"question": "The sun is a", "choices": ["star", "planet", "moon"], "answer_idx": 0},
    ]
    [question] = read_examples(write_rows(tmp_path / "arc_easy_tiny.jsonl", questions), shots=1)
    assert question.prompt == (
        "Question: 2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
        "Question: The sun is a\nA. star\nB. planet\nC. moon\nAnswer:"
    )
    assert (question.choices, question.gold) == (["A", "B", "C"], "A")
    passages = [
        {"question": "is ice cold", "context": "Ice is frozen water.", "label": 1},
        {"question": "is fire wet?", "context": "Fire burns.", "label": 0},
    ]
    [passage] = read_examples(write_rows(tmp_path / "boolq_tiny.jsonl", passages), shots=1)
    assert passage.prompt == (
        "Passage: Ice is frozen water.\nQuestion: is ice cold?\nAnswer: yes\n\n"
        "Passage: Fire burns.\nQuestion: is fire wet?\nAnswer:"
    )
    assert (passage.choices, passage.gold, passage.query) == (["no", "yes"], "no", "is fire wet?")


@pytest.mark.parametrize(
    ("file_name", "row", "template"),
    [
        ("sst2_validation.jsonl", {"text": "t", "label": 1}, "sentiment"),
        ("kotzias_yelp.jsonl", {"text": "t", "label": 1}, "sentiment"),
        ("rt_polarity_vader.jsonl", {"text": "t", "label": 1}, "sentiment"),
        ("fever_bigbench.jsonl", {"text": "t", "claim": "c", "label": 1}, "fact-check"),
        ("boolq_validation.jsonl", {"question": "q", "context": "c", "label": 1}, "passage-yes-no"),
        ("mmlu_dev.jsonl", {"question": "q", "choices": ["a"], "answer_idx": 0}, "multiple-choice"),
        ("commonsenseqa_validation.jsonl", {"question": "q", "choices": ["a"], "answer_idx": 0},
         "multiple-choice"),
        ("mine.jsonl", {"question": "q", "choices": ["a"], "answer_idx": 0}, "multiple-choice"),
        ("mine.jsonl", {"question": "q", "context": "c", "label": 0}, "passage-yes-no"),
        ("mine.jsonl", {"claim": "c", "label": 0}, "fact-check"),
        ("mine.jsonl", {"text": "t", "label": "spam"}, "classification"),
    ],
)  # fmt: skip
def test_a_data_set_gets_its_template_by_name_else_by_fields(
    file_name: str, row: dict[str, object], template: str
) -> None:
    assert template_for(Path(file_name), row).name == template


def test_plain_classification_needs_the_class_names(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "mine.jsonl", [{"text": "t", "label": 0}] * 2)
    with pytest.raises(ValueError, match="needs --labels"):
        list(read_examples(data, shots=1))
    [example] = read_examples(data, labels=["ham", "spam"], shots=1)
    assert example.prompt == "Text: t\nAnswer: ham\n\nText: t\nAnswer:"
    assert example.gold == "ham"


def test_auroc_counts_ties_as_half_and_needs_both_classes() -> None:
    right = np.array([True, True, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), right) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), right) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), right) == 0.5
    assert auroc(np.array([0.9, 0.3, 0.3, 0.1]), right) == 0.875  # 3.5 of 4 pairs
    assert auroc(np.array([0.9, 0.8]), np.array([True, True])) is None


@pytest.fixture(scope="module")
def bundled() -> LocalModel:
    """The bundled model, the very one `twotier eval-live` loads for a local small tier."""
    settings = get_settings()
    return local_model(None, settings.cache_dir, max_batch_size=settings.small.local_max_batch_size)


def test_a_raw_prompt_reaches_the_local_model_as_written(bundled: LocalModel) -> None:
    prompt = "Review: fine .\nSentiment:"
    raw_ids = bundled.encode(prompt, raw=True)
    assert bundled.tokenizer.decode(raw_ids) == prompt
    wrapped = bundled.tokenizer.decode(bundled.encode(prompt))
    assert "<|im_start|>" in wrapped
    assert prompt in wrapped
    generation = LocalBackend(bundled, model="m", top_n_tokens=5, raw_prompts=True).generate(
        prompt, max_new_tokens=1
    )
    assert generation.input_tokens == len(raw_ids)


def test_raw_prompts_go_to_tgi_as_written_and_to_openai_as_a_completion(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("Review: fine .\nSentiment:")
    small_tgi.script(prompt, first_token=[(" positive", 0.7), (" negative", 0.2)])
    with closing(Runtime(get_settings(), raw_prompts=True)) as runtime:
        generation = runtime.backend(Tier.SMALL).generate(prompt, max_new_tokens=1)
    assert small_tgi.calls[prompt] == 1  # the inputs were the prompt itself
    assert generation.first_token_candidates[0].text == " positive"

    server = ScriptedOpenAI("chat-model").start()
    try:
        server.script(prompt, answer="positive")
        tier = {"backend": "openai", "url": server.url, "model": "chat-model", "openai_api": "chat"}
        settings = Settings(small=tier, large=tier)
        for raw_prompts in (True, False):
            backend = build_backend(Tier.SMALL, settings, raw_prompts=raw_prompts)
            assert isinstance(backend, HttpBackend)
            with backend:
                backend.generate(prompt, max_new_tokens=1)
    finally:
        server.stop()
    raw, chat = server.requests
    assert raw["prompt"] == prompt
    assert "messages" not in raw
    assert chat["messages"] == [{"role": "user", "content": prompt}]


@pytest.fixture
def local_small_tier(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The small tier is the bundled local model, for this test's commands."""
    monkeypatch.setenv("TWOTIER_SMALL__BACKEND", "local")
    monkeypatch.delenv("TWOTIER_SMALL__URL")
    monkeypatch.delenv("TWOTIER_SMALL__MODEL")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()  # the environment is put back after this


def test_eval_live_completion_records_the_local_models_class_token_margin(
    tmp_path: Path, local_small_tier: None, bundled: LocalModel
) -> None:
    data = write_rows(tmp_path / "sst2_tiny.jsonl", REVIEWS)
    out = tmp_path / "records.jsonl"
    recorded = CliRunner().invoke(twotier, [
        "eval-live", str(data), "--shots", "2", "--prompt-style", "completion", "--out", str(out),
    ])  # fmt: skip
    assert recorded.exit_code == 0, recorded.output
    assert "3 queries, completion prompts, sentiment template." in recorded.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    examples = list(read_examples(data, style="completion", shots=2))
    assert [r["gold"] for r in records] == ["positive", "negative", "positive"]
    for record, example in zip(records, examples, strict=True):
        assert not any(marker in example.prompt for marker in CHAT_MARKERS)
        # The class names' own first tokens after the raw prompt, scored apart from the
        # candidates the record was made from: they carry the margin and the answer.
        ids = bundled.encode(example.prompt, raw=True)
        names = [
            bundled.tokenizer(f" {name}", add_special_tokens=False)["input_ids"]
            for name in example.choices
        ]
        negative, positive = map(math.exp, bundled.score_continuations(ids, names))
        assert negative + positive > 0.5  # the model answers with a class name
        assert record["small_answer"] == ("positive" if positive > negative else "negative")
        assert record["signals"]["margin"] == pytest.approx(abs(positive - negative), abs=0.02)
