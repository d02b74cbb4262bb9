"""Real Celery worker processes for the tests, started and killed like in production."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import kombu.exceptions
import psutil
import redis

from tests.waiting import wait_for


class CeleryWorker:
    # Every worker this process started and has not stopped: the session stops what a failed
    # test left behind, so that no worker outlives it and takes another run's tasks.
    running: ClassVar[set[CeleryWorker]] = set()

    def __init__(
        self,
        name: str,
        *,
        log_dir: Path,
        queues: str = "small,large,webhooks,maintenance",
        concurrency: int | None = None,
        pool: str | None = None,
        env: dict[str, str] | None = None,
        via_cli: bool = True,
        node_name_given: bool = True,
    ) -> None:
        """By default `twotier worker` with its defaults, as deployed: a pool of threads
        sized by the settings. ``via_cli=False`` starts a bare `celery worker` instead.
        ``node_name_given=False`` lets the worker name its node itself (``name`` then only
        names its log); ``start`` learns the name from the worker's own stats."""
        self.name = f"{name}@{socket.gethostname()}"
        self.node_name_given = node_name_given
        self.queues = queues
        self.concurrency = concurrency
        self.pool = pool
        self.env = env or {}
        self.via_cli = via_cli  # `twotier worker`, as deployed, instead of bare `celery worker`
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        from workers.app import app

        start = [sys.executable, "-m", "celery", "-A", "workers.app", "worker"]
        if self.via_cli:
            start = [sys.executable, "-m", "services.cli", "worker"]
        command = [
            *start, "--queues", self.queues, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if self.node_name_given:
            command += ["--hostname", self.name]
        if self.concurrency is not None:
            command += ["--concurrency", str(self.concurrency)]
        if self.pool is not None:
            command += ["--pool", self.pool]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        CeleryWorker.running.add(self)

        def answers() -> bool:
            try:
                if not self.node_name_given:
                    return self._learn_node_name()
                return bool(app.control.ping(destination=[self.name], timeout=0.5))
            except (redis.ConnectionError, kombu.exceptions.OperationalError):
                return False  # a connection the broker dropped (a restart); the next is new

        try:
            wait_for(
                answers,
                timeout=60,
                what=f"worker {self.name} to answer a ping (log: {self.log_path})",
            )
        except BaseException:
            self.kill()  # a worker nobody holds would go on taking the next tests' tasks
            raise
        return self

    def _learn_node_name(self) -> bool:
        """Find this process among the nodes that answer, by the pid each reports."""
        from workers.app import app

        stats = app.control.inspect(timeout=0.5).stats() or {}
        for node_name, node_stats in stats.items():
            if node_stats.get("pid") == self.pid:
                self.name = node_name
                return True
        return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pool_pids(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.pid).children()]

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool, no chance to clean up."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)
        CeleryWorker.running.discard(self)

    def stop(self) -> None:
        CeleryWorker.running.discard(self)
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


class CeleryBeat:
    def __init__(self, *, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_dir / "beat.log"
        self.schedule = log_dir / "beat-schedule"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryBeat:
        command = [
            sys.executable, "-m", "celery", "-A", "workers.app", "beat",
            "--loglevel", "INFO", "--schedule", str(self.schedule),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def wait_until_exited(pid: int, timeout: float = 10) -> None:
    wait_for(
        lambda: not psutil.pid_exists(pid) or _is_zombie(pid),
        timeout=timeout,
        what=f"pid {pid} to exit",
    )


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
