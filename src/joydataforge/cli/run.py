"""``joyforge run``: run a pipeline file, resumably."""
from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..engine.summary import RunSummary
from ..config.pipeline import Pipeline


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    # Logs and CI are not terminals: give the tables room instead of truncating model names.
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    table = Table(title="run summary", show_header=False, title_justify="left")
    rows = [
        ("records in", summary.records_in), ("records out", summary.records_out),
        ("inputs done", summary.inputs_done), ("filtered", summary.filtered),
        ("failed (see failures.jsonl)", summary.failed), ("bad input lines", summary.bad_input),
        ("skipped (done earlier)", summary.skipped), ("cache hits", summary.cache_hits),
        ("tokens", f"{summary.tokens:,}"), ("time", f"{summary.seconds:.1f}s"),
    ]
    if summary.cost:
        rows.append(("cost", f"{summary.cost:.4f}"))
    for label, value in rows:
        table.add_row(label, str(value))
    console.print(table)
    models = Table(title="models", title_justify="left")
    for column in ("model", "calls", "cached", "retries", "errors", "invalid", "prompt tok", "completion tok",
                   "mean latency"):
        models.add_column(column)
    for name, usage in summary.models.items():
        models.add_row(name, *(str(usage[k]) for k in ("calls", "cache_hits", "retries", "errors", "invalid_replies",
                                                         "prompt_tokens", "completion_tokens")),
                       f"{usage['mean_latency']:.3f}s")
    if summary.models:
        console.print(models)
    counters = {name: stats for name, stats in summary.steps.items() if stats}
    if counters:
        steps = Table(title="steps", title_justify="left", show_header=False)
        for name, stats in counters.items():
            shown = ", ".join(f"{key} {value}" for key, value in list(stats.items())[:12])
            steps.add_row(name, shown + (" ..." if len(stats) > 12 else ""))
        console.print(steps)
    console.print(f"output: {summary.output_dir}")


@click.command("run")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_dir", help="Output folder (overrides output.dir in the file).")
@click.option("--start", type=int, help="Skip this many input records first.")
@click.option("--limit", type=int, help="Read at most this many input records.")
@click.option("--concurrency", type=int, help="Records in flight at once.")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
@click.option("--order", type=click.Choice(["input", "completion"]), help="Output order.")
@click.option("--retry-failed", is_flag=True, help="Redo records that failed in an earlier run of this folder.")
@click.option("--overwrite", is_flag=True, help="Start afresh: delete this folder's earlier output first.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs and CI).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where records run (overrides run.executor).")
@click.option("--address", help="Ray cluster to join ('auto', 'ray://HOST:10001'); default: RAY_ADDRESS, "
                                "else a local one.")
def run_command(pipeline_file: str, output_dir: str | None, start: int | None, limit: int | None,
                concurrency: int | None, models_file: str | None, order: str | None, retry_failed: bool,
                overwrite: bool, no_progress: bool, executor: str | None, address: str | None) -> None:
    """Run PIPELINE_FILE (YAML). Re-running the same command resumes where it stopped."""
    from ..engine.local import LocalExecutor

    overrides: dict[str, Any] = {}
    for key, value in (("input.start", start), ("input.limit", limit), ("run.concurrency", concurrency),
                       ("output.order", order), ("run.executor", executor)):
        if value is not None:
            overrides[key] = value
    if retry_failed:
        overrides["run.retry_failed"] = True
    pipeline = Pipeline.from_yaml(pipeline_file, overrides=overrides)
    if output_dir is not None:
        # A folder given on the command line is relative to where the user typed it, not to the file.
        import os
        pipeline.output.dir = os.path.abspath(output_dir)
    if models_file is not None:
        import os
        pipeline.models = os.path.abspath(models_file)
    progress = False if no_progress else None
    if pipeline.run.executor == "ray":
        from ..engine.ray_executor import RayExecutor
        summary = RayExecutor(pipeline, overwrite=overwrite, progress=progress, address=address).run_sync()
    else:
        summary = LocalExecutor(pipeline, overwrite=overwrite, progress=progress).run_sync()
    print_summary(summary)
