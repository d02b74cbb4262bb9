"""End-to-end throughput and latency of the distributed cascade beside a bare Celery round trip.

    python bench/pipeline.py [--queries 600] [--concurrency 16] [--rounds 3] [--wait-on-submit]
        [--twotier-pool default|prefork] [--worker-concurrency 2]
        [--admin-url postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/12]

Creates a throwaway PostgreSQL database and runs the distributed mode for real: `twotier api` in
its own process, `twotier worker --queues small,large` as it starts by default (its threads pool;
`--twotier-pool prefork` runs a plain Celery worker of the bare one's shape instead), and an
instant TGI-compatible server per tier (a margin fixed by each prompt's hash, so about the
target share of 0.3 escalates). Clients (threads, one HTTP connection each) submit a query and
long-poll it until it finishes (`--wait-on-submit`: the submit itself waits, one request a
query), closed-loop. In the same run and on the same Redis, the baseline is a bare Celery task
(a no-op, Celery's default prefork worker with ``--worker-concurrency`` processes) sent and
awaited through the Redis result backend by the same number of client threads. The rounds
alternate the two; the figures are the medians over rounds. Each round also counts the CPU time
each group of processes spent per query (the api, the worker, the model servers, PostgreSQL's
processes for the bench's database, the bench's own clients): unlike the throughput, it hardly
moves with what else runs on the machine.

Then, in this process, a few queries go through the same service functions one stage at a time
while every SQL statement and the process's CPU time are counted: submit, the small tier, the
large tier, a poll (the service's own work, without the processes and queues around it).

Prints a table and writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from services import cascade
from services.api.app import create_app
from services.db import session_scope
from services.logs import configure_logging
from services.migrate import upgrade_to_head
from services.models import Tier
from services.runtime import Runtime
from services.settings import get_settings
from services.tenants import create_tenant
from tests.server_thread import free_port
from tests.sql_counter import counted_statements
from tests.throwaway_database import throwaway_database

BENCH_DIR = Path(__file__).resolve().parent
TERMINAL = {"succeeded", "failed", "cancelled"}
MODEL_SERVER = """
import sys, threading
from tests.scripted_tgi import ScriptedTGI, hashed_margin
servers = [
    ScriptedTGI(name, margin_of=hashed_margin).start() for name in ("bench/small", "bench/large")
]
print(" ".join(server.url for server in servers), flush=True)
threading.Event().wait()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=600, help="per round and system")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--worker-concurrency", type=int, default=2,
        help="processes of the bare Celery worker (and of twotier's with --twotier-pool prefork)",
    )  # fmt: skip
    parser.add_argument(
        "--twotier-pool", choices=("default", "prefork"), default="default",
        help="default: `twotier worker` as it starts (its threads pool); prefork: a plain "
        "Celery worker of the bare one's shape",
    )  # fmt: skip
    parser.add_argument(
        "--wait-on-submit", action="store_true",
        help="submit with ?wait= (one request a query) instead of submit, then long-poll",
    )  # fmt: skip
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results/pipeline.json")
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="record the API and the worker pool with py-spy during the first round, into DIR",
    )  # fmt: skip
    args = parser.parse_args()

    os.environ["TWOTIER_BROKER_URL"] = args.redis
    os.environ.setdefault("TWOTIER_LOG_JSON", "true")
    redis.Redis.from_url(args.redis).flushdb()
    try:
        with throwaway_database(args.admin_url), _processes() as spawn:
            results = run(args, spawn)
    finally:
        redis.Redis.from_url(args.redis).flushdb()
    _print(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


Spawn = Callable[[list[str], Path], subprocess.Popen[bytes]]


@contextmanager
def _processes() -> Iterator[Spawn]:
    """Start child processes (each in its own session, logging to a file); stop them at exit."""
    children: list[subprocess.Popen[bytes]] = []

    def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:
            child = subprocess.Popen(
                command, env=dict(os.environ), stdout=handle, stderr=handle,
                start_new_session=True,
            )  # fmt: skip
        children.append(child)
        return child

    try:
        yield spawn
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()


def run(args: argparse.Namespace, spawn: Spawn) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="twotier-bench-"))
    database = make_url(os.environ["TWOTIER_DATABASE_URL"]).database or ""
    small_url, large_url = _start_model_servers()
    os.environ.update({
        "TWOTIER_SMALL__BACKEND": "tgi", "TWOTIER_SMALL__URL": small_url,
        "TWOTIER_SMALL__MODEL": "bench/small",
        "TWOTIER_LARGE__BACKEND": "tgi", "TWOTIER_LARGE__URL": large_url,
        "TWOTIER_LARGE__MODEL": "bench/large",
    })  # fmt: skip

    get_settings.cache_clear()
    upgrade_to_head()
    with session_scope() as session:
        api_key = create_tenant(session, name="bench", target_escalation_rate=0.3).api_key

    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    api = spawn(
        [sys.executable, "-m", "services.cli", "api", "--port", str(port)], logs / "api.log"
    )
    workers = str(args.worker_concurrency)
    celery = [sys.executable, "-m", "celery"]
    flags = ["--pool", "prefork", "--concurrency", workers, "--without-gossip", "--without-mingle"]
    hostname = ["--hostname", f"twotier-{uuid.uuid4().hex[:6]}@%h"]
    if args.twotier_pool == "default":
        # As an operator runs it: `twotier worker` with its own pool (threads, one per call).
        command = [sys.executable, "-m", "services.cli", "worker", "--queues", "small,large",
                   *hostname, "--without-gossip", "--without-mingle"]  # fmt: skip
    else:
        command = [*celery, "-A", "workers.app", "worker", "-Q", "small,large", *flags, *hostname,
                   "--loglevel", "WARNING"]  # fmt: skip
    worker = spawn(command, logs / "worker.log")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get(
        "PYTHONPATH")]))  # fmt: skip
    bare = spawn([*celery, "-A", "bare_celery", "worker", "-Q", "bare", *flags,
           "--hostname", f"bare-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "WARNING"],
          logs / "bare.log")  # fmt: skip
    sys.path.insert(0, str(BENCH_DIR))
    from bare_celery import noop  # noqa: PLC0415 - on the path only now; reads the broker URL

    twotier = TwotierClient(api_url, api_key, wait_on_submit=args.wait_on_submit)
    _wait_until(twotier.ready, what=f"the API (log: {logs / 'api.log'})")
    # Warm both systems up: connections, imports, and the threshold's warm-up window (W = 20).
    _closed_loop(twotier.one_query, queries=60, concurrency=args.concurrency)
    _closed_loop(lambda i: _bare_round_trip(noop, i), queries=60, concurrency=args.concurrency)

    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        print(f"round {number + 1}/{args.rounds} ...", file=sys.stderr)
        profiling = args.profile is not None and number == 0
        groups = {"api": [api.pid], "worker": [worker.pid],
                  "model_servers": [server.pid for server in _MODEL_SERVERS]}  # fmt: skip
        with (
            _profiled({"api": api.pid, "worker": worker.pid}, args.profile, on=profiling),
            _cpu_account(groups, database) as cpu,
        ):
            twotier_run = _closed_loop(
                twotier.one_query, queries=args.queries, concurrency=args.concurrency
            )
        twotier_run["cpu_ms_per_query"] = {  # type: ignore[assignment]
            name: round(1000 * seconds / args.queries, 2) for name, seconds in cpu.items()
        }
        with _cpu_account({"worker": [bare.pid]}, database="") as cpu:
            bare_run = _closed_loop(
                lambda i: _bare_round_trip(noop, i),
                queries=args.queries,
                concurrency=args.concurrency,
            )
        bare_run["cpu_ms_per_query"] = {  # type: ignore[assignment]
            name: round(1000 * seconds / args.queries, 2) for name, seconds in cpu.items()
        }
        rounds.append({"twotier": twotier_run, "bare_celery": bare_run})

    results: dict[str, Any] = {
        "queries_per_round": args.queries,
        "concurrency": args.concurrency,
        "worker_concurrency": args.worker_concurrency,
        "twotier_pool": args.twotier_pool,
        "rounds": len(rounds),
        "cpu_count": os.cpu_count(),
    }
    for system in ("twotier", "bare_celery"):
        for figure, value in rounds[0][system].items():
            if isinstance(value, dict):  # CPU per process group
                results[f"{system}_{figure}"] = {
                    group: round(statistics.median(r[system][figure][group] for r in rounds), 2)
                    for group in value
                }
            else:
                results[f"{system}_{figure}"] = round(
                    statistics.median(r[system][figure] for r in rounds), 2
                )
    results["throughput_ratio"] = round(
        statistics.median(r["twotier"]["per_s"] / r["bare_celery"]["per_s"] for r in rounds), 3
    )
    results["escalated_share"] = twotier.escalated_share()
    results["twotier_stage_medians_ms"] = twotier.stage_medians()
    results["statements"] = count_statements()
    results["per_round"] = rounds
    return results


class TwotierClient:
    """Submit a query, then long-poll it until it finishes; one HTTP connection per thread."""

    def __init__(self, url: str, api_key: str, *, wait_on_submit: bool = False) -> None:
        self.url = url
        self.wait_on_submit = wait_on_submit
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.run = uuid.uuid4().hex[:6]
        self._local = threading.local()
        self._escalated = Counter[bool]()
        self._stages: list[dict[str, float]] = []

    def _client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)
        client: httpx.Client = self._local.client
        return client

    def ready(self) -> bool:
        try:
            return self._client().get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def one_query(self, i: int) -> float:
        """Submit and wait; the submit's own latency is returned, the whole trip is timed."""
        client = self._client()
        started = time.perf_counter()
        response = client.post(
            "/v1/queries", json={"prompt": f"benchmark question {self.run}-{i}",
                                 "max_new_tokens": 16},
            params={"wait": 30} if self.wait_on_submit else None,
        )  # fmt: skip
        submitted = time.perf_counter() - started
        response.raise_for_status()
        query = response.json()
        while query["status"] not in TERMINAL:
            response = client.get(f"/v1/queries/{query['id']}", params={"wait": 30})
            response.raise_for_status()
            query = response.json()
        if query["status"] != "succeeded":
            raise RuntimeError(f"query {query['id']} ended {query['status']}: {query['error']}")
        seen = time.time()
        self._escalated[bool(query["escalated"])] += 1
        self._stages.append(_stage_times(query, seen))
        return submitted

    def stage_medians(self) -> dict[str, float]:
        """Median milliseconds between the stamps a query carries, and until the client saw it."""
        stages = self._stages
        return {
            name: round(statistics.median(s[name] for s in stages if name in s), 2)
            for name in stages[0]
        }

    def escalated_share(self) -> float:
        total = sum(self._escalated.values())
        return round(self._escalated[True] / total, 3) if total else 0.0


@contextmanager
def _profiled(pids: dict[str, int], folder: Path | None, *, on: bool) -> Iterator[None]:
    """Sample the processes (and their pool children) with py-spy while the block runs."""
    if not on or folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    samplers = []
    for name, pid in pids.items():
        output = str(folder / f"{name}.txt")
        command = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "250",
                   "--format", "raw", "--output", output, "--nonblocking", "--gil"]  # fmt: skip
        samplers.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    try:
        yield
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            sampler.wait(timeout=60)


@contextmanager
def _cpu_account(groups: dict[str, list[int]], database: str) -> Iterator[dict[str, float]]:
    """CPU seconds each group of processes used while the block ran, filled in when it ends:
    "bench" is this process alone, any other group its pids with their children, "postgres"
    the server processes of ``database``."""

    def members() -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {"bench": [psutil.Process()]}
        for name, pids in groups.items():
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    parent = psutil.Process(pid)
                    found.setdefault(name, []).extend([parent, *parent.children(recursive=True)])
        for process in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if database and f" {database} " in " ".join(process.info["cmdline"] or []):
                    found.setdefault("postgres", []).append(process)
        return found

    def cpu(processes: list[psutil.Process]) -> dict[int, float]:
        seconds: dict[int, float] = {}
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
        return seconds

    before = {name: cpu(processes) for name, processes in members().items()}
    used: dict[str, float] = {}
    yield used
    for name, processes in members().items():
        after = cpu(processes)
        used[name] = sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in after.items())


def _stage_times(query: dict[str, Any], seen: float) -> dict[str, float]:
    stamps = {
        name: datetime.fromisoformat(value).timestamp()
        for name, value in query["timestamps"].items()
        if value is not None
    }
    stages = {
        "queued_ms": stamps["small_started_at"] - stamps["created_at"],
        "small_tier_ms": stamps["small_finished_at"] - stamps["small_started_at"],
        "finished_to_client_ms": seen - stamps["finished_at"],
    }
    if "large_started_at" in stamps:
        stages["escalated_queued_ms"] = stamps["large_started_at"] - stamps["escalated_at"]
        stages["large_tier_ms"] = stamps["finished_at"] - stamps["large_started_at"]
    return {name: 1000 * seconds for name, seconds in stages.items()}


def _bare_round_trip(task: Any, i: int) -> float:
    started = time.perf_counter()
    result = task.delay(str(i))
    sent = time.perf_counter() - started
    assert result.get(timeout=60) == str(i)
    return sent


def _closed_loop(
    one: Callable[[int], float], *, queries: int, concurrency: int
) -> dict[str, float]:
    """Run ``queries`` calls of ``one`` from ``concurrency`` threads, each starting its next call
    when its last one is done; throughput, and latency percentiles in milliseconds."""
    latencies: list[float] = []
    sends: list[float] = []
    counter = iter(range(queries))
    lock = threading.Lock()

    def client_loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            started = time.perf_counter()
            sent = one(i)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                sends.append(sent)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(client_loop) for _ in range(concurrency)]:
            future.result()
    elapsed = time.perf_counter() - started
    return {
        "per_s": round(queries / elapsed, 1),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "submit_p50_ms": _percentile(sends, 0.50),
        "submit_p99_ms": _percentile(sends, 0.99),
    }


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(int(share * len(ordered)), len(ordered) - 1)], 2)


def count_statements(queries: int = 40) -> dict[str, Any]:
    """SQL statements and CPU per stage of a query, run in this process stage by stage: the
    cost of the service's own work, without Celery, HTTP between processes or other queries'
    threads."""
    configure_logging(level="WARNING", json=True)  # the stages' own log lines, not the table

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[tuple[Tier, uuid.UUID]] = []

        def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
            self.sent.append((tier, query_id))

        def is_reachable(self) -> bool:
            return True

    with session_scope() as session:
        key = create_tenant(session, name="statements", target_escalation_rate=0.3).api_key
    recorder = Recorder()
    runtime = Runtime(get_settings())
    answer = cascade.answer_on_tier
    stages: dict[str, list[int]] = {"submit": [], "small": [], "large": [], "poll": []}
    cpu_ms: dict[str, list[float]] = {stage: [] for stage in stages}
    totals: dict[str, list[int]] = {"confident": [], "escalated": []}
    with TestClient(create_app(recorder)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        for i in range(queries):
            counts: dict[str, int] = {}
            cpu: dict[str, float] = {}
            stage = functools.partial(_measure_stage, counts, cpu)
            submit = functools.partial(
                client.post, "/v1/queries", json={"prompt": f"statements {i}"}, headers=headers
            )
            query_id = uuid.UUID(stage("submit", submit).json()["id"])
            small = stage("small", functools.partial(answer, query_id, Tier.SMALL, runtime))
            if small.outcome is cascade.Outcome.ESCALATE:
                stage("large", functools.partial(answer, query_id, Tier.LARGE, runtime))
            poll = functools.partial(client.get, f"/v1/queries/{query_id}", headers=headers)
            stage("poll", poll)
            if i < 25:  # the threshold's warm-up (W = 20) and a margin; count decided queries
                continue
            for name, count in counts.items():
                stages[name].append(count)
                cpu_ms[name].append(cpu[name])
            totals["escalated" if "large" in counts else "confident"].append(sum(counts.values()))
    return {
        "per_stage": {stage: max(counts) for stage, counts in stages.items() if counts},
        "per_query": {kind: max(counts) for kind, counts in totals.items() if counts},
        "cpu_ms_per_stage_median": {
            stage: round(statistics.median(values), 2) for stage, values in cpu_ms.items() if values
        },
    }


def _measure_stage(
    counts: dict[str, int], cpu_ms: dict[str, float], name: str, run: Callable[[], Any]
) -> Any:
    """Run one stage, counting its SQL statements and the process's CPU time (every thread's:
    the test client runs the api's work in threads of its own)."""
    started = time.process_time()
    with counted_statements() as counted:
        result = run()
    cpu_ms[name] = (time.process_time() - started) * 1000
    counts[name] = counted.total()
    return result


def _start_model_servers() -> tuple[str, str]:
    server = subprocess.Popen(
        [sys.executable, "-c", MODEL_SERVER], stdout=subprocess.PIPE, start_new_session=True
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode().split()
    if len(line) != 2:
        server.kill()
        raise RuntimeError("the instant model servers did not start")
    _MODEL_SERVERS.append(server)
    return line[0], line[1]


_MODEL_SERVERS: list[subprocess.Popen[bytes]] = []


def _wait_until(ready: Callable[[], bool], *, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _print(results: dict[str, Any]) -> None:
    rows = [
        ("queries per second", "per_s", ""),
        ("latency p50", "p50_ms", " ms"),
        ("latency p99", "p99_ms", " ms"),
        ("submit (send) p50", "submit_p50_ms", " ms"),
        ("submit (send) p99", "submit_p99_ms", " ms"),
    ]
    print(f"{'':>22} {'twotier':>12} {'bare Celery':>12}")
    for label, key, unit in rows:
        twotier, bare = results[f"twotier_{key}"], results[f"bare_celery_{key}"]
        print(f"{label:>22} {f'{twotier}{unit}':>12} {f'{bare}{unit}':>12}")
    for system in ("twotier", "bare_celery"):
        cpu = results[f"{system}_cpu_ms_per_query"]
        groups = ", ".join(f"{group} {ms}" for group, ms in cpu.items())
        print(f"{'CPU ms per query':>22} {system}: {sum(cpu.values()):.1f} ({groups})")
    print(f"{'throughput ratio':>22} {results['throughput_ratio']:>12}")
    print(f"{'escalated share':>22} {results['escalated_share']:>12}")
    stages = ", ".join(f"{k[:-3]} {v} ms" for k, v in results["twotier_stage_medians_ms"].items())
    print(f"twotier stage medians: {stages}")
    statements = results["statements"]
    stages = ", ".join(f"{stage} {count}" for stage, count in statements["per_stage"].items())
    totals = ", ".join(f"{kind} {count}" for kind, count in statements["per_query"].items())
    print(f"SQL statements per stage: {stages}; per query: {totals}")
    cpu = ", ".join(f"{k} {v} ms" for k, v in statements["cpu_ms_per_stage_median"].items())
    print(f"CPU per stage, one at a time in one process (median): {cpu}")


def _exit_on_sigterm(_signal: int, _frame: object) -> None:
    raise SystemExit(143)  # so that the child processes and the database are cleaned up


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        main()
    finally:
        for model_server in _MODEL_SERVERS:
            model_server.kill()
