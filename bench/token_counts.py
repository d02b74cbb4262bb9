"""What counting a prompt's tokens costs per model call, by each way a worker could count them.

    python bench/token_counts.py [--calls 200]

Serves ``twotier model-server`` (the bundled model, its real tokenizer) on loopback and, for a
short and a 3,000-character prompt, times: the ``x-prompt-tokens`` header of ``/generate`` (no
extra request: nothing to time), a ``POST /tokenize`` round trip, the tokenizer in-process, and
the estimate used when a server reports nothing. Prints a table and writes
bench/results/token_counts.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from services.llm.model_server import create_model_server
from services.llm.token_count import estimate_tokens
from tests.local_model_fixtures import load_bundled_model
from tests.server_thread import ServerThread

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = {
    "short": "Is the following review positive or negative? I loved every minute of it.",
    "long": (ROOT / "README.md").read_text()[:3000],
}


def timed_ms(call: Callable[[], object], times: int) -> dict[str, float]:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 3),
        "p95_ms": round(seconds[int(len(seconds) * 0.95)] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    model = load_bundled_model()
    server = ServerThread(create_model_server(model, model_id="bench")).start()
    results: dict[str, dict[str, object]] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for name, prompt in PROMPTS.items():
                client.post("tokenize", json={"inputs": prompt})  # warm
                results[name] = {
                    "chars": len(prompt),
                    "header": "no extra request",
                    "tokenize_round_trip": timed_ms(
                        lambda p=prompt: client.post("tokenize", json={"inputs": p}), args.calls
                    ),
                    "tokenizer_in_process": timed_ms(lambda p=prompt: model.encode(p), args.calls),
                    "estimate": timed_ms(lambda p=prompt: estimate_tokens(p), args.calls * 10),
                }
    finally:
        server.stop()
    for name, row in results.items():
        print(name, json.dumps(row))
    out = ROOT / "bench/results/token_counts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
