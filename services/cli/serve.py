"""The embedded default: API, both tiers and the threshold service in one process on SQLite."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from rich.console import Console

from services.api.app import create_app
from services.api.http_protocol import JsonErrorH11Protocol
from services.api.metrics_port import serve_api_metrics
from services.cli.ask import DEFAULT_URL
from services.cli.embedded import InProcessQueue
from services.db import open_database, session_scope
from services.llm.server_limits import check_or_exit
from services.logs import configure_logging, server_log_config
from services.migrate import upgrade_to_head
from services.models import Tier
from services.runtime import Runtime
from services.settings import Settings, TierSettings, get_settings
from services.tenants import ensure_demo_tenant

EXAMPLE_PROMPT = "What is the capital of France?"


def run_embedded(*, host: str, port: int) -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    console = Console(stderr=True)
    started = time.monotonic()
    check_or_exit(settings, tiers=list(settings.tier_names), tasks_at_once=1, who="twotier serve")
    open_database(settings)
    runtime = Runtime(settings)
    for tier in Tier:  # fetch, convert and load local models now, with progress on the console
        runtime.backend(tier)
    upgrade_to_head()
    with session_scope() as session:
        api_key = ensure_demo_tenant(
            session,
            key_file=settings.demo_key_file,
            target_escalation_rate=settings.default_target_escalation_rate,
        )
    work_queue = InProcessQueue(runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resumed = work_queue.start()
        if resumed:
            console.print(f"Resuming {resumed} unfinished queries from before the last stop.")
        _print_banner(console, settings, f"http://{host}:{port}", api_key, started)
        yield
        console.print("Stopping: finishing the model calls in progress ...")
        work_queue.stop()
        console.print("Stopped; queries not yet answered resume at the next start.")

    if settings.api_metrics_port is not None:
        serve_api_metrics(settings, host=host, port=settings.api_metrics_port)
    uvicorn.run(
        create_app(work_queue, lifespan=lifespan),
        host=host,
        port=port,
        http=JsonErrorH11Protocol,
        log_level="warning",
        log_config=server_log_config(level="WARNING", json=settings.log_json),
        access_log=False,  # services.api.access_log writes it, as JSON, without query strings
    )


def _print_banner(
    console: Console, settings: Settings, url: str, api_key: str, started: float
) -> None:
    curl = (
        f"curl -s -X POST '{url}/v1/queries?wait=30' -H 'Authorization: Bearer {api_key}' "
        f"-H 'Content-Type: application/json' -d '{{\"prompt\": \"{EXAMPLE_PROMPT}\"}}'"
    )
    elapsed = time.monotonic() - started
    tiers = "".join(f"  {f'{name} tier:':<11} {_describe(tier)}\n" for name, tier in settings.tiers)
    console.print(
        f"\n[bold green]twotier is ready[/] at {url} (started in {elapsed:.1f} s)\n"
        f"  database:   {settings.database_url} (in-process queue)\n"
        f"{tiers}"
        f"  demo API key: {api_key}\n"
        f"  try:  {curl}\n"
        f"  or:   {ask_command(url)} {shlex.quote(EXAMPLE_PROMPT)}\n"
        f"  docs: {url}/docs\n",
        soft_wrap=True,
        highlight=False,
    )
    if all(tier.backend == "local" for _, tier in settings.tiers):
        console.print(
            "  [yellow]Demo pairing:[/] every tier runs the same small local model. Point the "
            "large tier at a real model with TWOTIER_LARGE__BACKEND=tgi|openai and "
            "TWOTIER_LARGE__URL.\n",
            soft_wrap=True,
        )


def ask_command(url: str) -> str:
    """`twotier ask` as this process was started (a venv's twotier is not on PATH unless the
    venv is active), at this server's address."""
    if Path(sys.argv[0]).name == "twotier":
        program = shlex.quote(sys.argv[0])
    else:
        program = f"{shlex.quote(sys.executable)} -m services.cli"
    return f"{program} ask" + ("" if url == DEFAULT_URL else f" --url {url}")


def _describe(tier: TierSettings) -> str:
    where = tier.local_model or "bundled" if tier.backend == "local" else str(tier.url)
    return f"{tier.model} ({tier.backend}, {where})"
