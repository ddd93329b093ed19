"""``joyforge plan PIPELINE``: calls, tokens, cost and time of a run, per step and model, before paying for it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..config.pipeline import Pipeline
from ..engine.fanout import Assumptions
from ..engine.plan import Plan, known_assumptions, plan_sync, registry_for
from ..models.config import ModelRegistry


@click.command("plan")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option(
    "--pilot",
    type=click.IntRange(min=0),
    default=0,
    help="Run this many records, spread over the input (seeded), for real first (cached: the later run gets "
    "them free); count them as measured and extrapolate the rest from them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (totals, per step and model).")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models (as run --models).")
@click.option("--start", type=int, help="Skip this many input records first (as run --start).")
@click.option("--limit", type=int, help="Plan for at most this many input records (as run --limit).")
@click.option(
    "--assume",
    "assumed",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set an assumption (repeatable), e.g. --assume cascade.gate_rate=0.3.",
)
@click.option("--assume-file", type=click.Path(dir_okay=False), help="A YAML file of NAME: VALUE assumptions.")
@click.option("--list-assumptions", is_flag=True, help="List every assumption with its default, and exit.")
@click.option("--pilot-dir", type=click.Path(file_okay=False), help="Keep the pilot's output here (else discarded).")
@click.option("--no-progress", is_flag=True, help="No progress bar during the pilot.")
def plan_command(
    pipeline_file: str,
    pilot: int,
    as_json: bool,
    models_file: str | None,
    start: int | None,
    limit: int | None,
    assumed: tuple[str, ...],
    assume_file: str | None,
    list_assumptions: bool,
    pilot_dir: str | None,
    no_progress: bool,
) -> None:
    """Plan PIPELINE_FILE's run: per step and model the calls, prompt and completion tokens, cost (also at
    the batch price where the provider has one) and time, with the calls already cached counted free.

    Without --pilot nothing is run: the counts come from each step's settings over the input records, prompt
    tokens from the real prompts and tokenizer, completion tokens from max_tokens; what depends on replies
    is an assumption, listed with its value. docs/cost.md explains every number.
    """
    if list_assumptions:
        _print_assumptions()
        return
    overrides: dict[str, Any] = {}
    if start is not None:
        overrides["input.start"] = start
    if limit is not None:
        overrides["input.limit"] = limit
    pipeline = Pipeline.from_yaml(pipeline_file, overrides=overrides)
    if models_file is not None:
        pipeline.models = os.path.abspath(models_file)
    registry: ModelRegistry = registry_for(pipeline)
    assume = Assumptions.parse(known_assumptions(), list(assumed), assume_file)
    progress = False if (no_progress or as_json or not sys.stderr.isatty()) else None
    plan = plan_sync(
        pipeline,
        registry,
        assume,
        pilot=pilot,
        pilot_dir=Path(pilot_dir).resolve() if pilot_dir else None,
        progress=bool(progress is None and pipeline.run.progress),
    )
    if as_json:
        click.echo(json.dumps(plan.as_dict(), ensure_ascii=False, indent=2))
    else:
        print_plan(plan)


def _print_assumptions() -> None:
    table = Table(title="assumptions (joyforge plan --assume NAME=VALUE)", title_justify="left")
    for column in ("name", "default", "range", "what it is"):
        table.add_column(column)
    for name, spec in sorted(known_assumptions().items()):
        table.add_row(name, f"{spec.default:g}", f"{spec.low:g}-{spec.high:g}", spec.description)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _n(value: float) -> str:
    if value >= 100 or abs(value - round(value)) < 1e-6:
        return f"{round(value):,}"
    return f"{value:,.1f}"


def _span(value: float, low: float, high: float) -> str:
    if abs(high - low) < 0.05:
        return _n(value)
    return f"{_n(value)} ({_n(low)}-{_n(high)})"


def _money(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.4f}" if value < 100 else f"{value:,.2f}"


def _time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def print_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    totals = plan.totals()
    where = f"{plan.records:,} input records"
    if plan.pilot is not None:
        where += (
            f", {plan.pilot} of them run as a pilot ({plan.pilot_seconds or 0:.0f}s, measured), the rest extrapolated"
        )
    console.print(f"plan of '{plan.pipeline}': {where}", markup=False, highlight=False)
    table = Table(title_justify="left", show_footer=True)
    columns = ("step", "model", "calls", "cached", "prompt tok", "completion tok", "cost", "batch cost", "time")
    footer = (
        "total",
        "",
        _span(totals["calls"], *totals["calls_range"]),
        _n(totals["cached_calls"]),
        _n(totals["prompt_tokens"]),
        _n(totals["completion_tokens"]),
        _money(totals["cost"]) + (" +?" if totals["unpriced_models"] else ""),
        _money(totals["batch_cost"]) + (" +?" if totals["unpriced_models"] else ""),
        _time(plan.seconds_range[0])
        + ("" if plan.seconds_range[1] - plan.seconds_range[0] < 1 else f"-{_time(plan.seconds_range[1])}"),
    )
    for column, foot in zip(columns, footer):
        table.add_column(column, footer=foot, justify="left" if column in ("step", "model") else "right")
    for line in plan.lines:
        table.add_row(
            line.step,
            line.model,
            _span(line.calls, *line.calls_range) + ("" if line.exact else " ~"),
            _n(line.cached_calls),
            _n(line.prompt_tokens),
            _n(line.completion_tokens),
            _money(line.cost),
            _money(line.batch_cost),
            _time(line.seconds),
        )
    console.print(table)
    console.print(
        "~: first attempts depend on replies (assumptions, or measured by the pilot); (low-high): the range over "
        "the assumptions' plausible values, or the pilot's spread; cached calls cost nothing; "
        "time: models in parallel - one after another",
        markup=False,
        highlight=False,
    )
    if plan.assumptions:
        console.print("assumptions:", markup=False)
        for item in plan.assumptions:
            console.print(
                f"  {item['name']} = {item['value']:g} ({item['source']}): {item['description']}",
                markup=False,
                highlight=False,
            )
    if plan.notes:
        console.print("notes:", markup=False)
        for note in plan.notes:
            console.print(f"  {note}", markup=False, highlight=False)
