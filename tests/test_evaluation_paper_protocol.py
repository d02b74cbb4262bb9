"""The `paper` protocol (the original code's evaluation), step by step on short streams worked
out by hand, against a plain transcription of the original loop, and through `twotier eval`.

Most streams have n = 30 queries, so the threshold (applied once |H| > 20) decides the last ten.
``DESCENDING`` makes each query's u the lowest so far: it escalates whenever int(|H| * p) >= 1.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.cli import main as twotier
from services.evaluation.data import read_records
from services.evaluation.paper_protocol import (
    PaperStream,
    Steps,
    cascade_accuracy,
    oracle_accuracy,
    paper_auc,
    paper_budgets,
    paper_curves,
    paper_stream,
    random_accuracy,
    shuffled_orders,
)
from services.settings import get_settings

N = 30
DESCENDING = [(N - t) / 100 for t in range(N)]


def stream(
    signal: list[float], small_right: set[int], large_right: set[int], classes: int = 4
) -> PaperStream:
    n = len(signal)
    return PaperStream(
        signal=np.array(signal),
        small_correct=np.array([float(t in small_right) for t in range(n)]),
        large_correct=np.array([float(t in large_right) for t in range(n)]),
        classes=classes,
    )


def margin_accuracy(paper: PaperStream, budget: float, large_cost: int) -> float:
    """One run in file order at one budget B, with c_s = 1 and c_l = ``large_cost``."""
    in_order = np.arange(paper.n)[None]
    accuracy = cascade_accuracy(paper, in_order, np.array([budget]), np.array([large_cost]))
    return float(accuracy[0, 0])


EVERY = set(range(N))


def test_the_threshold_applies_only_once_more_than_20_margins_are_in_the_history() -> None:
    # B = 2, c_l = 10, p = 0.1, R = 60. The first 20 queries pay c_s (R = 40). Query 19 has
    # |H| = 20: no threshold yet, although int(20 * 0.1) = 2 would send it to L. Query 20
    # (|H| = 21) escalates, as do 21 and 22; R is then 7 = r and S answers the rest.
    # L is right on 19 and 20 only; S never.
    paper = stream(DESCENDING, small_right=set(), large_right={19, 20})
    assert margin_accuracy(paper, 2.0, 10) == 1 / 30


def test_a_margin_equal_to_the_threshold_does_not_escalate() -> None:
    # Every u is 0.5, so tau = 0.5 and u < tau never holds: no query escalates. L is right
    # exactly where the cascade would escalate (queries 20..26); S is never right.
    paper = stream([0.5] * N, small_right=set(), large_right=set(range(20, 27)))
    assert margin_accuracy(paper, 2.0, 10) == 0.0


def test_the_tail_goes_to_l_alone_once_the_budget_covers_it() -> None:
    # As above, nothing escalates, so R = 60 - t before query t. At t = 27, R = 33 >= 3 * 10:
    # queries 27, 28 and 29 go to L alone (R = 23, 13, 3). L is right only on them.
    paper = stream([0.5] * N, small_right=set(), large_right={27, 28, 29})
    assert margin_accuracy(paper, 2.0, 10) == 3 / 30


def test_s_alone_once_the_budget_covers_only_the_small_model() -> None:
    # B = 1.2, c_l = 2, R = 36. After 20 queries R = 16; queries 20, 21, 22 escalate (R = 13,
    # 10, 7). At t = 23, R = 7 = r: S alone from then on, although R - 1 >= c_l would still pay
    # an escalation. S is never right and L always: only the three escalations score.
    paper = stream(DESCENDING, small_right=set(), large_right=EVERY)
    assert margin_accuracy(paper, 1.2, 2) == 3 / 30


@pytest.mark.parametrize(("classes", "credit"), [(4, 0.25), (40_000, 1 / 40_000)])
def test_chance_credit_where_nothing_can_be_paid(classes: int, credit: float) -> None:
    # B = 1.21, c_l = 2, R = 36.3. After 20 queries R = 16.3; queries 20..23 escalate
    # (R = 13.3, 10.3, 7.3, 4.3: at t = 23, R = 7.3 > r = 7 still allows the cascade). S alone
    # answers 24..27 (R = 0.3), and queries 28 and 29 get the chance credit 1 / classes.
    paper = stream(DESCENDING, small_right=set(), large_right=EVERY, classes=classes)
    assert margin_accuracy(paper, 1.21, 2) == pytest.approx((4 + 2 * credit) / 30, rel=1e-12)


def test_with_l_alone_off_the_tail_stays_a_cascade() -> None:
    # The stream of the test above, with step 6's L alone done as the service protocol does:
    # queries 27, 28 and 29 stay cascade steps that never escalate, so S answers them (wrong).
    paper = stream([0.5] * N, small_right=set(), large_right={27, 28, 29})
    without = replace(paper, steps=Steps(large_alone=False))
    assert margin_accuracy(without, 2.0, 10) == 0.0


def test_with_the_quirk_off_p_follows_the_budget_even_where_l_is_no_better() -> None:
    # acc_L = acc_S as in the quirk's test below; with p(B) = 0.1 query 20 escalates (L right,
    # S wrong) and 21, 22 too (both right), so one more answer is right than under the quirk,
    # and the tail is not sent to L alone (R = 7 = r after them).
    paper = stream(SECOND_LOWEST, small_right=SMALL_RIGHT, large_right=EVERY - {0, 1, 2})
    without = replace(paper, steps=Steps(quirk=False))
    assert not without.quirk
    assert margin_accuracy(without, 2.0, 10) == 28 / 30


# u_0 is the lowest of all; from query 1 on, each u is the second lowest so far. Query 20
# escalates at p = 0.1 (int(21 * 0.1) = 2) but not at p = 0.05 (int(21 * 0.05) = 1).
SECOND_LOWEST = [0.001, *DESCENDING[1:]]
SMALL_RIGHT = EVERY - {20, 27, 28}  # acc_S = 0.9


def test_when_l_is_no_better_p_is_fixed_and_l_alone_is_off() -> None:
    # acc_L = acc_S = 0.9: p = min((1 - 0.9) / 2, 0.6) = 0.05 at every budget, which never
    # escalates this stream, and the tail (R >= r * c_l from t = 27) stays on S: acc_S.
    paper = stream(SECOND_LOWEST, small_right=SMALL_RIGHT, large_right=EVERY - {0, 1, 2})
    assert paper.quirk
    assert margin_accuracy(paper, 2.0, 10) == 27 / 30


def test_when_l_is_better_p_follows_the_budget() -> None:
    # acc_L = 28/30 > acc_S: p = (2 - 1) / 10 = 0.1. Queries 20, 21, 22 escalate (L right),
    # then R = 7 = r and S answers the rest (wrong on 27 and 28): 25 + 3 right.
    paper = stream(SECOND_LOWEST, small_right=SMALL_RIGHT, large_right=EVERY - {0, 1})
    assert not paper.quirk
    assert margin_accuracy(paper, 2.0, 10) == 28 / 30


def original_loop(paper: PaperStream, order: list[int], budget: float, large_cost: int) -> float:
    """utils_method.make_cascade (cost mode ``fix``) transcribed plainly: lists, sort, append."""
    u = [float(paper.signal[i]) for i in order]
    small = [float(paper.small_correct[i]) for i in order]
    large = [float(paper.large_correct[i]) for i in order]
    n = len(u)
    acc_s, acc_l = sum(small) / n, sum(large) / n
    p = min((budget - 1) / large_cost, 1) if acc_l > acc_s else min((1 - acc_s) / 2, 0.6)
    history: list[float] = []
    remaining = budget * n
    credit = 0.0
    for idx in range(n):
        if remaining >= 1:
            if remaining - (n - idx) <= 0:
                remaining -= 1
                credit += small[idx]
                history = sorted([*history, u[idx]])
            elif remaining - (n - idx) * large_cost >= 0 and acc_l > acc_s:
                remaining -= large_cost
                credit += large[idx]
            else:
                remaining -= 1
                history = sorted([*history, u[idx]])
                tau = -1.0
                if len(history) > 20:
                    i = int(len(history) * p)
                    tau = max(history) + 10 if i >= len(history) else history[i]
                if u[idx] < tau and remaining - large_cost >= 0:
                    remaining -= large_cost
                    credit += large[idx]
                else:
                    credit += small[idx]
        else:
            credit += 1 / paper.classes
    return credit / n


@pytest.mark.parametrize("n", [30, 90])
@pytest.mark.parametrize("large_cost", [2, 3, 10])
@pytest.mark.parametrize("l_better", [True, False])
def test_every_column_agrees_with_the_original_loop(
    n: int, large_cost: int, l_better: bool
) -> None:
    """Random streams with ties, every guard reached somewhere; two seeds' orders at once."""
    rng = np.random.default_rng(n * large_cost)
    small = rng.random(n) < 0.6
    large = rng.random(n) < (0.9 if l_better else 0.2)
    paper = PaperStream(
        signal=np.round(rng.random(n), 1),  # ties with the threshold
        small_correct=small.astype(np.float64),
        large_correct=large.astype(np.float64),
        classes=4,
    )
    assert paper.quirk is not l_better
    orders = shuffled_orders(n, (0, 1))
    budgets = np.linspace(1, large_cost, 37)
    got = cascade_accuracy(paper, orders, budgets, np.full(len(budgets), float(large_cost)))
    for seed, order in enumerate(orders.tolist()):
        expected = [original_loop(paper, order, budget, large_cost) for budget in budgets]
        assert got[seed].tolist() == expected


def test_random_routing_sends_the_first_share_of_the_stream_to_s() -> None:
    # c_l = 9: int(30 * (9 - B) / 8) queries to S alone. B = 1: all 30; B = 5: 15; B = 7: 7
    # (7.5 rounded down); B = 9: none. S is right on 0..9, L on 20..29.
    paper = stream(DESCENDING, small_right=set(range(10)), large_right=set(range(20, 30)))
    in_order = np.arange(N)[None]
    accuracy = random_accuracy(paper, in_order, np.array([1.0, 5.0, 7.0, 9.0]), 9)
    assert accuracy[0].tolist() == [10 / 30, 20 / 30, 17 / 30, 10 / 30]


def test_the_stream_order_is_the_legacy_random_state_permutation() -> None:
    assert shuffled_orders(10, (0, 1, 2)).tolist() == [
        [2, 8, 4, 9, 1, 6, 7, 3, 0, 5],
        [2, 9, 6, 4, 0, 3, 1, 7, 8, 5],
        [4, 1, 5, 0, 7, 2, 3, 6, 9, 8],
    ]
    # Random routing at c_l = 9, B = 8 sends the first int(10 / 8) = 1 query to S alone: query
    # 2 under seeds 0 and 1, query 4 under seed 2. S is right on query 2 only; L never.
    paper = stream([0.5] * 10, small_right={2}, large_right=set())
    accuracy = random_accuracy(paper, shuffled_orders(10), np.array([8.0]), 9)
    assert accuracy[:, 0].tolist() == [0.1, 0.1, 0.0]


def test_the_oracle_escalates_floor_of_n_times_b_minus_1_over_c_l_of_its_gains() -> None:
    # S right on 0..11 (acc_S = 0.4); L also on 12..16: G = 5. c_l = 10: m_B = floor(3 (B - 1)):
    # B = 1: 0; B = 2: 3; B = 5.5: 13 -> 5; B = 10: 27 -> 5.
    paper = stream(DESCENDING, small_right=set(range(12)), large_right=set(range(17)))
    accuracy = oracle_accuracy(paper, np.array([1.0, 2.0, 5.5, 10.0]), 10)
    assert accuracy.tolist() == pytest.approx([12 / 30, 15 / 30, 17 / 30, 17 / 30], abs=1e-15)


def test_every_policy_scores_acc_l_at_b_equal_to_c_l_and_auc_is_the_trapezoid() -> None:
    # L is no better than S (0.5 vs 0.6), so L alone is off and the cascade at B = c_l would
    # not score acc_L by itself.
    rng = np.random.default_rng(5)
    small_right = {int(t) for t in rng.choice(N, 18, replace=False)}
    paper = stream(rng.random(N).tolist(), small_right, large_right=set(range(15)))
    curves = paper_curves(paper)
    for k, policies in curves.items():
        assert len(policies["margin"]) == len(paper_budgets(k)) == 100
        assert {name: float(values[-1]) for name, values in policies.items()} == {
            "margin": 0.5,
            "random": 0.5,
            "oracle": 0.5,
        }
    assert paper_auc(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 1.0]), 3) == 0.75
    metrics = pytest.importorskip("sklearn.metrics")
    accuracy = curves[10]["margin"]
    assert (
        paper_auc(paper_budgets(10), accuracy, 10) == metrics.auc(paper_budgets(10), accuracy) / 9
    )


def write_chain(path: Path, *, task: str, splits: list[str]) -> Path:
    """A two-model chain in the recorded chains' format, with p_conf beside conf_raw."""
    rng = np.random.default_rng(11)
    rows = []
    for i, split in enumerate(splits):
        small_right = bool(rng.random() < 0.6)
        p_conf = "0" if i == 3 else f"{(0.9 if small_right else 0.5) - rng.random() / 4:g}"
        rows.append({
            "qid": f"{task}-{split}-{i:05d}", "task": task, "chain": "two_chain", "split": split,
            "user_prompt": f"Question {i}?", "small.answer": "A", "small.correct": int(small_right),
            "small.conf_raw": "-inf" if i == 3 else np.log(float(p_conf)), "small.p_conf": p_conf,
            "small.cost_usd": 0.0001, "large.answer": "A", "large.correct": int(rng.random() < 0.9),
            "large.conf_raw": -0.01, "large.p_conf": 0.99005, "large.cost_usd": 0.002,
        })  # fmt: skip
    file = path / f"{task}__two_chain.csv"
    with file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return file


def test_the_stream_is_the_test_rows_in_file_order_with_p_conf_as_written(tmp_path: Path) -> None:
    [pair] = read_records(write_chain(tmp_path, task="mmlu", splits=["train"] * 5 + ["test"] * 40))
    paper = paper_stream(pair)
    assert paper.n == 40
    assert pair.p_conf is not None
    assert paper.signal.tolist() == pair.p_conf[5:].tolist()
    assert paper.classes == 4


def test_a_file_with_only_train_rows_streams_all_of_them(tmp_path: Path) -> None:
    [pair] = read_records(write_chain(tmp_path, task="gsm8k", splits=["train"] * 30))
    paper = paper_stream(pair)
    assert paper.n == 30
    assert paper.signal[3] == 0.0  # -inf as 0
    assert paper.classes == 40_000


@pytest.fixture
def eval_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TWOTIER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TWOTIER_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    monkeypatch.undo()
    get_settings.cache_clear()


def test_twotier_eval_protocol_paper_names_the_protocol(tmp_path: Path, eval_home: Path) -> None:
    (tmp_path / "chains").mkdir()
    write_chain(tmp_path / "chains", task="mmlu", splits=["train"] * 10 + ["test"] * 60)
    out = tmp_path / "out"
    args = ["eval", "--protocol", "paper", str(tmp_path / "chains"), "--out", str(out)]
    result = CliRunner().invoke(twotier, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "paper"
    assert results["settings"]["seeds"] == [0, 1, 2]
    assert results["settings"]["cost_ratios"] == [10, 20, 50]
    [pair] = results["pairs"]
    assert pair["queries_scored"] == 60
    assert set(pair["grids"]) == {f"c_l/c_s={k}, B in [c_s, c_l]" for k in (10, 20, 50)}
    assert set(pair["grids"]["c_l/c_s=10, B in [c_s, c_l]"]["policies"]) == {
        "margin",
        "random",
        "oracle",
    }
    assert results["mean_normalised_gain"]["c_l/c_s=10, B in [c_s, c_l]"]["pairs"] == 1
    assert "Protocol `paper`" in result.stdout
    assert "(paper protocol)" in result.stdout
    assert "mean over 1 pairs" in result.stdout
    assert (out / "curves_average.png").stat().st_size > 0


def test_the_service_protocol_stays_the_default(tmp_path: Path, eval_home: Path) -> None:
    write_chain(tmp_path, task="mmlu", splits=["train"] * 10 + ["test"] * 60)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        twotier, ["eval", str(tmp_path), "--no-baselines", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["protocol"] == "service"
    assert "Protocol `service`" in result.stdout


def test_the_paper_protocol_refuses_settings_it_fixes(tmp_path: Path) -> None:
    write_chain(tmp_path, task="mmlu", splits=["test"] * 30)
    result = CliRunner().invoke(
        twotier, ["eval", "--protocol", "paper", "--warmup", "5", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "fixes its seeds" in result.output
