"""The small tier's accuracy and margin AUROC on labelled data sets, in each prompt style.

    OMP_NUM_THREADS=1 python bench/live_prompts.py [--data ../shared/bench/datasets] [--limit 200]
        [--sets sst2_validation,kotzias_amazon,...] [--styles completion,chat]
        [--out bench/results/live_prompts.json]

Runs `twotier eval-live`'s own code over the first --limit queries of each set (after the 4
rows that are the prompts' worked examples) with the configured small tier (by default the
bundled local model, loaded once for every set and style). The records go to a temporary
folder, as they hold the data sets' text; the summary goes to --out, rewritten after each run.
On a machine whose cores other work shares, one torch thread (OMP_NUM_THREADS=1) runs it several
times faster than more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

from services.evaluation.live import LiveTiers, record_live
from services.evaluation.prompts import PROMPT_STYLES, read_examples, template_of_file
from services.models import Tier
from services.runtime import Runtime
from services.settings import get_settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/datasets"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/live_prompts.json"
DEFAULT_SETS = (
    "sst2_validation",
    "kotzias_amazon",
    "fever_bigbench",
    "boolq_validation",
    "arc_easy_test",
    "openbookqa_test",
    "commonsenseqa_validation",
)
SHOTS = 4
TOP_N_TOKENS = 10  # what eval-live asks of the local model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--styles", default=",".join(PROMPT_STYLES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    settings = get_settings()
    results: list[dict[str, object]] = []
    summary = {
        "small_model": settings.small.model,
        "small_backend": settings.small.backend,
        "queries_per_set": f"the first {args.limit} rows after the {SHOTS} worked examples",
        "shots": SHOTS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "results": results,
    }
    with tempfile.TemporaryDirectory() as records:
        for name in args.sets.split(","):
            path = args.data / f"{name}.jsonl"
            template = template_of_file(path)
            for style in args.styles.split(","):
                runtime = Runtime(settings, raw_prompts=style == "completion")
                examples = read_examples(path, template=template, style=style, shots=SHOTS)
                started = time.monotonic()
                with closing(runtime):
                    tiers = LiveTiers(
                        small=runtime.backend(Tier.SMALL),
                        small_settings=settings.small,
                        large=None,
                        large_settings=settings.large,
                        top_n_tokens=TOP_N_TOKENS,
                    )
                    live = record_live(
                        examples,
                        task=name,
                        tiers=tiers,
                        out=Path(records) / f"{name}__{style}.jsonl",
                        limit=args.limit,
                    )
                row = {"data_set": name, "template": template.name, "style": style, **asdict(live)}
                row["seconds"] = round(time.monotonic() - started, 1)
                results.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
