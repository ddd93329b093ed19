"""``joyforge run``: run a pipeline file, resumably, and exit with the run's verdict (see EXIT_STATUS)."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..config.pipeline import Pipeline
from ..engine.summary import RunSummary, concurrency_text
from ..errors import BudgetExceeded, ConfigError, ExitCode, JoyForgeError, RunStopped
from ..models.budget import money
from .terminal import make_console, name_table, pairs_text, plain, terminal_width

EXIT_STATUS = """\b
Exit status (also in summary.json as exit_status; docs/reliability.md):
  0  every record done (written, or filtered out on purpose)
  1  a bug in joyforge: one line, the traceback with `joyforge --debug run ...`
  2  a configuration, command-line or input problem, nothing (more) was run: a bad
     setting, a missing or unreadable file, an output folder that cannot be written,
     another run holding the output folder, a bad record under on_bad_record: stop
  3  the run finished but some records failed: they are in failures.jsonl
     (`--retry-failed` redoes them); counted over the whole output folder
  4  the run finished and no record succeeded
  5  the run stopped early, cleanly: a model's endpoint is down, --max-failures was
     exceeded, the next call would pass run.budget (--budget), Ctrl-C, the disk
     filled up; finished records are kept, re-run the same command to resume (with
     a larger budget when the budget stopped it: the last line says how)
"""


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """The end-of-run tables: plain text (a counter is printed as written) that fits 80 columns."""
    # Logs and CI are not terminals: give the tables room instead of wrapping model names.
    console = console or make_console(stderr=True, width=terminal_width())
    table = Table(title="run summary", show_header=False, title_justify="left")
    rows = [
        ("records in", summary.records_in),
        ("records out", summary.records_out),
        ("inputs done", summary.inputs_done),
        ("filtered", summary.filtered),
        ("failed (see failures.jsonl)", summary.failed),
        ("bad input lines", summary.bad_input),
        ("skipped (done earlier)", summary.skipped),
        ("cache hits", summary.cache_hits),
        ("tokens", f"{summary.tokens:,}"),
        ("time", f"{summary.seconds:.1f}s"),
    ]
    if summary.reasoning_tokens:  # thinking models: how much of the output was trace (part of "tokens")
        rows.insert(-1, ("reasoning tokens", f"{summary.reasoning_tokens:,}"))
    if summary.cost:
        rows.append(("cost", f"{summary.cost:.4f}"))
    for label, value in rows:
        table.add_row(plain(label), plain(value))
    console.print(table)
    if summary.models:
        models = name_table("models", "model", "calls, tokens, latency")
        for name, usage in summary.models.items():
            details = [
                ("calls", f"{usage['calls']:,}"),
                ("cached", f"{usage['cache_hits']:,}"),
                ("retries", f"{usage['retries']:,}"),
                ("errors", f"{usage['errors']:,}"),
                ("invalid", f"{usage['invalid_replies']:,}"),
                ("tokens in", f"{usage['prompt_tokens']:,}"),
                ("out", f"{usage['completion_tokens']:,}"),
                ("mean latency", f"{usage['mean_latency']:.3f}s"),
            ]
            if usage.get("reasoning_tokens"):  # of "out", the thinking models' traces
                details.insert(-1, ("reasoning", f"{usage['reasoning_tokens']:,}"))
            if usage.get("concurrency"):  # the limit it ended at (docs/models.md, adaptive concurrency)
                details.append(("limit", concurrency_text(usage["concurrency"])))
            models.add_row(plain(name), pairs_text(details))
        console.print(models)
    counters = {name: stats for name, stats in summary.steps.items() if stats}
    if counters:
        steps = name_table("steps", "step", "counters")
        for name, stats in counters.items():
            shown = list(stats.items())[:12] + ([("", "...")] if len(stats) > 12 else [])
            steps.add_row(plain(name), pairs_text(shown, sep=", "))
        console.print(steps)
    if summary.bad_records:
        more = summary.bad_input - len(summary.bad_records)
        console.print("bad input:", markup=False)
        for line in summary.bad_records:
            console.print(f"  {line}", markup=False, highlight=False)
        if more > 0:
            console.print(f"  ... and {more} more in failures.jsonl", markup=False)
    console.print(f"output: {summary.output_dir}", markup=False)


@click.command("run", epilog=EXIT_STATUS)
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_dir", help="Output folder (overrides output.dir in the file).")
@click.option("--start", type=int, help="Skip this many input records first.")
@click.option("--limit", type=int, help="Read at most this many input records.")
@click.option("--concurrency", type=int, help="Records in flight at once.")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
@click.option("--order", type=click.Choice(["input", "completion"]), help="Output order.")
@click.option("--retry-failed", is_flag=True, help="Redo records that failed in an earlier run of this folder.")
@click.option("--overwrite", is_flag=True, help="Start afresh: delete this folder's earlier output first.")
@click.option(
    "--max-failures",
    metavar="N|P%",
    help="Stop early (exit 5, resumable) once more than N records failed, or more than P% of the records "
    "finished (overrides run.max_failures).",
)
@click.option(
    "--budget",
    "budget_cost",
    type=click.FloatRange(min=0),
    metavar="COST",
    help="Money the run may spend, all models and every run of the output folder together (overrides "
    "run.budget.cost; docs/cost.md). A call that could pass it is not made: the run stops, exit 5.",
)
@click.option(
    "--budget-tokens",
    type=click.IntRange(min=0),
    metavar="N",
    help="Prompt plus completion tokens the run may spend, counted like --budget (overrides run.budget.tokens).",
)
@click.option(
    "--batch",
    is_flag=True,
    help="Send every model's uncached calls through its provider's batch API (about half the price; docs/cost.md, "
    "Batch): each stage's calls go out as one batch and the run stops (exit 5); re-run the same command to collect "
    "and go on. Models with batch: true in models.yaml are batched without it.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="With batches: instead of stopping while a batch runs, look again every SECONDS until the run is done.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (logs and CI).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where records run (overrides run.executor).")
@click.option(
    "--address", help="Ray cluster to join ('auto', 'ray://HOST:10001'); default: RAY_ADDRESS, else a local one."
)
def run_command(
    pipeline_file: str,
    output_dir: str | None,
    start: int | None,
    limit: int | None,
    concurrency: int | None,
    models_file: str | None,
    order: str | None,
    retry_failed: bool,
    overwrite: bool,
    max_failures: str | None,
    budget_cost: float | None,
    budget_tokens: int | None,
    batch: bool,
    poll: float | None,
    no_progress: bool,
    executor: str | None,
    address: str | None,
) -> None:
    """Run PIPELINE_FILE (YAML). Re-running the same command resumes where it stopped.

    One run at a time per output folder: a second one exits at once (status 2) naming the pid that holds it.
    """
    overrides: dict[str, Any] = {}
    for key, value in (
        ("input.start", start),
        ("input.limit", limit),
        ("run.concurrency", concurrency),
        ("output.order", order),
        ("run.executor", executor),
        ("run.max_failures", max_failures),
    ):
        if value is not None:
            overrides[key] = value
    if retry_failed:
        overrides["run.retry_failed"] = True
    pipeline = Pipeline.from_yaml(pipeline_file, overrides=overrides)
    if output_dir is not None:
        # A folder given on the command line is relative to where the user typed it, not to the file.
        pipeline.output.dir = os.path.abspath(output_dir)
    if models_file is not None:
        pipeline.models = os.path.abspath(models_file)
    limits = {"cost": budget_cost, "tokens": budget_tokens}
    if any(value is not None for value in limits.values()):  # merged into run.budget: per-model limits stay
        budget = pipeline.run.budget
        pipeline.run.budget = budget.model_copy(update={k: v for k, v in limits.items() if v is not None})
    code = execute(
        pipeline,
        overwrite=overwrite,
        progress=False if no_progress else None,
        address=address,
        command=_command_again(click.get_current_context()),
        batch=batch,
        poll=poll,
    )
    if code != ExitCode.OK:
        sys.exit(int(code))


def _command_again(ctx: click.Context) -> list[str]:
    """This ``joyforge run`` command as typed, less ``--overwrite`` (it would wipe what a resume goes on from)."""
    words = ["joyforge", "run"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value not in (None, False) and param.name != "overwrite":
            words.extend([param.opts[0]] if value is True else [param.opts[0], str(value)])
    return words


def execute(
    pipeline: Pipeline,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    address: str | None = None,
    command: list[str] | None = None,
    batch: bool = False,
    poll: float | None = None,
) -> ExitCode:
    """Run ``pipeline``, print its summary and one line of verdict, and return the exit status.

    Errors that stop a run before it starts (configuration, files, the folder's lock) propagate: the
    ``joyforge`` entry point turns them into one line (:func:`joydataforge.cli.main`). ``command``: the words
    that run it again (a budget stop says them, with a larger budget). ``batch``: every model's uncached calls
    through its provider's batch API; ``poll``: wait for batches, looking every so many seconds, not stop.
    """
    from ..engine.batches import BatchPending
    from ..engine.local import BadInputStop, LocalExecutor

    summaries: list[RunSummary] = []
    if pipeline.run.executor == "ray" and batch:
        raise ConfigError("--batch runs on the local executor (run.executor: local)")

    def runner() -> LocalExecutor:  # a fresh one per pass: steps keep state (a dedup's index) within a run
        if pipeline.run.executor == "ray":
            from ..engine.ray_executor import RayExecutor

            ray = RayExecutor(
                pipeline, overwrite=overwrite, progress=progress, address=address, on_summary=summaries.append
            )
            batched = sorted(name for name, config in ray.registry.models.items() if config.batch)
            if batched:
                raise ConfigError(f"models with batch: true ({', '.join(batched)}) run on the local executor only")
            return ray
        return LocalExecutor(pipeline, overwrite=overwrite, progress=progress, on_summary=summaries.append, batch=batch)

    try:
        while True:
            try:
                summary = runner().run_sync()
                break
            except BatchPending as waiting:
                if poll is None:
                    raise
                click.echo(f"{waiting.reason.split(';')[0]}; looking again in {poll:g}s", err=True)
                time.sleep(poll)
                overwrite = False  # the first pass started afresh; the next ones go on from it
    except (RunStopped, BadInputStop) as stop:
        if summaries:
            print_summary(summaries[-1])
        click.echo(stop_line(stop, summaries[-1] if summaries else None, command), err=True)
        return ExitCode.CONFIG if isinstance(stop, BadInputStop) else ExitCode.STOPPED
    print_summary(summary)
    for line in verdict_lines(summary, pipeline):
        click.echo(line, err=True)
    return summary.exit_code()


def stop_line(stop: JoyForgeError, summary: RunSummary | None, command: list[str] | None = None) -> str:
    """The one line that says why a run stopped and what to do next."""
    if not isinstance(stop, RunStopped):
        return f"error: {stop}"
    from ..engine.batches import BatchPending

    if isinstance(stop, BatchPending):  # says itself what to do next
        return stop.reason
    done = f"{summary.succeeded_total} records done" if summary is not None else "finished records kept"
    if isinstance(stop, BudgetExceeded):
        return f"stopped: {stop.reason}; {done}; {larger_budget(stop, command)}"
    if stop.reason == "interrupted":
        return f"interrupted: {done}, re-run the same command to resume"
    return f"stopped: {stop.reason}; {done}, re-run the same command to resume"


def larger_budget(stop: BudgetExceeded, command: list[str] | None) -> str:
    """How to go on: the command again with twice the limit that stopped the run (a model's own limit is in
    the pipeline file: that one is raised there)."""
    if stop.measure == "tokens":
        option, larger = "--budget-tokens", str(int(stop.limit) * 2 or 1_000_000)
    else:
        option, larger = "--budget", money(stop.limit * 2) if stop.limit else "1"
    if command and stop.model is None:  # the option that stopped it is replaced by the larger one
        command = [word for i, word in enumerate(command) if option not in (word, command[i - 1] if i else "")]
        command = [*command, option, larger]
    again = shlex.join(command) if command else None
    if stop.model is not None:
        setting = f"run.budget.models.{stop.model}.{stop.measure}"
        return f"to go on, raise {setting} in the pipeline file and run again" + (f": {again}" if again else "")
    if again is None:
        return f"to go on, run again with a larger run.budget.{stop.measure} ({larger}, say)"
    return f"to go on with a larger budget: {again}"


def verdict_lines(summary: RunSummary, pipeline: Pipeline) -> list[str]:
    """A run that read nothing, or whose folder holds failures, says so in one line (the exit status too)."""
    lines = []
    if summary.records_in == 0:
        window = pipeline.input.start or pipeline.input.limit is not None
        where = pipeline.resolve(pipeline.input.path)
        lines.append(f"warning: no input records in {where}" + (" (in the --start/--limit window)" if window else ""))
    code = summary.exit_code()
    failures = os.path.join(summary.output_dir, "failures.jsonl")
    if code == ExitCode.SOME_FAILED:
        total = summary.failed_total + summary.succeeded_total
        lines.append(f"{summary.failed_total} of {total} records failed: see {failures} (--retry-failed redoes them)")
    elif code == ExitCode.ALL_FAILED:
        lines.append(f"no record succeeded: all {summary.failed_total} failed, see {failures}")
    return lines
