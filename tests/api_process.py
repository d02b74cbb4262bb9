"""`twotier api` in its own process, as deployed, with settings of the test's choosing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server_thread import free_port
from tests.waiting import wait_for


class ApiProcess:
    """`twotier api --workers N` on a free loopback port; its stdout and stderr go to
    ``log_path``. Settings are given without their `TWOTIER_` prefix."""

    def __init__(self, log_path: Path, *, workers: int = 1, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, **{f"TWOTIER_{k.upper()}": v for k, v in settings.items()}}
        command = [sys.executable, "-m", "services.cli", "api", "--port", str(self.port),
                   "--workers", str(workers)]  # fmt: skip
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process.poll() is None, log_path.read_text()[-2000:]
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=60, what="the api process to start")

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
