"""The paper's evaluation on the recorded chains: what margin sampling saves, at what quality.

    python bench/cascade_quality.py [PATH ...] [--out bench/results/cascade_quality]

PATH defaults to ../shared/bench/chains. Runs `twotier eval` (the same code) and writes
results.json and the PNG curves under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli import main as twotier

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/chains"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/cascade_quality"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(DEFAULT_DATA)])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    known, passed_on = parser.parse_known_args()  # e.g. --seeds, --warmup, --no-baselines
    twotier(["eval", *known.paths, "--out", known.out, *passed_on])
