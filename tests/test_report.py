"""services.evaluation.report: from a small results dict, the JSON file, the console table
(policies in the paper's order, the margin's scores, how many rivals it beats, the average
row) and the PNG curves (one per task, one panel per chain, and the average)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure
from rich.cells import cell_len
from rich.console import Console

from services.evaluation.report import (
    _number,
    _policies,
    _widest_pair_per_source,
    average_figure,
    plot_curves,
    print_table,
    task_figures,
    write_json,
)
from services.evaluation.run import REFERENCE_GRID

BUDGETS = [1.0, 11.0, 21.0]


def policy(auc: float, **scores: float | None) -> dict[str, Any]:
    return {
        "auc": auc,
        "apgr": scores.get("apgr", 0.5),
        "large_share_for_50pct_gap": scores.get("share50", 0.25),
        "large_share_for_80pct_gap": scores.get("share80"),
        "cost_saved_at_95pct_of_large": scores.get("saved", 0.4),
        "accuracy": [0.5, 0.6 + auc / 10, 0.8],
    }


def pair(
    task: str, source: str, small: str, large: str, accuracy: tuple[float, float], **policies: Any
) -> dict[str, Any]:
    return {
        "task": task,
        "source": source,
        "small": small,
        "large": large,
        "signal": "first-token margin",
        "signals": {"margin": "first-token margin", **{n: f"{n} signal" for n in policies}},
        "accuracy_small": accuracy[0],
        "accuracy_large": accuracy[1],
        "grids": {
            REFERENCE_GRID: {
                "budgets": BUDGETS,
                "policies": {
                    "margin": policy(0.7, apgr=0.456, share80=None, saved=0.4),
                    "random": policy(0.5),
                    "oracle": policy(0.9),
                    **policies,
                },
            }
        },
    }


@pytest.fixture
def results() -> dict[str, Any]:
    return {
        "protocol": "service",
        "settings": {"seeds": [0, 1], "warmup": 50, "reference_grid": REFERENCE_GRID},
        "pairs": [
            pair("qa", "chain-a.jsonl", "s1", "l1", (0.5, 0.6), frugalgpt=policy(0.8)),
            pair("qa", "chain-a.jsonl", "s0", "l2", (0.4, 0.9)),  # the widest of chain a
            pair("qa", "chain-b.jsonl", "t0", "t1", (0.3, 0.5), entropy=policy(0.2)),
            pair("math", "chain-c.jsonl", "u0", "u1", (0.1, 0.7)),
        ],
        "average_over_tasks": {
            REFERENCE_GRID: {"margin": 0.7, "random": 0.5, "oracle": 0.9, "frugalgpt": 0.8}
        },
    }


def test_the_json_file_holds_every_number_and_its_folder_is_made(
    results: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "deep" / "er" / "results.json"
    write_json(results, path)
    text = path.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == results


def table_text(results: dict[str, Any]) -> str:
    console = Console(record=True, width=400, color_system=None)
    print_table(results, console)
    return console.export_text()


def rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the table's lines (header or body) whose first cell is ``first_cell``."""
    lines = [line.replace("┃", "│") for line in text.splitlines()]
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in lines
        if line.startswith(f"│ {first_cell} ")
    ]


def row(text: str, first_cell: str) -> list[str]:
    [cells] = rows(text, first_cell)
    return cells


def test_the_tables_list_the_first_pairs_policies_in_the_papers_order(
    results: dict[str, Any],
) -> None:
    text = table_text(results)
    auc_header, margin_header = rows(text, "task")
    assert auc_header[0] == margin_header[0] == "task / pair (small -> large)"
    assert auc_header[1:4] == ["margin", "random", "oracle"]
    assert auc_header[4:] == ["frugalgpt"]  # a baseline of the first pair; no extra signal
    assert margin_header[1:] == ["acc S", "acc L", "APGR", "L 50%", "L 80%", "saved @95%",
                                 "beats"]  # fmt: skip
    assert "W=50" in text
    assert "seeds [0, 1]" in text


def test_each_task_heads_its_pairs_rows_in_both_tables(results: dict[str, Any]) -> None:
    text = table_text(results)
    assert rows(text, "qa") == [["qa", "", "", "", ""], ["qa", "", "", "", "", "", "", ""]]
    first_cells = [line.split("│")[1].strip() for line in text.splitlines() if line[0] == "│"]
    in_a_table = ["qa", "s1 -> l1", "s0 -> l2", "t0 -> t1", "math", "u0 -> u1"]
    assert first_cells == [*in_a_table, "average over tasks", *in_a_table]


def test_a_pairs_rows_have_its_scores_and_the_rivals_the_margin_beats(
    results: dict[str, Any],
) -> None:
    text = table_text(results)
    aucs, margin = rows(text, "s1 -> l1")
    assert aucs == ["s1 -> l1", "0.700", "0.500", "0.900", "0.800"]
    # margin 0.700 beats random 0.500 but not frugalgpt 0.800: 1 of 2 (the oracle is no rival)
    assert margin == ["s1 -> l1", "0.500", "0.600", "0.46", "0.25", "-", "40%", "1/2"]
    aucs, margin = rows(text, "s0 -> l2")
    assert aucs[4] == "-"  # no frugalgpt score for this pair
    assert margin[-1] == "1/1"


def long_named(results: dict[str, Any]) -> dict[str, Any]:
    """The results with the longest model names of the recorded chains and of a live run, and
    all six policies of a run with baselines."""
    for number, pair in enumerate(results["pairs"]):
        pair["small"] = ("qwen2.5-32b-coder", "HuggingFaceTB/SmolLM2-135M-Instruct")[number % 2]
        pair["large"] = ("qwen2.5-72b", "reference labels (always right)")[number % 2]
        pair["task"] = "commonsenseqa_validation" if number == 3 else pair["task"]
        for name in ("frugalgpt", "routing", "hybridllm"):
            pair["grids"][REFERENCE_GRID]["policies"][name] = policy(0.612)
    for name in ("routing", "hybridllm"):
        results["average_over_tasks"][REFERENCE_GRID][name] = 0.612
    return results


def test_the_tables_fit_100_columns_and_wrap_only_the_pairs_names(
    results: dict[str, Any],
) -> None:
    console = Console(record=True, width=100, color_system=None)
    print_table(long_named(results), console)
    text = console.export_text()
    assert max(cell_len(line) for line in text.splitlines()) <= 100
    auc_header, margin_header = rows(text, "task")
    assert auc_header[1:] == ["margin", "random", "oracle", "frugalgpt", "routing", "hybridllm"]
    assert margin_header[-1] == "beats"
    # The chains' longest pair, twice in each table: on one line, as a tty of 100 columns shows it.
    aucs, _, margin, _ = rows(text, "qwen2.5-32b-coder -> qwen2.5-72b")
    assert aucs[1:] == ["0.700", "0.500", "0.900", "0.612", "0.612", "0.612"]
    assert margin[1:] == ["0.500", "0.600", "0.46", "0.25", "-", "40%", "4/4"]
    # A longer name wraps within its cell, whole: its rest is on the next lines.
    aucs, _, margin, _ = rows(text, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert aucs[1:4] == ["0.700", "0.500", "0.900"]
    assert margin[1:3] == ["0.400", "0.900"]
    assert len(rows(text, "-> reference labels (always right)")) == 4
    assert rows(text, "commonsenseqa_validation")  # a task's name is not cut


def test_the_average_row_and_the_signals_are_printed(results: dict[str, Any]) -> None:
    text = table_text(results)
    assert row(text, "average over tasks") == ["average over tasks", "0.700", "0.500", "0.900",
                                               "0.800"]  # fmt: skip
    assert "Signal `entropy`: entropy signal" in text
    assert "Signal `frugalgpt`: frugalgpt signal" in text
    assert "Signal `margin`" not in text
    assert "Signal used by `margin`: math: first-token margin; qa: first-token margin" in text


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_one_png_per_task_with_a_panel_per_chain_and_one_for_the_average(
    results: dict[str, Any], tmp_path: Path
) -> None:
    del results["pairs"][0]["grids"][REFERENCE_GRID]["policies"]["frugalgpt"]  # see below
    written = plot_curves(results, tmp_path / "figures")
    names = [path.name for path in written]
    assert names == ["curves_math.png", "curves_qa.png", "curves_average.png"]
    assert all(path.parent == tmp_path / "figures" for path in written)
    # 6 inches a panel at 110 dpi: qa has two chains (a, b), math one.
    assert png_size(tmp_path / "figures" / "curves_qa.png")[0] == 2 * 660
    assert png_size(tmp_path / "figures" / "curves_math.png")[0] == 660
    assert png_size(tmp_path / "figures" / "curves_average.png") == (770, 495)


def test_the_paper_policies_come_first_then_extra_signals_sorted(
    results: dict[str, Any],
) -> None:
    assert _policies(results) == ["margin", "random", "oracle", "frugalgpt", "entropy"]


def test_each_chain_is_drawn_with_its_widest_pair(results: dict[str, Any]) -> None:
    widest = _widest_pair_per_source(results["pairs"])
    assert [(p["source"], p["small"], p["large"]) for p in widest] == [
        ("chain-a.jsonl", "s0", "l2"),
        ("chain-b.jsonl", "t0", "t1"),
        ("chain-c.jsonl", "u0", "u1"),
    ]


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=9
    )
)
def test_the_widest_pair_has_the_largest_gap_of_its_chain(
    chains: list[tuple[str, float, float]],
) -> None:
    pairs = [
        {"source": source, "accuracy_small": small, "accuracy_large": large, "n": n}
        for n, (source, small, large) in enumerate(chains)
    ]
    widest = _widest_pair_per_source(pairs)
    assert [p["source"] for p in widest] == sorted({p["source"] for p in pairs})
    for chosen in widest:
        chain = [p for p in pairs if p["source"] == chosen["source"]]
        gaps = [p["accuracy_large"] - p["accuracy_small"] for p in chain]
        assert chosen["accuracy_large"] - chosen["accuracy_small"] == max(gaps)


def test_numbers_are_two_decimals_percent_whole_and_missing_a_dash() -> None:
    assert _number(None) == "-"
    assert _number(None, percent=True) == "-"
    assert _number(0.456) == "0.46"
    assert _number(0.456, percent=True) == "46%"


def test_a_policy_only_some_pairs_of_a_task_carry_is_plotted_without_failing(
    results: dict[str, Any], tmp_path: Path
) -> None:
    # frugalgpt is scored for the first qa pair only, as when only one chain file carries it.
    written = plot_curves(results, tmp_path / "figures")
    assert [path.name for path in written][-1] == "curves_average.png"


@pytest.fixture
def figures(results: dict[str, Any]) -> Iterator[dict[str, Figure]]:
    import matplotlib.pyplot as plt

    drawn = {**task_figures(results), "average": average_figure(results)}
    yield drawn
    for figure in drawn.values():
        plt.close(figure)


def test_every_line_of_every_figure_is_named_in_its_panels_legend(
    figures: dict[str, Figure],
) -> None:
    assert list(figures) == ["math", "qa", "average"]
    for name, figure in figures.items():
        for axis in figure.axes:
            labels = [line.get_label() for line in axis.get_lines()]
            assert labels, name
            assert not [label for label in labels if label.startswith("_")], name  # unlabelled
            legend = axis.get_legend()
            assert legend is not None, name
            assert [text.get_text() for text in legend.get_texts()] == labels, name


def test_the_dotted_lines_are_each_model_alone(figures: dict[str, Figure]) -> None:
    first_panel = figures["qa"].axes[0]  # chain a's widest pair: s0 -> l2
    dotted = [line.get_label() for line in first_panel.get_lines() if line.get_linestyle() == ":"]
    assert dotted == ["small model alone (0.400)", "large model alone (0.900)"]
    solid = [line.get_label() for line in first_panel.get_lines() if line.get_linestyle() == "-"]
    assert solid == ["margin", "random", "oracle"]  # frugalgpt scored another pair of chain a


def test_a_tasks_titles_say_which_of_its_pairs_are_drawn_and_why(
    figures: dict[str, Figure],
) -> None:
    qa = figures["qa"]
    suptitle = qa.get_suptitle().replace("\n", " ")  # wrapped to the figure's width
    assert "qa: accuracy-cost curves of 2 of its 3 pairs (every pair is in results.json)" in (
        suptitle
    )
    assert [axis.get_title() for axis in qa.axes] == [
        "s0 -> l2\nwidest S-L gap of 2 pairs in chain-a.jsonl",
        "t0 -> t1\nthe only pair in chain-b.jsonl",
    ]
    assert figures["math"].get_suptitle().startswith("math: accuracy-cost curves of its pair")
