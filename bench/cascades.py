"""Cascades of 2, 3, 4 and 5 models against the best pair, at equal budgets, on the recorded chains.

    python bench/cascades.py [PATH ...] [--out bench/results/cascades]

PATH defaults to ../shared/bench/chains. Runs `twotier eval --cascades` (the same code) and
writes cascades.json and cascades.png under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli import main as twotier

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/chains"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/cascades"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(DEFAULT_DATA)])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    known, passed_on = parser.parse_known_args()  # e.g. --seeds, --warmup
    twotier(["eval", "--cascades", *known.paths, "--out", known.out, *passed_on])
