"""The prompts ``twotier eval-live`` gives the small tier: a template per kind of data set,
written in one of two styles.

- ``completion``: worked examples and the query as plain text for the model to continue
  ("Review: ...\\nSentiment: positive", then the query's "Sentiment:"), sent with no chat
  template. The next token is then a class name's, so the class margin is over what the
  model would really answer. The default: a small model reads it far better (docs/evaluation.md).
- ``chat``: an instruction before the same examples and query, sent as a user message in the
  model's chat template, as a chat user would ask.

A template knows how to show a row and the line its answer follows; which one a data set gets
is found from its file's name (``DATA_SET_TEMPLATES``), else from its rows' fields.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["classification", "multiple-choice"]
PromptStyle = Literal["chat", "completion"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("completion", "chat")
DEFAULT_PROMPT_STYLE: PromptStyle = "completion"


@dataclass(frozen=True)
class Example:
    query: str  # the bare question, for the trained baselines
    prompt: str
    choices: list[str]
    gold: str


@dataclass(frozen=True)
class Template:
    name: str
    kind: Kind
    instruction: str  # chat style only; "{labels}" stands for the class names
    show: Callable[[dict[str, Any]], str]  # the row as the prompt shows it, without its answer
    cue: str  # what the answer follows, at the start of the row's last line
    labels: tuple[str, ...] = ()  # class names in label-index order; () for --labels to give
    query_field: str = "text"  # the row's bare question, for the trained baselines


def _options(row: dict[str, Any]) -> str:
    options = "\n".join(
        f"{letter}. {choice}"
        for letter, choice in zip(string.ascii_uppercase, row["choices"], strict=False)
    )
    return f"Question: {row['question']}\n{options}"


def _passage(row: dict[str, Any]) -> str:
    question = str(row["question"]).strip()
    return f"Passage: {row['context']}\nQuestion: {question.rstrip('?')}?"


TEMPLATES = {
    template.name: template
    for template in [
        Template(
            "classification",
            "classification",
            "Classify the text as one of: {labels}. Answer with the label only.",
            lambda row: f"Text: {row['text']}",
            "Answer:",
        ),
        Template(
            "sentiment",
            "classification",
            "Classify the review's sentiment as one of: {labels}. Answer with the label only.",
            lambda row: f"Review: {row['text']}",
            "Sentiment:",
            ("negative", "positive"),
        ),
        Template(
            "fact-check",
            "classification",
            "Say whether the claim is true or false. Answer with the label only.",
            lambda row: f"Claim: {row['claim']}",
            "True or false:",
            ("false", "true"),
            query_field="claim",
        ),
        Template(
            "passage-yes-no",
            "classification",
            "Answer the question about the passage with yes or no only.",
            _passage,
            "Answer:",
            ("no", "yes"),
            query_field="question",
        ),
        Template(
            "multiple-choice",
            "multiple-choice",
            "Answer the multiple-choice question with the letter of the correct option only.",
            _options,
            "Answer:",
            query_field="question",
        ),
    ]
}

# A data set file whose name starts with one of these gets its template (the longest match).
DATA_SET_TEMPLATES = {
    "sst2": "sentiment",
    "rt_polarity": "sentiment",
    "kotzias": "sentiment",
    "imdb": "sentiment",
    "fever": "fact-check",
    "boolq": "passage-yes-no",
    "mmlu": "multiple-choice",
    "arc_easy": "multiple-choice",
    "arc_challenge": "multiple-choice",
    "openbookqa": "multiple-choice",
    "commonsenseqa": "multiple-choice",
}


def template_for(path: Path, first_row: dict[str, Any]) -> Template:
    """The data set's template: by its file's name, else by its rows' fields (choices: multiple
    choice; a passage and a question: yes/no; a claim: fact check; else plain text classes)."""
    stem = path.stem.lower()
    named = [prefix for prefix in DATA_SET_TEMPLATES if stem.startswith(prefix)]
    if named:
        return TEMPLATES[DATA_SET_TEMPLATES[max(named, key=len)]]
    if "choices" in first_row:
        return TEMPLATES["multiple-choice"]
    if {"context", "question"} <= first_row.keys():
        return TEMPLATES["passage-yes-no"]
    if "claim" in first_row:
        return TEMPLATES["fact-check"]
    return TEMPLATES["classification"]


def template_of_file(path: Path) -> Template:
    """``template_for`` the data set in ``path``, from its name and first row."""
    with path.open() as handle:
        first = next((line for line in handle if line.strip()), "{}")
    return template_for(path, json.loads(first))


def read_examples(
    path: Path,
    *,
    template: Template | None = None,
    style: PromptStyle = DEFAULT_PROMPT_STYLE,
    labels: list[str] | None = None,
    shots: int,
) -> Iterator[Example]:
    """The rows after the first ``shots`` (the worked examples in every prompt) as prompts.

    ``template`` defaults to ``template_for`` the file; ``labels`` (class names in
    label-index order) to the template's own.
    """
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    template = template or template_for(path, rows[0])
    names = list(labels or template.labels)
    if template.kind == "classification" and not names:
        raise ValueError(f"the {template.name} template needs --labels (names in index order)")
    demos, rest = rows[:shots], rows[shots:]
    instruction = template.instruction.format(labels=", ".join(names))
    opening = f"{instruction}\n\n" if style == "chat" else ""
    shown = "".join(f"{template.show(d)}\n{template.cue} {_gold(d, names)}\n\n" for d in demos)
    for row in rest:
        prompt = f"{opening}{shown}{template.show(row)}\n{template.cue}"
        choices = (
            names
            if template.kind == "classification"
            else list(string.ascii_uppercase[: len(row["choices"])])
        )
        yield Example(str(row[template.query_field]), prompt, choices, _gold(row, names))


def _gold(row: dict[str, Any], labels: list[str]) -> str:
    """The row's answer: its class name, or the letter of its correct option."""
    if "answer_idx" in row:
        return string.ascii_uppercase[row["answer_idx"]]
    label = row["label"]
    return labels[int(label)] if isinstance(label, (int, bool)) else str(label)
