"""`twotier eval-live` records the small tier's class margins over labelled data, and
`twotier eval` compares every signal on those records."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from services.cli import main as twotier
from services.evaluation.data import read_records
from services.evaluation.prompts import TEMPLATES, read_examples
from tests.scripted_tgi import ScriptedTGI


def write_reviews(path: Path, count: int = 60) -> Path:
    rows = [
        {"id": i, "text": f"review {i}: {'great' if i % 2 else 'awful'} food", "label": i % 2}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_live_records_class_margins_and_eval_compares_signals(
    tmp_path: Path, small_tgi: ScriptedTGI
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl")
    labels = ["negative", "positive"]
    examples = read_examples(
        data, template=TEMPLATES["classification"], style="chat", labels=labels, shots=2
    )
    for i, example in enumerate(examples):
        sure = i % 3 != 0  # every third review: the model leans the wrong way, unsure
        right, wrong = (" Positive", " Negative") if example.gold == "positive" else (
            " Negative", " Positive")  # fmt: skip
        small_tgi.script(
            example.prompt,
            answer="x",
            first_token=[(right, 0.8), (wrong, 0.1), (" The", 0.05)]
            if sure
            else [(wrong, 0.4), (right, 0.35), (" The", 0.2)],
        )
    records_file = tmp_path / "records" / "reviews.jsonl"
    recorded = CliRunner().invoke(twotier, [
        "eval-live", str(data), "--template", "classification", "--labels", ",".join(labels),
        "--prompt-style", "chat", "--shots", "2", "--out", str(records_file),
    ])  # fmt: skip
    assert recorded.exit_code == 0, recorded.output
    # 38 of 58 right; the margin ranks every right answer (0.7) above every wrong one (0.05).
    assert "Small model accuracy 0.655, margin AUROC 1.000" in recorded.output
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    assert len(records) == 58
    assert sum(r["small_correct"] for r in records) == 38  # the 20 unsure ones are wrong
    unsure = records[0]
    assert unsure["small_correct"] is False
    assert abs(unsure["signals"]["margin"] - 0.05) < 1e-9
    assert set(unsure["signals"]) == {"margin", "margin_logit", "vocabulary_margin",
                                      "class_share", "negative_entropy"}  # fmt: skip

    [pair] = read_records(records_file)
    assert set(pair.signals) == set(unsure["signals"])
    out = tmp_path / "eval"
    evaluated = CliRunner().invoke(twotier, ["eval", str(records_file.parent), "--out", str(out),
                                             "--warmup", "3", "--no-baselines"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    policies = json.loads((out / "results.json").read_text())["pairs"][0]["grids"][
        "c_l/c_s=20, B in [c_s, c_s+c_l]"
    ]["policies"]
    assert {"margin", "margin_logit", "class_share", "random", "oracle"} <= set(policies)
    assert policies["margin"]["auc"] > policies["random"]["auc"]


def test_multiple_choice_prompts_letter_each_question_by_its_own_options(tmp_path: Path) -> None:
    rows = [
        {"question": "Pick the fourth", "choices": ["a", "b", "c", "d"], "answer_idx": 3},
        {"question": "Pick the second", "choices": ["x", "y", "z"], "answer_idx": 1},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    [example] = read_examples(data, style="chat", shots=1)
    assert example.choices == ["A", "B", "C"]
    assert example.gold == "B"
    assert "Pick the fourth\nA. a\nB. b\nC. c\nD. d\nAnswer: D" in example.prompt
    assert example.prompt.endswith("Question: Pick the second\nA. x\nB. y\nC. z\nAnswer:")
