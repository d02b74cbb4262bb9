"""Several `twotier worker` processes on one host, started with the same settings, run side
by side: each has a node name and a metrics folder of its own, and a metrics port two of them
cannot share stops the second in one line that names the setting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from services.cli.one_host import OWNER_FILE
from tests.celery_workers import CeleryWorker
from tests.conftest import TenantApi, forget_earlier_work
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paced_tgi() -> Iterator[ScriptedTGI]:
    """A small-tier server slow enough that one worker cannot take every query alone."""
    server = ScriptedTGI("test/small-4bit")
    server.delay_s = 0.3
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def two_workers(log_dir: Path, home: Path, paced_tgi: ScriptedTGI) -> Iterator[list[CeleryWorker]]:
    """Two workers of the small queue with the same settings and no node name given; one
    model call at a time each, so that both take part."""
    forget_earlier_work()
    env = {
        "TWOTIER_HOME": str(home),
        "TWOTIER_SMALL__URL": paced_tgi.url,
        "TWOTIER_SMALL__MAX_CONCURRENT_CALLS": "1",
    }
    workers = [
        CeleryWorker(f"one-host-{i}", log_dir=log_dir, queues="small", env=env,
                     node_name_given=False).start()
        for i in range(2)
    ]  # fmt: skip
    yield workers
    for process in workers:
        process.stop()


def test_two_workers_on_one_host_have_their_own_names_and_both_work(
    two_workers: list[CeleryWorker],
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    from workers.app import app

    names = [process.name for process in two_workers]
    assert names[0] != names[1]
    for process in two_workers:
        assert process.name.startswith(f"small-{process.pid}@")

    tenant = make_tenant(target_escalation_rate=0.0)
    ids = [tenant.submit(unique(f"side by side {i}"))["id"] for i in range(8)]
    finished = [tenant.wait_finished(query_id) for query_id in ids]
    assert all(query["status"] == "succeeded" for query in finished)

    stats = app.control.inspect(destination=names, timeout=2).stats() or {}
    small_tasks = {name: sum(stats[name]["total"].values()) for name in names}
    assert all(count > 0 for count in small_tasks.values()), small_tasks
    assert sum(small_tasks.values()) >= len(ids)


def test_each_worker_keeps_its_metrics_in_its_own_folder_under_home(
    two_workers: list[CeleryWorker], home: Path
) -> None:
    folders = [home / "metrics" / f"worker-{process.pid}" for process in two_workers]
    for process, folder in zip(two_workers, folders, strict=True):
        assert (folder / OWNER_FILE).read_text() == str(process.pid)
    assert sorted((home / "metrics").iterdir()) == sorted(folders)


def test_a_stopped_worker_takes_its_metrics_folder_with_it(
    log_dir: Path, home: Path, paced_tgi: ScriptedTGI
) -> None:
    process = CeleryWorker(
        "one-host-stopped",
        log_dir=log_dir,
        queues="small",
        env={"TWOTIER_HOME": str(home), "TWOTIER_SMALL__URL": paced_tgi.url},
        node_name_given=False,
    ).start()
    folder = home / "metrics" / f"worker-{process.pid}"
    assert folder.is_dir()
    process.stop()
    wait_for(lambda: not folder.exists(), timeout=10, what=f"{folder} to be removed")


def run_worker_expecting_refusal(env: dict[str, str]) -> list[str]:
    """`twotier worker` that must stop before it starts; its error lines."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker", "--queues", "small"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode != 0
    return result.stderr.strip().splitlines()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_metrics_port_another_process_serves_stops_the_worker_in_one_line(home: Path) -> None:
    port = free_port()
    server, thread = start_http_server(port)  # as a worker's metrics server listens
    try:
        lines = run_worker_expecting_refusal(
            {"TWOTIER_HOME": str(home), "TWOTIER_WORKER_METRICS_PORT": str(port)}
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert len(lines) == 1, lines
    assert f"TWOTIER_WORKER_METRICS_PORT={port}" in lines[0]


def test_a_metrics_folder_a_running_process_holds_stops_the_worker_in_one_line(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-metrics"
    shared.mkdir()
    (shared / OWNER_FILE).write_text(str(os.getpid()))  # this test process stands for a worker
    lines = run_worker_expecting_refusal({"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert len(lines) == 1, lines
    assert f"PROMETHEUS_MULTIPROC_DIR={shared}" in lines[0]
    assert (shared / OWNER_FILE).read_text() == str(os.getpid())
