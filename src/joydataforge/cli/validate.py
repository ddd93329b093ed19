"""``joyforge validate PIPELINE``: every problem of a pipeline file, before any model is called."""

from __future__ import annotations

import sys

import click

from ..engine.validate import RECORDS_CHECKED, validate_pipeline


@click.command("validate")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option(
    "--models",
    "models_file",
    help="A models.yaml merged over the built-in models, instead of the "
    "pipeline's models: file (as `joyforge run --models` does).",
)
@click.option(
    "--records",
    type=click.IntRange(min=0),
    default=RECORDS_CHECKED,
    show_default=True,
    help="Input records on which the first step's prompt fields are checked.",
)
def validate_command(pipeline_file: str, models_file: str | None, records: int) -> None:
    """Check PIPELINE_FILE: settings, models, prompts, and the fields the first step needs on the first records.

    No model is called or loaded. Prints every problem, one line each, and exits with status 1 if there is
    any; else prints one line starting with "ok:".
    """
    report = validate_pipeline(pipeline_file, models_file=models_file, records=records)
    for note in report.notes:
        click.echo(f"note: {note}")
    if not report.ok:
        for problem in report.problems:
            click.echo(problem)
        click.echo(f"{len(report.problems)} problem(s) in {pipeline_file}", err=True)
        sys.exit(1)
    click.echo(report.summary())
