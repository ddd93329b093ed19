"""``joyforge run``: run a pipeline file, resumably, and exit with the run's verdict (see EXIT_STATUS)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..config.pipeline import Pipeline
from ..engine.summary import RunSummary
from ..errors import ExitCode, JoyForgeError, RunStopped

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
     exceeded, Ctrl-C, the disk filled up; finished records are kept, re-run the
     same command to resume
"""


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    # Logs and CI are not terminals: give the tables room instead of truncating model names.
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 120)
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
    if summary.cost:
        rows.append(("cost", f"{summary.cost:.4f}"))
    for label, value in rows:
        table.add_row(label, str(value))
    console.print(table)
    models = Table(title="models", title_justify="left")
    for column in (
        "model",
        "calls",
        "cached",
        "retries",
        "errors",
        "invalid",
        "prompt tok",
        "completion tok",
        "mean latency",
    ):
        models.add_column(column)
    for name, usage in summary.models.items():
        models.add_row(
            name,
            *(
                str(usage[k])
                for k in (
                    "calls",
                    "cache_hits",
                    "retries",
                    "errors",
                    "invalid_replies",
                    "prompt_tokens",
                    "completion_tokens",
                )
            ),
            f"{usage['mean_latency']:.3f}s",
        )
    if summary.models:
        console.print(models)
    counters = {name: stats for name, stats in summary.steps.items() if stats}
    if counters:
        steps = Table(title="steps", title_justify="left", show_header=False)
        for name, stats in counters.items():
            shown = ", ".join(f"{key} {value}" for key, value in list(stats.items())[:12])
            steps.add_row(name, shown + (" ..." if len(stats) > 12 else ""))
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
    code = execute(pipeline, overwrite=overwrite, progress=False if no_progress else None, address=address)
    if code != ExitCode.OK:
        sys.exit(int(code))


def execute(
    pipeline: Pipeline, *, overwrite: bool = False, progress: bool | None = None, address: str | None = None
) -> ExitCode:
    """Run ``pipeline``, print its summary and one line of verdict, and return the exit status.

    Errors that stop a run before it starts (configuration, files, the folder's lock) propagate: the
    ``joyforge`` entry point turns them into one line (:func:`joydataforge.cli.main`).
    """
    from ..engine.local import BadInputStop, LocalExecutor

    summaries: list[RunSummary] = []
    if pipeline.run.executor == "ray":
        from ..engine.ray_executor import RayExecutor

        runner: LocalExecutor = RayExecutor(
            pipeline, overwrite=overwrite, progress=progress, address=address, on_summary=summaries.append
        )
    else:
        runner = LocalExecutor(pipeline, overwrite=overwrite, progress=progress, on_summary=summaries.append)
    try:
        summary = runner.run_sync()
    except (RunStopped, BadInputStop) as stop:
        if summaries:
            print_summary(summaries[-1])
        click.echo(stop_line(stop, summaries[-1] if summaries else None), err=True)
        return ExitCode.CONFIG if isinstance(stop, BadInputStop) else ExitCode.STOPPED
    print_summary(summary)
    for line in verdict_lines(summary, pipeline):
        click.echo(line, err=True)
    return summary.exit_code()


def stop_line(stop: JoyForgeError, summary: RunSummary | None) -> str:
    """The one line that says why a run stopped and what to do next."""
    if not isinstance(stop, RunStopped):
        return f"error: {stop}"
    done = f"{summary.succeeded_total} records done" if summary is not None else "finished records kept"
    if stop.reason == "interrupted":
        return f"interrupted: {done}, re-run the same command to resume"
    return f"stopped: {stop.reason}; {done}, re-run the same command to resume"


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
