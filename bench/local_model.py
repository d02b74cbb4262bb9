"""Load time and per-query latency of the local model (the embedded default's small tier).

    python bench/local_model.py [--data ../shared/bench/datasets/sst2_validation.jsonl]
        [--queries 50] [--max-new-tokens 16] [--out bench/results/local_model.json]

Prints the figures and writes them as JSON. The first run also fetches and converts the GGUF;
run it twice to see a warm start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console

from services.llm.local_model import LocalBackend, LocalModel
from services.llm.margin import first_token_margin
from services.llm.model_files import prepare_local_model
from services.settings import get_settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/datasets/sst2_validation.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL with a text field")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/results/local_model.json"))
    args = parser.parse_args()

    console = Console(stderr=True)
    started = time.perf_counter()
    source = prepare_local_model(None, cache_dir=get_settings().cache_dir, console=console)
    prepared = time.perf_counter()
    model = LocalModel(source)
    loaded = time.perf_counter()
    backend = LocalBackend(model, model="bundled", top_n_tokens=5)

    prompts = [_prompt(json.loads(line)) for line in args.data.read_text().splitlines()]
    prompts = prompts[: args.queries]
    backend.generate(prompts[0], max_new_tokens=1)  # first call pays one-off allocations
    latencies, tokens, margins = [], 0, []
    for prompt in prompts:
        call_started = time.perf_counter()
        generation = backend.generate(prompt, max_new_tokens=args.max_new_tokens)
        latencies.append(time.perf_counter() - call_started)
        tokens += generation.output_tokens
        margins.append(first_token_margin(generation.first_token_candidates))

    latencies.sort()
    results = {
        "model": source,
        "prepare_s": round(prepared - started, 2),
        "load_s": round(loaded - prepared, 2),
        "queries": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
        "latency_p99_ms": round(
            1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1
        ),
        "tokens_per_s": round(tokens / sum(latencies), 1),
        "margin_mean": round(statistics.fmean(margins), 4),
    }
    for name, value in results.items():
        console.print(f"{name:>16}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def _prompt(record: dict[str, object]) -> str:
    text = record.get("text") or record.get("question") or ""
    return f"Is the sentiment of this review positive or negative?\n\n{text}"


if __name__ == "__main__":
    main()
