"""The ``twotier`` command."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from services.llm.local_extra import LocalExtraMissing, require_local_extra
from services.settings import get_settings


class TwotierGroup(click.Group):
    """Reports a command that needs the `local` extra, run without it, as one line (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LocalExtraMissing as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=TwotierGroup)
def main() -> None:
    """twotier: a small model answers every query; unsure ones escalate to a large model."""


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


def _share_metrics_between_processes() -> None:
    """Forked processes (the Celery pool, uvicorn's workers) write their metrics to files in
    PROMETHEUS_MULTIPROC_DIR, which the process that serves /metrics reads. It must be set
    before prometheus_client is first imported, and a previous run's files must go."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="twotier-metrics-")
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()


@main.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head), then encrypt every webhook secret
    with the first key of TWOTIER_SECRETS_KEYS (the last step of a key rotation)."""
    from services.db import session_scope  # noqa: PLC0415 - load Alembic and the ORM only here
    from services.migrate import upgrade_to_head  # noqa: PLC0415
    from services.webhooks.secret_keys import reencrypt_webhook_secrets  # noqa: PLC0415

    upgrade_to_head()
    with session_scope() as session:
        rewritten = reencrypt_webhook_secrets(session)
    click.echo(f"database is at the latest migration; {rewritten} secret holders re-encrypted")


@main.group()
def tenants() -> None:
    """Manage tenants."""


@tenants.command("create")
@click.argument("name")
@click.option(
    "--target-escalation-rate",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Share of queries to escalate (default: TWOTIER_DEFAULT_TARGET_ESCALATION_RATE).",
)
def create_tenant(name: str, target_escalation_rate: float | None) -> None:
    """Create a tenant and print its first API key (shown only this once)."""
    from services.db import session_scope  # noqa: PLC0415
    from services.errors import TwotierError  # noqa: PLC0415
    from services.tenants import create_tenant as create  # noqa: PLC0415

    rate = target_escalation_rate
    if rate is None:
        rate = get_settings().default_target_escalation_rate
    try:
        with session_scope() as session:
            created = create(session, name=name, target_escalation_rate=rate)
    except TwotierError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"tenant_id: {created.tenant.id}")
    click.echo(f"api_key:   {created.api_key}")
    click.echo("Keep the API key now: only its hash is stored.", err=True)


@tenants.command("budget")
@click.argument("name")
@click.option(
    "--period",
    type=click.Choice(["none", "daily", "monthly"]),
    default="monthly",
    show_default=True,
    help="Limits reset on this UTC boundary.",
)
@click.option("--hard", "hard_limit", default=None, help="Hard limit: submits beyond it get 402.")
@click.option("--soft", "soft_limit", default=None, help="Soft limit: an alert once per period.")
def set_tenant_budget(name: str, period: str, hard_limit: str | None,
                      soft_limit: str | None) -> None:  # fmt: skip
    """Set a tenant's budget (in the price table's currency); omit a limit to remove it."""
    from decimal import Decimal, InvalidOperation  # noqa: PLC0415

    from services.db import session_scope  # noqa: PLC0415
    from services.errors import TwotierError  # noqa: PLC0415
    from services.tenants import set_budget  # noqa: PLC0415

    try:
        hard = Decimal(hard_limit) if hard_limit is not None else None
        soft = Decimal(soft_limit) if soft_limit is not None else None
    except InvalidOperation as exc:
        raise click.BadParameter("limits are decimal amounts, e.g. 25 or 0.50") from exc
    try:
        with session_scope() as session:
            set_budget(session, name=name, period=period, hard_limit=hard, soft_limit=soft)
    except TwotierError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{name}: {period} budget, hard {hard_limit or 'none'}, soft {soft_limit or 'none'}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run everything in one process: API, both tiers, SQLite, the local model."""
    from services.serve import run_embedded  # noqa: PLC0415

    settings = get_settings()
    if not settings.embedded:
        raise click.ClickException(
            "TWOTIER_BROKER_URL is set, so this is a distributed deployment: run `twotier api` "
            "and `twotier worker` instead (or unset it for the embedded default)."
        )
    if "local" in {settings.small.backend, settings.large.backend}:
        require_local_extra("twotier serve")
    run_embedded(host=host, port=port)  # loads torch when a tier is local


@main.command()
@click.argument("prompt")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, envvar="TWOTIER_URL")
@click.option("--api-key", envvar="TWOTIER_API_KEY", help="Default: the local demo tenant's key.")
@click.option("--task", default=None, help="Task label (queries with one label share a threshold).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
def ask(
    prompt: str,
    url: str,
    api_key: str | None,
    task: str | None,
    max_new_tokens: int | None,
    timeout: float,
) -> None:
    """Ask a running twotier server and print the answer, tier, margin and threshold."""
    from services.ask import ask_and_wait, describe  # noqa: PLC0415

    query = ask_and_wait(
        prompt, url=url, api_key=api_key, task=task, max_new_tokens=max_new_tokens, timeout=timeout
    )
    click.echo(describe(query))
    if query["status"] != "succeeded":
        raise SystemExit(1)


@main.command("model-server")
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
        model = LocalModel(source, chat_template=not raw_prompts)
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


@main.group()
def models() -> None:
    """Manage local models."""


@models.command("pull")
def pull_models() -> None:
    """Download and convert the local models the settings name (run by `serve` when needed)."""
    require_local_extra("twotier models pull")
    from rich.console import Console  # noqa: PLC0415

    from services.llm.model_files import prepare_local_model  # noqa: PLC0415

    settings = get_settings()
    console = Console(stderr=True)
    specs = {
        tier.local_model for tier in (settings.small, settings.large) if tier.backend == "local"
    }
    for spec in specs or {None}:
        source = prepare_local_model(spec, cache_dir=settings.cache_dir, console=console)
        click.echo(f"{spec or 'bundled model'}: {source}")


@main.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("eval-results"),
    show_default=True,
    help="Folder for results.json and the PNG curves.",
)
@click.option("--seeds", default="0,1,2", show_default=True, help="Stream orders to average.")
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=None,
    help="W (default: TWOTIER_WARMUP_QUERIES).",
)
@click.option("--no-baselines", is_flag=True, help="Skip the trained routers (faster).")
def evaluate(paths: tuple[Path, ...], out: Path, seeds: str, warmup: int | None,
             no_baselines: bool) -> None:  # fmt: skip
    """Accuracy-cost curves, AUC and router metrics of every policy on recorded outputs."""
    from rich.console import Console  # noqa: PLC0415

    from services.evaluation.report import plot_curves, print_table, write_json  # noqa: PLC0415
    from services.evaluation.run import EvalOptions  # noqa: PLC0415
    from services.evaluation.run import evaluate as run_evaluation  # noqa: PLC0415

    settings = get_settings()
    options = EvalOptions(
        seeds=tuple(int(seed) for seed in seeds.split(",")),
        warmup=settings.warmup_queries if warmup is None else warmup,
        baselines=not no_baselines,
        cache_dir=settings.cache_dir,
    )
    console = Console(width=None if sys.stdout.isatty() else 220)
    with console.status("Evaluating ...") as status:
        results = run_evaluation(list(paths), options, progress=status.update)
    print_table(results, console)
    write_json(results, out / "results.json")
    plots = plot_curves(results, out)
    console.print(f"Wrote {out / 'results.json'} and {len(plots)} plots in {out}/")


@main.command("eval-live")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["classification", "multiple-choice"]), required=True)
@click.option("--labels", default=None, help="Class names in label-index order, comma-separated.")
@click.option("--task", default=None, help="Task name in the records (default: the file's stem).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSONL records for `twotier eval`.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Queries to record.")
@click.option(
    "--shots",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Leading rows used as worked examples in every prompt.",
)
@click.option(
    "--with-large",
    is_flag=True,
    help="Also ask the large tier (else the large model is taken to be always right).",
)
def evaluate_live(data: Path, kind: str, labels: str | None, task: str | None, out: Path,
                  limit: int | None, shots: int, with_large: bool) -> None:  # fmt: skip
    """Run the small tier (TWOTIER_SMALL__*) over labelled data and record margins."""
    from rich.console import Console  # noqa: PLC0415

    from services.evaluation.live import LiveTiers, read_examples, record_live  # noqa: PLC0415
    from services.llm.registry import backend_for  # noqa: PLC0415
    from services.models import Tier  # noqa: PLC0415

    settings = get_settings()
    label_names = [label.strip() for label in labels.split(",")] if labels else None
    examples = read_examples(data, kind=kind, labels=label_names, shots=shots)  # type: ignore[arg-type]
    console = Console(stderr=True)
    with console.status("Recording ...") as status:
        tiers = LiveTiers(
            small=backend_for(Tier.SMALL),
            small_settings=settings.small,
            large=backend_for(Tier.LARGE) if with_large else None,
            large_settings=settings.large,
            # As many candidates as the server allows; a local model has no such limit.
            top_n_tokens=settings.max_top_n_tokens
            if settings.small.backend != "local"
            else max(settings.max_top_n_tokens, 10),
        )
        written = record_live(
            examples,
            task=task or data.stem,
            tiers=tiers,
            out=out,
            limit=limit,
            progress=lambda done: status.update(f"Recorded {done} queries ..."),
        )
    console.print(f"Wrote {written} records to {out}; evaluate them with `twotier eval {out}`.")


@main.command()
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
    if workers > 1:
        _share_metrics_between_processes()
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
        serve_api_metrics(host=host, port=settings.api_metrics_port)
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


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default="small,large,webhooks,maintenance", show_default=True)
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
def worker(queues: str, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for the given queues.

    Its tasks run in a pool of threads (Celery's `threads` pool), one per model call in
    flight: a model call waits on the model server, so one process carries as many calls as
    the server takes at once. `--pool prefork` (one call per process) still works.

    SIGTERM lets running tasks finish for TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S, then hands the
    rest back to the queue (Celery's soft and cold shutdown), so scaling down loses nothing.
    """
    _require_broker()
    # Read by Celery (billiard) when it is imported: SIGTERM starts the cold shutdown, which
    # waits worker_soft_shutdown_timeout and then requeues what still runs.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    # Celery's documented hook for a pool of one's own (`--pool custom`), read on import.
    os.environ["CELERY_CUSTOM_WORKER_POOL"] = "workers.pools:ThreadPool"
    _share_metrics_between_processes()
    from workers.app import app  # noqa: PLC0415
    from workers.pools import threads_of_queues  # noqa: PLC0415

    argv = ["worker", "--queues", queues, "--loglevel", get_settings().log_level]
    if not any(arg in {"--pool", "-P"} or arg.startswith("--pool=") for arg in celery_args):
        argv += ["--pool", "custom"]
        concurrency = concurrency or threads_of_queues(
            get_settings(), [q.strip() for q in queues.split(",")]
        )
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    try:
        app.worker_main([*argv, *celery_args])
    except SystemExit as stopped:
        exit_code = stopped.code if isinstance(stopped.code, int) else 1
    else:
        exit_code = 0
    # Threads of model calls that a cold shutdown left behind would hold the interpreter's
    # exit until their calls end; their messages are back on the queue already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler of the periodic recovery sweep."""
    _require_broker()
    from workers.app import app  # noqa: PLC0415

    app.start(["beat", "--loglevel", get_settings().log_level, *celery_args])


if __name__ == "__main__":
    main()
