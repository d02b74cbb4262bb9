"""Load time, per-query latency and generated tokens/s of the local model (the embedded
default's small tier), with 1 and with 8 queries in flight at once.

    python bench/local_model.py [--data ../shared/bench/datasets/sst2_validation.jsonl]
        [--queries 48] [--max-new-tokens 32] [--concurrency 1 8] [--rounds 1] [--threads N]
        [--out bench/results/local_model.json]

Each level runs the same prompts from that many threads, as the embedded queue's threads do;
the model decodes the queries in flight together. With ``--rounds N`` the levels run back to
back N times and each round's speedup is kept: on a shared machine the load changes from one
minute to the next, and levels measured side by side give the fairer ratio. Each level also
reports the process's CPU time, which other processes on the machine disturb less than the
wall time (most with ``--threads 1``: torch's threads wait for each other at every step).
Prints the figures and writes them as JSON (the last round's levels, every round's speedup).
The first run also fetches and converts the GGUF; run it twice to see a warm start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from rich.console import Console

from services.llm.local_model import LocalBackend, LocalModel
from services.llm.margin import first_token_margin
from services.llm.model_files import prepare_local_model
from services.settings import get_settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/datasets/sst2_validation.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL with a text field")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=1, help="run the levels this many times")
    parser.add_argument("--threads", type=int, help="torch's threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/local_model.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
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
    results: dict[str, object] = {
        "model": source,
        "prepare_s": round(prepared - started, 2),
        "load_s": round(loaded - prepared, 2),
        "queries": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        load_before = os.getloadavg()[0]
        levels = {
            concurrency: _run_level(
                backend, prompts, concurrency=concurrency, max_new_tokens=args.max_new_tokens
            )
            for concurrency in args.concurrency
        }
        results.update({f"concurrent_{c}": level for c, level in levels.items()})
        rates = {f"tokens_per_s_{c}": level["tokens_per_s"] for c, level in levels.items()}
        first, last = levels[args.concurrency[0]], levels[args.concurrency[-1]]
        rounds.append(
            rates
            | {
                "speedup_tokens_per_s": round(last["tokens_per_s"] / first["tokens_per_s"], 2),
                "speedup_tokens_per_cpu_s": round(
                    last["tokens_per_cpu_s"] / first["tokens_per_cpu_s"], 2
                ),
                "load_average_1m": round((load_before + os.getloadavg()[0]) / 2, 2),
            }
        )
    speedups = [r["speedup_tokens_per_s"] for r in rounds]
    results["speedup_tokens_per_s"] = round(statistics.median(speedups), 2)
    results["speedup_tokens_per_cpu_s"] = round(
        statistics.median(r["speedup_tokens_per_cpu_s"] for r in rounds), 2
    )
    results["rounds"] = rounds
    console.print_json(json.dumps(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def _run_level(
    backend: LocalBackend, prompts: list[str], *, concurrency: int, max_new_tokens: int
) -> dict[str, float]:
    """Every prompt once, ``concurrency`` at a time."""

    def timed(prompt: str) -> tuple[float, int, float]:
        call_started = time.perf_counter()
        generation = backend.generate(prompt, max_new_tokens=max_new_tokens)
        margin = first_token_margin(generation.first_token_candidates)
        return time.perf_counter() - call_started, generation.output_tokens, margin

    started, cpu_started = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        calls = list(pool.map(timed, prompts))
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    latencies = sorted(latency for latency, _, _ in calls)
    tokens = sum(count for _, count, _ in calls)
    return {
        "wall_s": round(wall_s, 2),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall_s, 1),
        "cpu_s": round(cpu_s, 2),
        "tokens_per_cpu_s": round(tokens / cpu_s, 1),
        "queries_per_s": round(len(calls) / wall_s, 2),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
        "latency_p99_ms": round(
            1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1
        ),
        "margin_mean": round(statistics.fmean(margin for _, _, margin in calls), 4),
    }


def _prompt(record: dict[str, object]) -> str:
    text = record.get("text") or record.get("question") or ""
    return f"Is the sentiment of this review positive or negative?\n\n{text}"


if __name__ == "__main__":
    main()
