"""What keeps several server processes on one host apart: a worker's Celery node name and
each process's Prometheus multiprocess folder. The metrics ports are settings (a scraper must
know them); ``services.cli.ports`` says in one line when one is taken."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

NODE_NAME_OPTIONS = {"-n", "--hostname"}
# A folder's owner, written into it: a second process given the same folder stops at start.
OWNER_FILE = "owner.pid"


def default_node_name(queues: list[str]) -> str:
    """``<queues>-<pid>@<host>``: unique among the workers of one host, and it says what the
    worker consumes. Celery's own default (``celery@<host>``) is the same for every worker of
    a host, and Celery's remote control (ping, inspect, shutdown) cannot tell them apart."""
    return f"{'-'.join(queues)}-{os.getpid()}@%h"


def names_its_node(celery_args: tuple[str, ...]) -> bool:
    return any(
        arg in NODE_NAME_OPTIONS or arg.startswith(("--hostname=", "-n")) for arg in celery_args
    )


@contextmanager
def metrics_folder_of_this_process(home: Path, role: str) -> Iterator[Path]:
    """Set PROMETHEUS_MULTIPROC_DIR, where forked processes (the Celery pool, uvicorn's
    workers) write their metrics and the process that serves /metrics reads them. It must be
    set before prometheus_client is first imported.

    Unset, it is ``<TWOTIER_HOME>/metrics/<role>-<pid>``: every process of a host has its
    own, and the folders of processes that no longer run are removed. A folder two live
    processes share would mix (and wipe) each other's metrics, so a folder given explicitly
    that another live process holds stops this one with a message."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
    else:
        folder = home / "metrics" / f"{role}-{os.getpid()}"
        _remove_folders_of_ended_processes(folder.parent)
    _claim(folder, explicit=bool(given))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def _claim(folder: Path, *, explicit: bool) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        owner = _owner(folder)
        if owner not in {None, os.getpid()} and _runs(owner):
            raise click.ClickException(
                f"PROMETHEUS_MULTIPROC_DIR={folder} is in use by process {owner} (another "
                "twotier worker or api on this host): give each process its own folder, or "
                "unset it to get one under TWOTIER_HOME"
            )
        for stale in folder.glob("*.db"):  # a previous run's metrics
            stale.unlink()
        (folder / OWNER_FILE).write_text(str(os.getpid()))
    except OSError as exc:
        variable = "PROMETHEUS_MULTIPROC_DIR" if explicit else "TWOTIER_HOME"
        raise click.ClickException(
            f"cannot keep metrics in {folder} ({exc.strerror}): set {variable} to a writable folder"
        ) from None


def _remove_folders_of_ended_processes(parent: Path) -> None:
    if not parent.is_dir():
        return
    for folder in parent.iterdir():
        owner = _owner(folder)
        if owner is not None and owner != os.getpid() and not _runs(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _owner(folder: Path) -> int | None:
    try:
        return int((folder / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
