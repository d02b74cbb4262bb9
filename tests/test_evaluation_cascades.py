"""Cascades of two or more models replayed on recorded outputs (services/evaluation/cascades.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.cli import main
from services.evaluation.cascades import (
    ChainRecords,
    compare,
    equal_rates,
    read_chain,
    run_cascade,
)
from services.policy.offline import streaming_escalations


def _records(n: int = 40, seed: int = 0) -> ChainRecords:
    rng = np.random.default_rng(seed)
    models = ["s", "m", "l"]
    return ChainRecords(
        task="toy",
        chain="toy_chain",
        models=models,
        correct={"s": rng.random(n) < 0.5, "m": rng.random(n) < 0.7, "l": rng.random(n) < 0.9},
        confidence={model: rng.random(n) for model in models},
        cost={"s": np.full(n, 1.0), "m": np.full(n, 3.0), "l": np.full(n, 10.0)},
    )


def test_equal_rates_spend_the_budget_in_expectation() -> None:
    costs = [1.0, 3.0, 10.0]
    [q, q2] = equal_rates(costs, 4.0)
    assert q == q2
    assert 1 + 3 * q + 10 * q * q == pytest.approx(4.0)
    assert equal_rates(costs, 0.5) == [0.0, 0.0]
    assert equal_rates(costs, 20.0) == [1.0, 1.0]


def test_a_two_tier_cascade_escalates_exactly_what_the_service_rule_would() -> None:
    records = _records()
    order = np.random.default_rng(3).permutation(records.n)
    tiers = ("s", "l")
    accuracy, spend = run_cascade(records, tiers, order=order, rates=[0.3], budget=100.0, warmup=4)
    wants = streaming_escalations(records.confidence["s"][order], np.array([0.3]), 4)[0]
    expected = np.where(wants, records.correct["l"][order], records.correct["s"][order])
    assert accuracy == pytest.approx(expected.mean())
    assert spend == pytest.approx(1 + 10 * wants.mean())


def test_a_query_climbs_while_each_stage_is_unsure() -> None:
    n = 6
    records = ChainRecords(
        task="toy",
        chain="toy_chain",
        models=["s", "m", "l"],
        correct={
            "s": np.array([1, 0, 0, 1, 0, 0], bool),
            "m": np.array([0, 1, 0, 0, 1, 0], bool),
            "l": np.ones(n, bool),
        },
        # With no warm-up and rate 0.5 at each stage, a stage escalates a confidence below the
        # median of what it has seen so far (this one included).
        confidence={
            "s": np.array([0.9, 0.1, 0.05, 0.8, 0.2, 0.01]),
            "m": np.array([0.5, 0.9, 0.1, 0.5, 0.95, 0.05]),
            "l": np.zeros(n),
        },
        cost={"s": np.ones(n), "m": np.full(n, 2.0), "l": np.full(n, 5.0)},
    )
    order = np.arange(n)
    accuracy, spend = run_cascade(
        records, ("s", "m", "l"), order=order, rates=[0.5, 0.5], budget=100.0, warmup=0
    )
    # s: H=[.9] t=.9 stays (right); [.1,.9] t=.9 .1 climbs; m: [.9] stays (right)
    # s: [.05,.1,.9] t=.1 .05 climbs; m: [.1,.9] t=.9 .1 climbs to l (right)
    # s: [.05,.1,.8,.9] t=.8 stays (right); s: .2 < t=.2? no, stays (wrong)
    # s: [.01,...] t=.1 .01 climbs; m: [.05,.1,.9] t=.1 .05 climbs to l (right)
    assert accuracy == pytest.approx(5 / 6)
    assert spend == pytest.approx((6 * 1 + 3 * 2 + 2 * 5) / 6)


def test_the_guard_keeps_the_first_tier_paid_and_unpaid_queries_are_wrong() -> None:
    records = _records()
    order = np.arange(records.n)
    accuracy, spend = run_cascade(
        records, ("s", "m", "l"), order=order, rates=[1.0, 1.0], budget=1.0, warmup=0
    )
    assert spend == pytest.approx(1.0)  # nothing left to escalate with
    assert accuracy == pytest.approx(records.correct["s"].mean())
    accuracy, spend = run_cascade(
        records, ("s", "m", "l"), order=order, rates=[0.0, 0.0], budget=0.5, warmup=0
    )
    assert spend == pytest.approx(0.5)
    assert accuracy == pytest.approx(records.correct["s"][: records.n // 2].sum() / records.n)


def test_compare_reads_a_chain_file_and_ranks_cascades_of_each_length(tmp_path: Path) -> None:
    records = _records(n=60)
    header = ["task", "split"] + [
        f"{m}.{field}" for m in records.models for field in ("correct", "conf_raw", "cost_usd")
    ]
    lines = [",".join(header)]
    for i in range(records.n):
        cells = ["toy", "test"]
        for m in records.models:
            confidence = "-inf" if (m, i) == ("s", 0) else f"{records.confidence[m][i]:.6f}"
            cells += [str(int(records.correct[m][i])), confidence, str(records.cost[m][i])]
        lines.append(",".join(cells))
    path = tmp_path / "toy__toy_chain.csv"
    path.write_text("\n".join(lines) + "\n")
    read = read_chain(path)
    assert read.models == ["s", "m", "l"]
    assert read.confidence["s"][0] == read.confidence["s"][1:].min()  # -inf: the lowest
    result = compare(read, seeds=[0], warmup=5)
    assert {len(c["tiers"]) for c in result["cascades"]} == {2, 3}
    assert len(result["cascades"]) == 4  # 3 pairs and the one three-tier cascade
    assert result["best_by_tiers"]["3"] == "s -> m -> l"
    hindsight = result["best_three_tier_split_in_hindsight"]
    three = next(c for c in result["cascades"] if len(c["tiers"]) == 3)
    assert hindsight["auc"] >= three["auc"] - 1e-12  # equal rates are among its candidates


def test_twotier_eval_cascades_writes_the_comparison(tmp_path: Path) -> None:
    chain = tmp_path / "toy__toy_chain.csv"
    records = _records(n=50)
    header = ["task", "split"] + [
        f"{m}.{field}" for m in records.models for field in ("correct", "conf_raw", "cost_usd")
    ]
    rows = [
        ["toy", "test"]
        + [
            value
            for m in records.models
            for value in (
                str(int(records.correct[m][i])),
                f"{records.confidence[m][i]:.6f}",
                str(records.cost[m][i]),
            )
        ]
        for i in range(records.n)
    ]
    chain.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", "--cascades", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "s -> m -> l" in result.output
    summary = json.loads((out / "cascades.json").read_text())
    assert summary["tasks"][0]["best_by_tiers"]["3"] == "s -> m -> l"
    assert set(summary["mean_best_auc_by_tiers"]) == {"2", "3"}
    assert (out / "cascades.png").stat().st_size > 0
