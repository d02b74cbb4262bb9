"""Load on the distributed deployment: long polls, submitters, the cascade end to end against slow
model servers, the bare-Celery ratio, and one scope's decisions per second.

    python bench/load.py [--scenario a,b,c,d,scope] [--redis redis://127.0.0.1:6379/14]
        [--worker-args "--pool threads --concurrency 128"] [--api-args "--workers 1"]
        [--polls 1000] [--submitters 500] [--queries 2000] [--scope-burst 128] ...

Each scenario gets its own throwaway PostgreSQL database (created beside ``--admin-url``'s and
dropped after), the Redis database ``--redis`` (flushed before and after: give the bench one of
its own), a tenant made with `twotier tenants create`, and its processes started as an operator
starts them: `twotier api`, `twotier worker --queues small,maintenance`, `twotier worker
--queues large` (both with ``--worker-args``), `twotier beat`; the model servers are
bench/load_tgi.py (asyncio, a set latency, 429 beyond ``--max-concurrent``, a gauge of the calls
in flight). Clients talk HTTP with the tenant's API key, from one asyncio event loop.

(a) ``--polls`` long polls (``?wait=--poll-wait``) at once on one api process (``--workers 1``
    unless ``--api-args`` names a count; (c) too), no worker running; half the queries are
    cancelled halfway (which finishes them). Each poll must answer within ``--poll-tolerance``
    of its query's end or its wait's end; /healthz is timed from a process of its own throughout.
(b) ``--submitters`` clients submit back to back for ``--submit-seconds`` to `twotier api` with
    its default process count: submits/s, latency, 2xx/429/503/5xx/client timeouts
    (``--client-timeout``), queries stored without a 202.
(c) ``--queries`` queries through both tiers at ``--small-latency``/``--large-latency``, 30 %
    escalated: finished/s against the servers' ceiling, calls in flight per worker process, RSS
    per process; then the small model at ``--slow-small-latency`` to count calls in flight.
(d) bench/pipeline.py run as it is (instant models): twotier vs a bare Celery round trip.
scope: ``--scope-burst`` small-tier answers of one scope recorded at once (bench/load_scope.py).

Prints a table and writes bench/results/load.json, with the load average and the busiest other
processes of the machine beside each scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from load_e2e import end_to_end
from load_http import long_polls, submitters
from load_scope import scope_decisions
from load_stack import BENCH_DIR, Stack, scenario_stack

from tests.throwaway_database import throwaway_database

SCENARIOS = ("a", "b", "c", "d", "scope")


def main() -> None:
    args = _parser().parse_args()
    args.worker_args = shlex.split(args.worker_args)
    args.api_args = shlex.split(args.api_args)
    chosen = [name.strip() for name in args.scenario.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(), "cpu_count": os.cpu_count(), "redis": args.redis,
        "worker_args": args.worker_args, "api_args": args.api_args, "scenarios": {},
    }  # fmt: skip
    for name in chosen:
        print(f"scenario {name} ...", file=sys.stderr, flush=True)
        before = {"load_average": load_average(), "busy_processes": busy_processes()}
        started = time.perf_counter()
        figures = RUNNERS[name](args)
        figures["machine"] = {**before, "load_average_after": load_average(),
                              "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        results["scenarios"][name] = figures
        write_json(args.out, results)  # what finished survives a later scenario's failure
    _print(results)
    print(f"wrote {args.out}")


def run_long_polls(args: argparse.Namespace) -> dict[str, Any]:
    with scenario_stack(args) as stack:
        return long_polls(stack, polls=args.polls, wait_s=args.poll_wait,
                          tolerance_s=args.poll_tolerance, launch_s=args.poll_launch)  # fmt: skip


def run_submitters(args: argparse.Namespace) -> dict[str, Any]:
    with scenario_stack(args, one_api_process=False) as stack:  # as many as `twotier api` starts
        return submitters(stack, submitters=args.submitters, duration_s=args.submit_seconds,
                          timeout_s=args.client_timeout)  # fmt: skip


def run_end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    with scenario_stack(args, latency=(args.small_latency, args.large_latency)) as stack:
        return end_to_end(
            stack, queries=args.queries, submitters=args.e2e_submitters,
            deadline_s=args.e2e_deadline, slow_small_s=args.slow_small_latency,
            slow_queries=args.slow_queries, slow_observe_s=args.slow_observe,
        )  # fmt: skip


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """bench/pipeline.py as it stands, so that its ratio compares with earlier runs of it."""
    out = Path(f"/tmp/twotier-load-pipeline-{time.monotonic_ns()}.json")  # noqa: S108
    command = [sys.executable, str(BENCH_DIR / "pipeline.py"), "--queries",
               str(args.pipeline_queries), "--rounds", str(args.pipeline_rounds), "--redis",
               args.redis, "--admin-url", args.admin_url, "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    figures: dict[str, Any] = json.loads(out.read_text())
    keep = (
        "throughput_ratio",
        "twotier_per_s",
        "bare_celery_per_s",
        "twotier_p50_ms",
        "twotier_p99_ms",
        "queries_per_round",
        "concurrency",
        "worker_concurrency",
        "twotier_pool",
        "rounds",
        "twotier_cpu_ms_per_query",
        "bare_celery_cpu_ms_per_query",
    )
    return {"command": " ".join(command[1:-2]), **{k: figures[k] for k in keep if k in figures}}


def run_scope(args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(redis_url=args.redis, worker_args=[], api_args=[])
    try:
        with throwaway_database(args.admin_url):
            return scope_decisions(args, stack)
    finally:
        stack.close()


RUNNERS = {"a": run_long_polls, "b": run_submitters, "c": run_end_to_end, "d": run_pipeline,
           "scope": run_scope}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--scenario", default=",".join(SCENARIOS), help="comma-separated: a,b,c,d,scope")
    add("--redis", default="redis://127.0.0.1:6379/14", help="a Redis database of its own")
    add("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    add("--worker-args", default="", help="passed to each `twotier worker`, e.g. '-c 8'")
    add("--api-args", default="", help="passed to `twotier api`, e.g. '--workers 2'")
    add("--max-concurrent", type=int, default=128, help="per model server, then 429")
    add("--polls", type=int, default=1000, help="(a)")
    add("--poll-wait", type=float, default=20.0, help="(a) ?wait= seconds")
    add("--poll-tolerance", type=float, default=1.0, help="(a) seconds late still on time")
    add("--poll-launch", type=float, default=2.0, help="(a) seconds over which polls are sent")
    add("--submitters", type=int, default=500, help="(b)")
    add("--submit-seconds", type=float, default=20.0, help="(b)")
    add("--client-timeout", type=float, default=10.0, help="(b) per request")
    add("--queries", type=int, default=2000, help="(c)")
    add("--e2e-submitters", type=int, default=64, help="(c) clients submitting")
    add("--e2e-deadline", type=float, default=240.0, help="(c) stop waiting after seconds")
    add("--small-latency", type=float, default=0.5, help="(c)")
    add("--large-latency", type=float, default=2.0, help="(c)")
    add("--slow-small-latency", type=float, default=3.0, help="(c) the in-flight variant")
    add("--slow-queries", type=int, default=300, help="(c) the in-flight variant")
    add("--slow-observe", type=float, default=15.0, help="(c) seconds to watch it")
    add("--pipeline-queries", type=int, default=600, help="(d)")
    add("--pipeline-rounds", type=int, default=3, help="(d)")
    add("--scope-burst", type=int, default=128, help="(scope) answers at once")
    add("--scope-rounds", type=int, default=3, help="(scope)")
    add("--scope-warmup", type=int, default=200, help="(scope) decisions before the bursts")
    add("--out", type=Path, default=BENCH_DIR / "results/load.json")
    return parser


def _commit() -> str:
    git = shutil.which("git") or "git"
    found = subprocess.run([git, "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, cwd=BENCH_DIR, check=False)  # fmt: skip
    return found.stdout.strip()


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def busy_processes(limit: int = 6) -> list[str]:
    """What else is using the CPUs right now (for the record beside the figures)."""
    processes = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)
    time.sleep(1.0)
    usage = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            cpu = process.cpu_percent(None)
            if cpu >= 5:
                command = " ".join(process.info["cmdline"] or [process.info["name"]])[:90]
                usage.append((cpu, f"{cpu:.0f}% {command}"))
    return [line for _, line in sorted(usage, reverse=True)[:limit]]


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def _print(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, Any, str]] = []
    s = results["scenarios"]
    if "a" in s:
        a = s["a"]
        rows += [
            ("a", f"{a['polls']} long polls: errors", a["errors"], "0"),
            ("a", "answered on time (cancelled / waited)",
             f"{a['on_time_cancelled']} / {a['on_time_waited']}", "all"),
            ("a", "/healthz p50 / p99 / max ms",
             _triple(a["healthz"]), "p99 <= 100"),
            ("a", "/healthz probes failed", f"{a['healthz']['errors']}/{a['healthz']['probes']}",
             "0"),
        ]  # fmt: skip
    if "b" in s:
        b = s["b"]
        rows += [
            ("b", f"{b['submitters']} submitters: submits/s", b["submits_per_s"], ">= 150"),
            ("b", "submit p50 / p99 ms", f"{b['latency']['p50_ms']} / {b['latency']['p99_ms']}",
             ""),
            ("b", "outcomes", b["outcomes"], "0 5xx, 0 timeouts"),
            ("b", "stored without a 202", b["stored_without_202"], "0"),
            ("b", "/healthz p50 / p99 / max ms", _triple(b["healthz"]), ""),
        ]  # fmt: skip
    if "c" in s:
        c = s["c"]
        slow = c["slow_small_model"]
        rows += [
            ("c", f"finished/s ({c['finished']}/{c['accepted']})",
             f"{c['finished_per_s']} (steady {c['finished_per_s_steady']})", ">= 100"),
            ("c", "model servers' ceiling /s", c["ceiling_per_s"], ""),
            ("c", "escalated share", c["escalated_share"], "0.3"),
            ("c", "calls in flight peak (server small / large)",
             f"{c['model_calls']['small']['peak']} / {c['model_calls']['large']['peak']}", ""),
            ("c", "RSS peak MB", c["rss_peak_mb"], ""),
            ("c", f"small model {slow['small_latency_s']} s: small calls in flight peak",
             f"{slow['small_calls_peak']} (per OS process {slow['in_flight_peak_per_os_process']})",
             ">= 100"),
        ]  # fmt: skip
    if "d" in s:
        d = s["d"]
        rows += [
            ("d", "twotier / bare Celery", d["throughput_ratio"], ">= 0.3"),
            ("d", "twotier q/s, bare Celery /s", f"{d['twotier_per_s']}, {d['bare_celery_per_s']}",
             ""),
        ]  # fmt: skip
        for system in ("twotier", "bare_celery"):
            cpu = d.get(f"{system}_cpu_ms_per_query")
            if cpu:
                total = f"{sum(cpu.values()):.1f} {cpu}"
                rows.append(("d", f"{system}: CPU ms per query", total, ""))
    if "scope" in s:
        sc = s["scope"]
        for mode in ("one_scope", "distinct_scopes"):
            m = sc[mode]
            rows += [
                ("scope", f"{mode}: decisions/s ({sc['burst']} at once)", m["decisions_per_s"],
                 ""),
                ("scope", f"{mode}: lock wait p50 / p99 ms",
                 f"{m['lock_wait']['p50_ms']} / {m['lock_wait']['p99_ms']}", ""),
                ("scope", f"{mode}: lock hold p50 / p99 ms",
                 f"{m['lock_hold']['p50_ms']} / {m['lock_hold']['p99_ms']}", ""),
            ]  # fmt: skip
    print(f"{'':<6} {'figure':<48} {'value':<34} target")
    for scenario, label, value, target in rows:
        print(f"{scenario:<6} {label:<48} {value!s:<34} {target}")
    for name, figures in s.items():
        print(f"{name}: load average {figures['machine']['load_average']} before, "
              f"{figures['machine']['load_average_after']} after")  # fmt: skip


def _triple(figures: dict[str, Any]) -> str:
    return f"{figures['p50_ms']} / {figures['p99_ms']} / {figures['max_ms']}"


def _exit_on_sigterm(_signal: int, _frame: object) -> None:
    raise SystemExit(143)  # so that the stacks' processes and databases are cleaned up


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
