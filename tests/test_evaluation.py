"""The offline evaluation: hand-computed streams, random routing, the chains reader, the trained
baselines and `twotier eval` on a small fixture (no network)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from services.cli import main as twotier
from services.cli.eval_progress import ProgressBars, ProgressLines
from services.evaluation import scores
from services.evaluation.baselines import Embedder, baseline_scores
from services.evaluation.data import read_records
from services.evaluation.run import EvalOptions, evaluate
from services.evaluation.simulate import BudgetGrid, CostScheme, Stream
from services.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_CHAINS = ROOT.parent / "shared" / "bench" / "chains"


def small_stream(*, warmup: int) -> Stream:
    """Four queries in a fixed order; c_s = 1, c_l = 2; budgets from 1 to 3 per query."""
    grid = BudgetGrid(CostScheme("unit", np.ones(4), np.full(4, 2.0)), "c_s+c_l")
    return Stream(
        small_correct=np.array([True, False, False, True]),
        large_correct=np.array([True, True, True, True]),
        grids=[grid],
        seeds=[0],
        warmup=warmup,
        orders=np.array([[0, 1, 2, 3]]),
    )


def test_auc_is_the_mean_accuracy_over_the_budget_range() -> None:
    assert scores.normalised_auc(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 1.0])) == 0.75
    assert scores.apgr(0.75, 0.5, 1.0) == 0.5
    assert scores.apgr(0.75, 0.9, 0.8) is None


def test_margin_cascade_by_hand_with_warm_up_and_full_budget() -> None:
    stream = small_stream(warmup=1)
    margins = np.array([0.9, 0.1, 0.5, 0.2])
    curves = stream.run(stream.threshold_wants(margins, "cascade"), "cascade")
    # B = 3 (p = 1): query 0 is the warm-up; 1, 2 and 3 are below tau = 0.9 and escalate.
    assert curves.accuracy[0, -1] == 1.0
    assert curves.large_share[0, -1] == 0.75
    assert curves.spend[0, -1] == pytest.approx(2.5)
    # B = c_s (p = 0): the threshold is the smallest margin; nothing is below it.
    assert curves.accuracy[0, 0] == 0.5
    assert curves.large_share[0, 0] == 0.0


def test_budget_guard_keeps_enough_for_the_small_model_on_every_later_query() -> None:
    stream = small_stream(warmup=0)
    everything = np.ones((100, 4), dtype=bool)
    curves = stream.run(everything, "cascade")
    # Column 33: B = 1 + 2 * 33 / 99 = 5/3, so 20/3 in all. Escalating query 0 leaves 11/3,
    # which still pays c_s for the 3 later queries; escalating query 1 would leave 2/3 < 2.
    assert stream.budget[33] == pytest.approx(5 / 3)
    assert curves.large_share[0, 33] == 0.25
    assert curves.accuracy[0, 33] == 0.5  # L right on 0; S wrong on 1 and 2, right on 3
    assert curves.spend[0, 33] == pytest.approx(6 / 4)


def test_random_routing_auc_is_the_mean_of_the_two_accuracies() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    small, large = rng.random(n) < 0.4, rng.random(n) < 0.8
    grid = BudgetGrid(CostScheme("c_l/c_s=10", np.ones(n), np.full(n, 10.0)), "c_l")
    stream = Stream(small_correct=small, large_correct=large, grids=[grid], seeds=[0, 1, 2],
                    warmup=20)  # fmt: skip
    curves = stream.run(stream.random_wants(), "route")
    auc = scores.normalised_auc(grid.budgets, curves.accuracy[0])
    assert auc == pytest.approx((small.mean() + large.mean()) / 2, abs=0.015)


def write_fixture(path: Path) -> Path:
    """A small chain: 'kitten' questions the small model gets right, 'quantum' ones it misses."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(160):
        hard = i % 2 == 1
        topic = "quantum chromodynamics lattice" if hard else "kittens and their favourite toys"
        small_right = (not hard) if rng.random() < 0.9 else hard
        rows.append({
            "qid": f"demo-{i}", "task": "demo", "chain": "tiny_chain",
            "split": "train" if i < 60 else "test", "user_prompt": f"Question {i} about {topic}?",
            "small.answer": "B" if small_right else "C", "small.correct": int(small_right),
            "small.conf_raw": np.log(0.9 if small_right else 0.4) + rng.normal(0, 0.05),
            "small.cost_usd": 0.0001, "large.answer": "B", "large.correct": 1,
            "large.conf_raw": -0.01, "large.cost_usd": 0.002,
        })  # fmt: skip
    file = path / "demo__tiny_chain.csv"
    with file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return file


def test_chain_reader_makes_every_earlier_to_later_pair() -> None:
    chain = SHARED_CHAINS / "mmlu__llama_chain.csv"
    if not chain.is_file():
        pytest.skip(f"the recorded chains are not beside this checkout ({chain})")
    pairs = read_records(chain)
    assert len(pairs) == 10  # 5 models
    first = pairs[0]
    assert (first.small, first.large) == ("llama3.2-1b", "llama3.2-3b")
    assert int(first.is_train.sum()) == 285
    assert int(first.scored.sum()) == 1531
    assert "least confidence" in first.signal_names["margin"]


def test_trained_baselines_learn_offline_from_the_training_rows(tmp_path: Path) -> None:
    [pair] = read_records(write_fixture(tmp_path))
    scores = baseline_scores(pair, Embedder(tmp_path / "cache"))
    right = pair.small_correct[pair.scored]
    for name in ("frugalgpt", "routing", "hybridllm"):
        assert scores[name].shape == (100,)
        assert ((scores[name] >= 0) & (scores[name] <= 1)).all()
        assert scores[name][right].mean() > scores[name][~right].mean() + 0.2, name


@pytest.fixture
def eval_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TWOTIER_HOME and an empty TWOTIER_CACHE_DIR of their own, so that the routers' stages
    (the embedding model loaded, every text embedded) run as on a first run."""
    monkeypatch.setenv("TWOTIER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TWOTIER_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    monkeypatch.undo()
    get_settings.cache_clear()


def test_twotier_eval_writes_results_and_plots(tmp_path: Path, eval_home: Path) -> None:
    write_fixture(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        twotier, ["eval", str(tmp_path), "--out", str(out), "--warmup", "5"]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    [pair] = results["pairs"]
    grid = pair["grids"]["c_l/c_s=20, B in [c_s, c_s+c_l]"]
    assert set(grid["policies"]) == {"margin", "random", "oracle", "frugalgpt", "routing",
                                     "hybridllm"}  # fmt: skip
    assert len(grid["budgets"]) == len(grid["policies"]["margin"]["accuracy"]) == 100
    assert grid["policies"]["oracle"]["auc"] >= grid["policies"]["margin"]["auc"]
    assert grid["policies"]["margin"]["auc"] > grid["policies"]["random"]["auc"]
    assert "token-priced, B in [c_s, c_l]" in pair["grids"]
    assert (out / "curves_demo.png").stat().st_size > 0
    assert (out / "curves_average.png").stat().st_size > 0
    assert "margin" in result.stdout
    assert f"wrote results.json and 2 plots to {out}" in result.stdout


def test_twotier_eval_says_what_it_is_doing_on_stderr(tmp_path: Path, eval_home: Path) -> None:
    write_fixture(tmp_path)
    result = CliRunner().invoke(twotier, ["eval", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    where = "[1/1] demo 1/1: small -> large"
    assert result.stderr.splitlines() == [
        "Evaluating 1 pairs: demo (1)",
        f"{where}: loading the embedding model",
        f"{where}: embedding queries (160 texts)",
        f"{where}: embedding small answers (160 texts)",
        f"{where}: training the routers",
        f"{where}: simulating the policies",
    ]
    again = CliRunner().invoke(twotier, ["eval", str(tmp_path), "--out", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output
    # The embeddings are cached: a second run skips their stages.
    assert [line.rpartition(": ")[2] for line in again.stderr.splitlines()[1:]] == [
        "training the routers",
        "simulating the policies",
    ]


def test_a_logs_progress_lines_are_never_wrapped(tmp_path: Path) -> None:
    [pair] = read_records(write_fixture(tmp_path))
    pair = dataclasses.replace(pair, small="qwen2.5-32b-coder-instruct", large="gpt-4o-2024-08-06")
    written = io.StringIO()
    lines = ProgressLines(Console(file=written, width=40))
    lines.started([pair])
    lines.stage(pair, "embedding queries", 0, 1816)
    lines.stage(pair, "embedding queries", 256, 1816)  # the same stage: no new line
    assert written.getvalue().splitlines()[1:] == [
        "[1/1] demo 1/1: qwen2.5-32b-coder-instruct -> gpt-4o-2024-08-06: embedding queries "
        "(1816 texts)"
    ]


def test_a_terminal_gets_a_bar_per_task_and_for_the_run(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    drawn = io.StringIO()
    console = Console(file=drawn, force_terminal=True, width=100, color_system=None)
    options = EvalOptions(warmup=5, baselines=False, cache_dir=tmp_path / "cache")
    with ProgressBars(console) as bars:
        evaluate([tmp_path], options, progress=bars)
    assert "[1/1] demo 1/1: small -> large: simulating the policies" in drawn.getvalue()
    assert "\x1b[1A" in drawn.getvalue()  # drawn over in place, not line after line
    assert [(bar.description, bar.completed, bar.total) for bar in bars.bars.tasks] == [
        ("all pairs", 1, 1),
        ("demo", 1, 1),
    ]


def test_results_go_to_twotier_home_by_default_not_to_the_working_folder(
    tmp_path: Path, eval_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "records").mkdir()
    write_fixture(tmp_path / "records")
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    result = CliRunner().invoke(twotier, ["eval", str(tmp_path / "records"), "--no-baselines"])
    assert result.exit_code == 0, result.output
    assert list(working.iterdir()) == []
    assert (eval_home / "eval-results" / "results.json").is_file()
    assert f"to {eval_home / 'eval-results'}" in result.stdout


def test_results_written_into_a_checkout_are_ignored_by_git() -> None:
    """The README runs `twotier eval ... --out eval-results` from the checkout."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout here")
    ignored = subprocess.run(
        [git, "check-ignore", "--quiet", "eval-results/results.json"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0
    assert not get_settings().home.resolve().is_relative_to(ROOT)
