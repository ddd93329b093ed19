"""``joyforge export SRC DST``: write records in a training format, optionally with the human review applied."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError


def _formats() -> list[str]:
    from ..io.exports import FORMATS, RECORDS

    return [RECORDS, *FORMATS]


@click.command("export")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_formats()),
    default="records",
    show_default=True,
    help="records: each record as it is; sharegpt, openai, alpaca, trl, trl-sft...: a training format.",
)
@click.option(
    "--reviewed",
    is_flag=True,
    help="Apply the human review of `joyforge view`: rejected records dropped, edits applied.",
)
@click.option(
    "--review-file",
    type=click.Path(dir_okay=False),
    help="The review to apply (default: review.jsonl of the run folder, or <name>.review.jsonl beside SRC).",
)
@click.option("--keep-notes", is_flag=True, help="With --reviewed: add review: {status, note} to reviewed records.")
@click.option("--accepted-only", is_flag=True, help="With --reviewed: keep only the records a reviewer accepted.")
@click.option("--keep", "keep_fields", multiple=True, help="Field copied as it is into a training format (repeatable).")
@click.option("--input-field", default="input", show_default=True, help="Field of the prompt.")
@click.option("--output-field", default="target", show_default=True, help="Field of the answer.")
@click.option("--skip-bad", is_flag=True, help="Leave out records that cannot be exported instead of stopping.")
@click.option(
    "--reasoning/--no-reasoning",
    default=False,
    show_default=True,
    help="Write each answer's reasoning trace (<output-field>_reasoning) with it: <think> tags in sharegpt, "
    "openai, alpaca; reasoning_content in trl-sft, trl (docs/reasoning.md).",
)
def export_command(
    src: str,
    dst: str,
    fmt: str,
    reviewed: bool,
    review_file: str | None,
    keep_notes: bool,
    accepted_only: bool,
    keep_fields: tuple[str, ...],
    input_field: str,
    output_field: str,
    skip_bad: bool,
    reasoning: bool,
) -> None:
    """Export SRC (a run folder or a data file) to DST (.jsonl, .json or .parquet).

    \b
    joyforge export out/demo reviewed.jsonl --reviewed
    joyforge export out/demo train.jsonl --format sharegpt --reviewed --accepted-only
    joyforge export out/dpo dpo_train.jsonl --format trl --reviewed --keep-notes

    The review is the sidecar `joyforge view` writes; the data itself is never changed.
    """
    from ..io.exports import RECORDS, export_file
    from ..view.review import ReviewApplier, ReviewStore, review_path_for

    source = Path(src)
    if source.is_dir():
        data = source / "data.jsonl"
        if not data.exists():
            raise InputError(f"{source}: no data.jsonl in this folder; give a run folder or a data file")
    else:
        data = source
    if (keep_notes or accepted_only or review_file) and not reviewed:
        raise click.UsageError("--keep-notes, --accepted-only and --review-file go with --reviewed")
    applier = None
    if reviewed:
        sidecar = Path(review_file) if review_file else review_path_for(source)
        if not sidecar.exists():
            raise InputError(f"no review at {sidecar}: review the records with `joyforge view {src}` first")
        store = ReviewStore(sidecar)
        if store.bad_lines:
            click.secho(
                f"warning: {store.bad_lines} line(s) of {sidecar} are not reviews and were ignored",
                fg="yellow",
                err=True,
            )
        applier = ReviewApplier(store, keep_notes=keep_notes, accepted_only=accepted_only)
        if keep_notes and fmt != RECORDS and "review" not in keep_fields:
            keep_fields = (*keep_fields, "review")
    report = export_file(
        data,
        dst,
        fmt,
        input_field=input_field,
        output_field=output_field,
        keep_fields=keep_fields,
        reasoning=reasoning,
        on_error="skip" if skip_bad else "raise",
        transform=applier,
    )
    parts = [f"exported {report.written} of {report.read} records to {dst}"]
    if applier is not None:
        stats = applier.stats
        parts.append(
            f"review: {stats['dropped_rejected']} rejected dropped, {stats['edited']} edited, "
            f"{stats['accepted']} accepted"
            + (f", {stats['dropped_unreviewed']} not accepted dropped" if accepted_only else "")
        )
    if report.skipped:
        parts.append(f"{report.skipped} without an answer skipped")
    if report.failed:
        parts.append(f"{report.failed} bad records left out (first: {report.errors[0]})")
    click.echo("; ".join(parts))
    if applier is not None and applier.unmatched():
        click.secho(
            f"warning: {applier.unmatched()} review(s) matched no record of {data} (the data changed since?)",
            fg="yellow",
            err=True,
        )
