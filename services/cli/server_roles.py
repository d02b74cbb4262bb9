"""The server processes: ``twotier api``, ``worker`` and ``beat`` (the distributed roles),
``serve`` (everything in one process) and ``model-server`` (the local model over TGI's API)."""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import click

from services.cli.one_host import (
    default_node_name,
    metrics_folder_of_this_process,
    names_its_node,
)
from services.cli.ports import (
    METRICS_SERVER_HOST,
    metrics_port_is_free_or_exit,
    port_is_free_or_exit,
)
from services.llm.local_extra import require_local_extra
from services.settings import get_settings
from services.settings.tiers import DEFAULT_LOCAL_BATCH_SIZE, SERVICE_QUEUES


def _require_broker() -> None:
    if get_settings().embedded:
        raise click.ClickException(
            "TWOTIER_BROKER_URL is not set: a distributed deployment needs a broker "
            "(e.g. redis://127.0.0.1:6379/0). `twotier serve` runs everything in one process "
            "without one."
        )


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(quota) // int(period)))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run everything in one process: API, both tiers, SQLite, the local model."""
    from services.cli.serve import run_embedded  # noqa: PLC0415

    settings = get_settings()
    if not settings.embedded:
        raise click.ClickException(
            "TWOTIER_BROKER_URL is set, so this is a distributed deployment: run `twotier api` "
            "and `twotier worker` instead (or unset it for the embedded default)."
        )
    if "local" in {settings.small.backend, settings.large.backend}:
        require_local_extra("twotier serve")
    port_is_free_or_exit(host, port)  # before minutes of loading a model, not after
    run_embedded(host=host, port=port)  # loads torch when a tier is local


@click.command("model-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=int)
@click.option(
    "--model", "model_spec", default=None, help="Model folder or .gguf (default: bundled)."
)
@click.option("--model-id", default=None, help="Name reported by /info.")
@click.option("--max-top-n-tokens", default=5, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--max-concurrent-requests",
    default=128,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests in flight beyond which it answers 429, as TGI does.",
)
@click.option(
    "--max-batch-size",
    default=DEFAULT_LOCAL_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Generations decoded together, one step for all; more wait, round-robin by client.",
)
@click.option(
    "--enable-prefill-logprobs",
    is_flag=True,
    help="Return the prompt's log-probs (details.prefill), as TGI 3.x's flag of that name.",
)
@click.option("--raw-prompts", is_flag=True, help="Do not wrap prompts in the chat template.")
def model_server(
    host: str,
    port: int,
    model_spec: str | None,
    model_id: str | None,
    max_top_n_tokens: int,
    max_concurrent_requests: int,
    max_batch_size: int,
    enable_prefill_logprobs: bool,
    raw_prompts: bool,
) -> None:
    """Serve the local model over TGI's HTTP API (/generate, /tokenize, /health, /info,
    /metrics)."""
    require_local_extra("twotier model-server")
    import uvicorn  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415

    from services.llm.local_model import LocalModel  # noqa: PLC0415
    from services.llm.model_files import prepare_local_model  # noqa: PLC0415
    from services.llm.model_server import create_model_server  # noqa: PLC0415

    console = Console(stderr=True)
    source = prepare_local_model(model_spec, cache_dir=get_settings().cache_dir, console=console)
    with console.status(f"Loading {source} ..."):
        model = LocalModel(source, chat_template=not raw_prompts, max_batch_size=max_batch_size)
    from services.settings import BUNDLED_MODEL_NAME  # noqa: PLC0415

    app = create_model_server(
        model,
        model_id=model_id or model_spec or BUNDLED_MODEL_NAME,
        max_top_n_tokens=max_top_n_tokens,
        max_concurrent_requests=max_concurrent_requests,
        prefill_logprobs=enable_prefill_logprobs,
    )
    console.print(f"TGI-compatible model server on http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="Processes (default: the CPUs this process may use).",
)
def api(host: str, port: int, workers: int | None) -> None:
    """Serve the REST API of a distributed deployment (Celery workers do the work).

    Each process answers any number of waiting clients on one event loop; its database work
    runs on TWOTIER_API_DATABASE_THREADS threads, so it needs that many connections plus a
    few (docs/deploy.md). One process per CPU keeps every core busy.
    """
    _require_broker()
    settings = get_settings()
    workers = workers or available_cpus()
    metrics_port_is_free_or_exit(
        settings.api_metrics_port, variable="TWOTIER_API_METRICS_PORT", host=host
    )
    metrics_folder: AbstractContextManager[object] = nullcontext()
    if workers > 1:
        metrics_folder = metrics_folder_of_this_process(settings.home, "api")
    with metrics_folder:
        _run_api(host=host, port=port, workers=workers)


def _run_api(*, host: str, port: int, workers: int) -> None:
    settings = get_settings()
    import uvicorn  # noqa: PLC0415

    from services.api.http_protocol import JsonErrorH11Protocol  # noqa: PLC0415
    from services.llm.server_limits import name_models_if_reachable  # noqa: PLC0415
    from services.logs import configure_logging, server_log_config  # noqa: PLC0415

    configure_logging(level=settings.log_level, json=settings.log_json)
    # Prices are looked up by model name: name the tiers as the workers do.
    name_models_if_reachable(settings)
    if settings.api_metrics_port is not None:
        from services.api.metrics_port import serve_api_metrics  # noqa: PLC0415

        # Before uvicorn starts the worker processes: this process serves all of theirs.
        serve_api_metrics(settings, host=host, port=settings.api_metrics_port)
    uvicorn.run(
        "services.api.app:create_default_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=JsonErrorH11Protocol,
        log_level=settings.log_level.lower(),
        log_config=server_log_config(level=settings.log_level, json=settings.log_json),
        access_log=False,  # services.api.access_log writes it, as JSON, without query strings
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--queues",
    "-Q",
    default=None,
    help="Comma-separated queues: a tier's (small, large, a middle tier's name), webhooks, "
    "maintenance.  [default: every tier's, webhooks, maintenance]",
)
@click.option(
    "--concurrency",
    "-c",
    default=None,
    type=click.IntRange(min=1),
    help="Threads (default: the calls its model tiers take at once, "
    "TWOTIER_{SMALL,LARGE}__MAX_CONCURRENT_CALLS, plus TWOTIER_WORKER_WEBHOOK_CONCURRENCY "
    "for the other queues); processes with --pool prefork (default: cores).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str | None, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for the given queues.

    Its tasks run in a pool of threads (Celery's `threads` pool), one per model call in
    flight: a model call waits on the model server, so one process carries as many calls as
    the server takes at once. `--pool prefork` (one call per process) still works.

    SIGTERM lets running tasks finish for TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S, then hands the
    rest back to the queue (Celery's soft and cold shutdown), so scaling down loses nothing.

    Several workers run side by side on one host with the same settings: each is named
    `<queues>-<pid>@<host>` unless `-n` names it, and keeps its metrics in a folder of its
    own; only TWOTIER_WORKER_METRICS_PORT, when set, must differ (it stops in one line if not).
    """
    _require_broker()
    # Read by Celery (billiard) when it is imported: SIGTERM starts the cold shutdown, which
    # waits worker_soft_shutdown_timeout and then requeues what still runs.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    # Celery's documented hook for a pool of one's own (`--pool custom`), read on import.
    os.environ["CELERY_CUSTOM_WORKER_POOL"] = "workers.pools:ThreadPool"
    settings = get_settings()
    metrics_port_is_free_or_exit(
        settings.worker_metrics_port, variable="TWOTIER_WORKER_METRICS_PORT",
        host=METRICS_SERVER_HOST,
    )  # fmt: skip
    queues = queues or ",".join([*settings.tier_names, *SERVICE_QUEUES])
    queue_names = [name.strip() for name in queues.split(",") if name.strip()]
    argv = ["worker", "--queues", ",".join(queue_names), "--loglevel", settings.log_level]
    if not names_its_node(celery_args):
        argv += ["--hostname", default_node_name(queue_names)]
    if not any(arg in {"--pool", "-P"} or arg.startswith("--pool=") for arg in celery_args):
        from workers.pools import threads_of_queues  # noqa: PLC0415

        argv += ["--pool", "custom"]
        concurrency = concurrency or threads_of_queues(settings, queue_names)
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    with metrics_folder_of_this_process(settings.home, "worker"):
        exit_code = _run_celery_worker([*argv, *celery_args])
    # Threads of model calls that a cold shutdown left behind would hold the interpreter's
    # exit until their calls end; their messages are back on the queue already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _run_celery_worker(argv: list[str]) -> int:
    """Celery's worker, imported only now: after PROMETHEUS_MULTIPROC_DIR is set."""
    from workers.app import app  # noqa: PLC0415

    try:
        app.worker_main(argv)
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1
    return 0


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler of the periodic recovery sweep."""
    _require_broker()
    from workers.app import app  # noqa: PLC0415

    settings = get_settings()
    schedule = []  # Celery's default is a file in the current folder
    if not any(arg in {"-s", "--schedule"} or arg.startswith("--schedule=") for arg in celery_args):
        settings.home.mkdir(parents=True, exist_ok=True)
        schedule = ["--schedule", str(settings.home / "celerybeat-schedule")]
    app.start(["beat", "--loglevel", settings.log_level, *schedule, *celery_args])
