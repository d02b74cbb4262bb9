"""One scenario's deployment for bench/load.py, started the way an operator starts it.

A throwaway PostgreSQL database, `twotier migrate`, a tenant from `twotier tenants create`, and
then `twotier api`, `twotier worker --queues small,maintenance`, `twotier worker --queues large`
and `twotier beat` as child processes, each in its own session and logging to a file, with two
TGI-compatible model servers (bench/load_tgi.py). Only the command line and the HTTP API are
used, so the bench runs against any version of the code that keeps them. Every scenario gets a
stack of its own, so none inherits another's backlog or a wedged process.

A sampler thread records, while a scenario runs, each process's resident memory (with its
children: a prefork worker's pool) and, from the model servers' gauges, how many calls each
process has in flight (the servers report the client ports of the calls in flight; psutil says
which process holds each port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from pipeline import _wait_until

from tests.server_thread import free_port
from tests.throwaway_database import throwaway_database

BENCH_DIR = Path(__file__).resolve().parent
TWOTIER = [sys.executable, "-m", "services.cli"]  # the `twotier` command of this interpreter


class ModelServer:
    """A bench/load_tgi.py process and its bench routes."""

    def __init__(self, model: str, *, latency_s: float, max_concurrent: int, log: Path) -> None:
        command = [sys.executable, str(BENCH_DIR / "load_tgi.py"), "--model", model,
                   "--latency", str(latency_s),
                   "--max-concurrent", str(max_concurrent)]  # fmt: skip
        with log.open("ab") as handle:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=handle, start_new_session=True
            )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            self.process.kill()
            raise RuntimeError(f"the model server {model} did not start (log: {log})")
        self.port = int(self.url.rsplit(":", 1)[1])
        self.model = model
        self.max_concurrent = max_concurrent
        self.latency_s = latency_s
        self._http = httpx.Client(base_url=self.url, timeout=10)
        _wait_until(self._healthy, what=f"the model server {model}")

    def _healthy(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def gauge(self) -> dict[str, Any]:
        gauge: dict[str, Any] = self._http.get("/bench/gauge").json()
        return gauge

    def reset(self) -> None:
        self._http.post("/bench/reset")

    def set_latency(self, seconds: float) -> None:
        self._http.post("/bench/latency", params={"s": seconds})
        self.latency_s = seconds

    def hold(self) -> None:
        self._http.post("/bench/hold")

    def release(self) -> None:
        self._http.post("/bench/release")

    def stop(self) -> None:
        self._http.close()
        self.process.kill()
        self.process.communicate()


class Stack:
    """Processes of one scenario; ``close`` stops them all, in reverse order."""

    def __init__(self, *, redis_url: str, worker_args: list[str], api_args: list[str]) -> None:
        self.logs = Path(tempfile.mkdtemp(prefix="twotier-load-"))
        self.redis_url = redis_url
        self.worker_args = worker_args
        self.api_args = api_args
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.servers: dict[str, ModelServer] = {}
        self.api_url = ""
        self.api_key = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TWOTIER_BROKER_URL": self.redis_url, "TWOTIER_LOG_LEVEL": "WARNING",
            "TWOTIER_LOG_JSON": "true", "TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S": "2",
        })  # fmt: skip
        for tier, server in self.servers.items():
            prefix = f"TWOTIER_{tier.upper()}__"
            env.update({f"{prefix}BACKEND": "tgi", f"{prefix}URL": server.url,
                        f"{prefix}MODEL": server.model})  # fmt: skip
        return env

    def start_model_servers(self, *, small_s: float, large_s: float, max_concurrent: int) -> None:
        for tier, latency in (("small", small_s), ("large", large_s)):
            self.servers[tier] = ModelServer(
                f"bench/{tier}", latency_s=latency, max_concurrent=max_concurrent,
                log=self.logs / f"tgi-{tier}.log",
            )  # fmt: skip

    def prepare(self, *, target_escalation_rate: float = 0.3) -> None:
        """Migrate the database and create the tenant whose key the clients use."""
        subprocess.run([*TWOTIER, "migrate"], env=self.env(), check=True, capture_output=True)
        created = subprocess.run(
            [*TWOTIER, "tenants", "create", "load",
             "--target-escalation-rate", str(target_escalation_rate)],
            env=self.env(), check=True, capture_output=True, text=True,
        )  # fmt: skip
        lines = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
        self.api_key = lines["api_key"].strip()

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as handle:
            child = subprocess.Popen(
                command, env=self.env(), stdout=handle, stderr=handle, cwd=self.logs,
                start_new_session=True,
            )  # fmt: skip
        self.processes[name] = child
        return child

    def start_api(self, *, one_process: bool) -> None:
        """`twotier api`; ``one_process`` pins one process unless --api-args names a count."""
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        pinned = ["--workers", "1"] if one_process and "--workers" not in self.api_args else []
        self.start("api", [*TWOTIER, "api", "--port", str(port), *pinned, *self.api_args])
        _wait_until(self._api_ready, what=f"the API (log: {self.logs / 'api.log'})")

    def _api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def start_workers(self) -> None:
        self.start(
            "worker_small", [*TWOTIER, "worker", "--queues", "small,maintenance", *self.worker_args]
        )
        self.start("worker_large", [*TWOTIER, "worker", "--queues", "large", *self.worker_args])
        self.start("beat", [*TWOTIER, "beat"])  # fmt: skip

    def stop(self, name: str, *, grace_s: float = 15) -> None:
        child = self.processes.pop(name, None)
        if child is None or child.poll() is not None:
            return
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # its session: a pool left behind goes too
        child.wait()

    def close(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)
        for server in self.servers.values():
            server.stop()


@contextlib.contextmanager
def scenario_stack(
    args: Any, *, latency: tuple[float, float] = (0.0, 0.0), one_api_process: bool = True
) -> Any:
    """A fresh database, Redis database, model servers and tenant; the API running."""
    redis.Redis.from_url(args.redis).flushdb()
    stack = Stack(redis_url=args.redis, worker_args=args.worker_args, api_args=args.api_args)
    try:
        with throwaway_database(args.admin_url):
            stack.start_model_servers(
                small_s=latency[0], large_s=latency[1], max_concurrent=args.max_concurrent
            )
            stack.prepare()
            stack.start_api(one_process=one_api_process)
            yield stack
    finally:
        stack.close()
        redis.Redis.from_url(args.redis).flushdb()


class Sampler:
    """Peak memory per process and calls in flight per process, sampled in a thread."""

    def __init__(self, stack: Stack, interval_s: float = 0.25) -> None:
        self.stack = stack
        self.interval_s = interval_s
        self.rss_mb: dict[str, float] = {}
        self.in_flight_peak: dict[str, int] = {}  # "<process name>" -> peak sampled calls
        self.in_flight_per_pid_peak: dict[str, int] = {}  # "<name> pid N" -> peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(psutil.Error, httpx.HTTPError):
                self.sample()

    def sample(self) -> None:
        trees = {
            name: [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
            for name, child in list(self.stack.processes.items())
            if child.poll() is None
        }
        for name, tree in trees.items():
            rss = sum(_rss(process) for process in tree) / 2**20
            self.rss_mb[name] = round(max(self.rss_mb.get(name, 0.0), rss), 1)
        ports = {server.port: Counter(server.gauge()["client_ports"])
                 for server in self.stack.servers.values()}  # fmt: skip
        for name, tree in trees.items():
            if not name.startswith("worker"):
                continue
            total = 0
            for process in tree:
                held = _calls_held(process, ports)
                total += held
                key = f"{name} pid {process.pid}"
                self.in_flight_per_pid_peak[key] = max(
                    self.in_flight_per_pid_peak.get(key, 0), held
                )
            self.in_flight_peak[name] = max(self.in_flight_peak.get(name, 0), total)

    def figures(self) -> dict[str, Any]:
        per_pid = self.in_flight_per_pid_peak
        return {
            "rss_peak_mb": self.rss_mb,
            "in_flight_peak_sampled": self.in_flight_peak,
            "in_flight_peak_per_os_process": max(per_pid.values(), default=0),
        }


def _rss(process: psutil.Process) -> int:
    try:
        rss: int = process.memory_info().rss
    except psutil.Error:
        return 0
    return rss


def _calls_held(process: psutil.Process, ports: dict[int, Counter[int]]) -> int:
    """Calls in flight on the model servers over this process's connections."""
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        ports[c.raddr.port][c.laddr.port]
        for c in connections
        if c.raddr and c.raddr.port in ports and c.laddr.port in ports[c.raddr.port]
    )
