"""``twotier eval`` and ``twotier eval-live``: the evaluation of the escalation policies on
recorded outputs, and the recording of live ones."""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing
from pathlib import Path

import click

from services.evaluation.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, TEMPLATES
from services.settings import get_settings

TEMPLATE_NAMES = tuple(TEMPLATES)

TABLE_WIDTH = 100  # columns of the table where stdout is no terminal (a file, a pipe)


@click.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for results.json and the PNG curves [default: TWOTIER_HOME/eval-results].",
)
@click.option(
    "--protocol",
    type=click.Choice(["service", "paper"]),
    default="service",
    show_default=True,
    help="service: the service's own rule on the test rows; paper: the original code's "
    "evaluation, step for step (its own seeds, W, cost ratios; no trained routers).",
)
@click.option("--seeds", default=None, help="Stream orders to average [default: 0,1,2].")
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=None,
    help="W (default: TWOTIER_WARMUP_QUERIES).",
)
@click.option("--no-baselines", is_flag=True, help="Skip the trained routers (faster).")
@click.option(
    "--cascades",
    is_flag=True,
    help="Instead: every cascade of 2 or more of each chain's models, the best of each length "
    "against the best pair at equal budgets (cascades.json, cascades.png).",
)
def evaluate(paths: tuple[Path, ...], out: Path | None, protocol: str, seeds: str | None,
             warmup: int | None, no_baselines: bool, cascades: bool) -> None:  # fmt: skip
    """Accuracy-cost curves, AUC and router metrics of every policy on recorded outputs.

    The first run embeds every query for the trained routers (minutes); later runs read the
    embeddings from TWOTIER_CACHE_DIR. Progress goes to stderr, the table to stdout.
    """
    if protocol == "paper" and (seeds is not None or warmup is not None):
        raise click.UsageError("the paper protocol fixes its seeds (0, 1, 2) and W (|H| > 20)")
    from rich.console import Console  # noqa: PLC0415

    from services.cli.eval_progress import progress_for  # noqa: PLC0415
    from services.evaluation.report import plot_curves, print_table, write_json  # noqa: PLC0415
    from services.evaluation.run import EvalOptions  # noqa: PLC0415
    from services.evaluation.run import evaluate as run_evaluation  # noqa: PLC0415

    settings = get_settings()
    out = (out or settings.home / "eval-results").resolve()
    if cascades:
        _evaluate_cascades(
            list(paths),
            out=out,
            seeds=[int(seed) for seed in (seeds or "0,1,2").split(",")],
            warmup=settings.warmup_queries if warmup is None else warmup,
        )
        return
    options = EvalOptions(
        protocol="paper" if protocol == "paper" else "service",
        seeds=tuple(int(seed) for seed in (seeds or "0,1,2").split(",")),
        warmup=settings.warmup_queries if warmup is None else warmup,
        baselines=not no_baselines and protocol == "service",
        cache_dir=settings.cache_dir,
    )
    started = time.monotonic()
    with progress_for(Console(stderr=True)) as progress:
        results = run_evaluation(list(paths), options, progress=progress)
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    print_table(results, console)
    write_json(results, out / "results.json")
    plots = plot_curves(results, out)
    console.print(
        f"Evaluated {len(results['pairs'])} pairs ({protocol} protocol) in "
        f"{time.monotonic() - started:.0f} s; "
        f"wrote results.json and {len(plots)} plots to {out}",
        soft_wrap=True,  # the path stays whole, to be copied
    )


def _evaluate_cascades(paths: list[Path], *, out: Path, seeds: list[int], warmup: int) -> None:
    from rich.console import Console  # noqa: PLC0415

    from services.evaluation.cascades_report import (  # noqa: PLC0415
        evaluate_cascades,
        plot_cascades,
        print_cascades,
    )

    summary = evaluate_cascades(paths, seeds=seeds, warmup=warmup, console=Console(stderr=True))
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    print_cascades(summary, console)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cascades.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_cascades(summary["tasks"], out / "cascades.png")
    console.print(
        f"Compared the cascades of {len(summary['tasks'])} chains in {summary['seconds']:.0f} s; "
        f"wrote cascades.json and cascades.png to {out}",
        soft_wrap=True,
    )


@click.command("eval-live")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--template",
    type=click.Choice(TEMPLATE_NAMES),
    default=None,
    help="How a row is shown [default: by the file's name (sst2, fever, boolq, mmlu, ...), "
    "else by its rows' fields].",
)
@click.option(
    "--prompt-style",
    type=click.Choice(PROMPT_STYLES),
    default=DEFAULT_PROMPT_STYLE,
    show_default=True,
    help="completion: plain few-shot text, no chat template; chat: an instruction first, sent "
    "in the model's chat template.",
)
@click.option(
    "--labels",
    default=None,
    help="Class names in label-index order, comma-separated [default: the template's].",
)
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
def evaluate_live(data: Path, template: str | None, prompt_style: str, labels: str | None,
                  task: str | None, out: Path, limit: int | None, shots: int,
                  with_large: bool) -> None:  # fmt: skip
    """Run the small tier (TWOTIER_SMALL__*) over labelled data and record margins."""
    from rich.console import Console  # noqa: PLC0415

    from services.evaluation.live import LiveTiers, record_live  # noqa: PLC0415
    from services.evaluation.prompts import (  # noqa: PLC0415
        TEMPLATES,
        read_examples,
        template_of_file,
    )
    from services.models import Tier  # noqa: PLC0415
    from services.runtime import Runtime  # noqa: PLC0415

    settings = get_settings()
    runtime = Runtime(settings, raw_prompts=prompt_style == "completion")
    label_names = [label.strip() for label in labels.split(",")] if labels else None
    try:
        chosen = TEMPLATES[template] if template else template_of_file(data)
        examples = list(read_examples(
            data, template=chosen, style=prompt_style, labels=label_names,  # type: ignore[arg-type]
            shots=shots,
        ))  # fmt: skip
    except (ValueError, KeyError) as exc:
        raise click.UsageError(f"{data.name}: {exc}") from exc
    planned = len(examples) if limit is None else min(limit, len(examples))
    console = Console(stderr=True)
    with closing(runtime), console.status("Recording ...") as status:
        tiers = LiveTiers(
            small=runtime.backend(Tier.SMALL),
            small_settings=settings.small,
            large=runtime.backend(Tier.LARGE) if with_large else None,
            large_settings=settings.large,
            # As many candidates as the server allows; a local model has no such limit.
            top_n_tokens=settings.max_top_n_tokens
            if settings.small.backend != "local"
            else max(settings.max_top_n_tokens, 10),
        )
        summary = record_live(
            iter(examples),
            task=task or data.stem,
            tiers=tiers,
            out=out,
            limit=limit,
            progress=lambda done: status.update(f"Recorded {done}/{planned} queries ..."),
        )
    auroc = "n/a" if summary.margin_auroc is None else f"{summary.margin_auroc:.3f}"
    console.print(
        f"Small model accuracy {summary.small_accuracy:.3f}, margin AUROC {auroc} (0.5: the "
        f"margin tells its right answers from its wrong ones no better than chance); "
        f"{summary.written} queries, {prompt_style} prompts, {chosen.name} template.",
        soft_wrap=True,
    )
    console.print(
        f"Wrote {summary.written} records to {out}; evaluate them with `twotier eval {out}`.",
        soft_wrap=True,  # the path stays whole, to be copied
    )
