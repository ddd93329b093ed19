"""``joyforge push PATH REPO_ID``: share a run (or a JSONL/Parquet file) as a Hugging Face Hub dataset.

The work is :mod:`joydataforge.io.hub` (shards, card, upload); the quality numbers are measured here with
the same library, options and defaults as ``joyforge eval`` (:mod:`joydataforge.cli.evaluate`), so the card
shows what ``joyforge eval`` on the same data shows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import InputError
from .evaluate import (
    EMBEDDER_HELP,
    BadInput,
    measure_records,
    shingle_mode_option,
    split_fields,
)
from .terminal import make_console


@click.command("push")
@click.argument("path", type=click.Path())
@click.argument("repo_id")
@click.option(
    "--private", is_flag=True, help="Create the dataset repo private (an existing repo keeps its visibility)."
)
@click.option("--split", default="train", show_default=True, help="The split these records are (train, test, ...).")
@click.option(
    "--config",
    "config_name",
    default="default",
    show_default=True,
    help="The dataset config (subset) they belong to; other configs and splits on the Hub are kept.",
)
@click.option(
    "--license", "license_id", help="The card's license id (apache-2.0, cc-by-4.0, ...; default: kept, or unknown)."
)
@click.option(
    "--language",
    "languages",
    multiple=True,
    help="Language code(s) for the card (default: zh/en detected from the text).",
)
@click.option(
    "--task-category",
    "categories",
    multiple=True,
    help="The card's task_categories (default: text-generation, plus text-classification when records have labels).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Extra tag(s) for the card (synthetic, joydataforge and the methods are added).",
)
@click.option("--title", help="The card's title (pretty_name; default: kept, or the repo name).")
@click.option(
    "--drop",
    "drop_fields",
    multiple=True,
    help="Field(s) left out of the pushed data, repeated or comma-separated (e.g. _meta, embedding).",
)
@click.option(
    "--reviewed",
    is_flag=True,
    help="Apply the human review of `joyforge view` (review.jsonl): rejected records left out, edits applied.",
)
@click.option("--accepted-only", is_flag=True, help="With --reviewed: push only the records a reviewer accepted.")
@click.option(
    "--max-shard-size",
    default="500MB",
    show_default=True,
    help="Most Arrow data per Parquet shard (500MB, 1GB, 64MiB).",
)
@click.option("--message", help="The commit message (default: says what was pushed).")
@click.option(
    "--dry-run",
    "dry_run",
    type=click.Path(file_okay=False),
    help="Write the folder that would be pushed (shards and README.md) here, and push nothing.",
)
@click.option("--no-eval", is_flag=True, help="Leave the quality numbers out of the card (no embedding, no measuring).")
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Use this `joyforge eval -o` metrics JSON instead of measuring again (it must cover the same records).",
)
@click.option("--text-field", "text_fields", multiple=True, help="As for joyforge eval (default: input).")
@click.option("--embedder", default="auto", show_default=True, help=EMBEDDER_HELP)
@click.option("--entity-fields", "entity_fields", multiple=True, help="As for joyforge eval.")
@click.option(
    "--entities",
    "entities_spec",
    default="fields",
    show_default=True,
    help="As for joyforge eval: fields, offline, jieba, model:NAME, none.",
)
@click.option("--label-field", "label_fields", multiple=True, help="As for joyforge eval.")
@click.option(
    "--threshold",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Near-duplicate Jaccard threshold.",
)
@shingle_mode_option
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models (for model:NAME).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--skip-bad", is_flag=True, help="Leave out records that cannot be read instead of stopping.")
def push_command(
    path: str,
    repo_id: str,
    private: bool,
    split: str,
    config_name: str,
    license_id: str | None,
    languages: tuple[str, ...],
    categories: tuple[str, ...],
    tags: tuple[str, ...],
    title: str | None,
    drop_fields: tuple[str, ...],
    reviewed: bool,
    accepted_only: bool,
    max_shard_size: str,
    message: str | None,
    dry_run: str | None,
    no_eval: bool,
    metrics_path: str | None,
    text_fields: tuple[str, ...],
    embedder: str,
    entity_fields: tuple[str, ...],
    entities_spec: str,
    label_fields: tuple[str, ...],
    threshold: float,
    shingle_mode: str,
    models_file: str | None,
    no_cache: bool,
    skip_bad: bool,
) -> None:
    """Push PATH (a run folder, or a .jsonl/.parquet file) to the Hub dataset REPO_ID (OWNER/NAME).

    \b
    Parquet shards (data/<split>-00000-of-0000N.parquet) and a dataset card: how the data was made (pipeline,
    steps, models, counts, tokens, cost) and the joyforge eval numbers (near-duplicates, Vendi score, entity
    diversity, label distribution). What is pushed loads with datasets.load_dataset(REPO_ID).

    \b
    joyforge push out/demo me/demo-zh --license apache-2.0
    joyforge push out/demo-test me/demo-zh --split test
    joyforge push data.parquet me/data --dry-run /tmp/preview      # see the files, push nothing

    The token comes from the environment only: HF_TOKEN, or `hf auth login`. HF_ENDPOINT picks another Hub.
    """
    from ..io import hub, hub_card

    target = hub.PushTarget(
        repo_id,
        split=split,
        config=config_name,
        private=private,
        license=license_id,
        languages=split_fields(languages, ()) if languages else None,
        task_categories=split_fields(categories, ()) if categories else None,
        tags=split_fields(tags, ()),
        pretty_name=title,
        max_shard_bytes=hub.parse_size(max_shard_size),
    )
    source = hub.locate_data(path)
    if accepted_only and not reviewed:
        raise click.UsageError("--accepted-only goes with --reviewed")
    applier = _review_applier(source, accepted_only) if reviewed else None
    api, existing = None, None
    if dry_run is None:  # the token and the Hub are checked before any work
        api = hub.hub_api()
        hub.require_token()
        hub.check_token(api)
        existing = hub.existing_card(api, target.repo_id)
    drop = split_fields(drop_fields, ())
    console = make_console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="joyforge-push-") as scratch:
        work = Path(scratch)
        folder = Path(dry_run) if dry_run else work / "repo"
        if dry_run:
            hub.clear_folder(folder, target)
        records, facts = _read(
            source,
            work / "records.jsonl",
            drop,
            keep=not no_eval and not metrics_path,
            skip_bad=skip_bad,
            review=applier,
        )
        if facts.records == 0:
            raise InputError(f"{source.data}: no records to push")
        metrics, note = _metrics(
            facts.records,
            no_eval=no_eval,
            metrics_path=metrics_path,
            measure=lambda: measure_records(
                records,
                data=str(source.data),
                text_fields=text_fields,
                embedder=embedder,
                entity_fields=entity_fields,
                entities_spec=entities_spec,
                label_fields=label_fields,
                threshold=threshold,
                shingle_mode=shingle_mode,
                models_file=models_file,
                no_cache=no_cache,
            ),
        )
        with console.status(f"writing Parquet shards of {facts.records:,} records"):
            direct = source.is_parquet and applier is None  # a Parquet file keeps its own types unless edited
            table = source.data if direct else _to_parquet(work / "records.jsonl", work / "all.parquet")
            shards = hub.write_shards(table, folder, target, drop=drop if direct else ())
            if not direct:
                table.unlink()  # the scratch copies take room: a large push holds the data about twice
        card = hub_card.CardInput(
            target,
            source,
            facts,
            shards,
            hub_card.parquet_columns(shards, folder),
            metrics=metrics,
            eval_note=note,
            languages=hub_card.detect_languages(records) if records else _languages_of(source, drop),
            review_note=_review_note(applier, accepted_only),
        )
        (folder / "README.md").write_text(hub_card.render_card(card, existing), encoding="utf-8")
        rows = sum(s.rows for s in shards)
        if dry_run:
            click.echo(
                f"dry run: {rows:,} records in {len(shards)} shard(s) and README.md written to {folder}", err=True
            )
            return
        commit = message or f"joyforge push: {target.key} split, {rows:,} records in {len(shards)} shard(s)"
        with console.status(f"pushing {len(shards)} shard(s) to {target.repo_id}"):
            url = hub.upload(api, folder, target, message=commit)
    click.echo(f"pushed {rows:,} records ({target.key}) in {len(shards)} shard(s): {url}", err=True)
    loader = f'"{target.repo_id}"' + ("" if target.config == "default" else f', "{target.config}"')
    click.echo(f'load it with: datasets.load_dataset({loader}, split="{target.split}")', err=True)


def _read(
    source: Any, jsonl: Path, drop: tuple[str, ...], *, keep: bool, skip_bad: bool, review: Any = None
) -> tuple[list[dict[str, Any]], Any]:
    """One pass over the records: the human ``review`` applied, their provenance, a JSONL copy (less ``drop``)
    for the shards, and the records themselves when they are to be measured (``keep``)."""
    from ..io.hub import RunFacts
    from ..io.readers import iter_records
    from ..io.writers import JsonlAppender

    facts = RunFacts()
    records: list[dict[str, Any]] = []
    bad = 0
    try:
        with JsonlAppender(jsonl, fsync_every=None) as out:
            batch: list[dict[str, Any]] = []
            for item in iter_records(source.data):
                if item.error is not None or item.record is None:
                    if not skip_bad:
                        raise BadInput(f"{item.error}\n(fix that record, or pass --skip-bad to leave bad records out)")
                    bad += 1
                    continue
                reviewed = review(item.record) if review is not None else item.record
                if reviewed is None:
                    continue  # rejected by a reviewer
                record = {k: v for k, v in reviewed.items() if k not in drop} if drop else reviewed
                facts.observe(reviewed)
                if keep:
                    records.append(record)
                if not source.is_parquet or review is not None:
                    batch.append(record)
                    if len(batch) >= 1_000:
                        out.write(batch)
                        batch = []
            out.write(batch)
    except InputError as exc:
        raise BadInput(str(exc)) from None
    if bad:
        click.echo(f"skipped {bad:,} bad record(s) of {source.data}", err=True)
        if source.is_parquet:
            raise BadInput(f"{source.data}: --skip-bad cannot leave rows out of a Parquet file; fix or filter it first")
    return records, facts


def _metrics(
    count: int,
    *,
    no_eval: bool,
    metrics_path: str | None,
    measure: Callable[[], Any],
) -> tuple[dict[str, Any] | None, str | None]:
    """The ``joyforge eval`` metrics of the records, measured as that command does (or read from its JSON)."""
    import json

    if no_eval:
        return None, "Not measured (pushed with `--no-eval`); `joyforge eval` on the data gives the numbers."
    if metrics_path:
        try:
            metrics = json.loads(Path(metrics_path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(f"--metrics {metrics_path}: not a readable metrics JSON: {exc}") from None
        if not isinstance(metrics, dict) or metrics.get("records") != count:
            found = metrics.get("records") if isinstance(metrics, dict) else None
            raise BadInput(f"--metrics {metrics_path}: measures {found} records, but {count} are pushed")
        return metrics, f"Measured by `joyforge eval` ({Path(metrics_path).name})."
    evaluation = measure()  # as `joyforge eval` measures (cli/evaluate.measure_records)
    return evaluation.metrics, None


def _review_applier(source: Any, accepted_only: bool) -> Any:
    from ..view.review import ReviewApplier, ReviewStore, review_path_for

    sidecar = review_path_for(source.run_folder or source.data)
    if not sidecar.exists():
        raise InputError(f"no review at {sidecar}: review the records with `joyforge view {source.path}` first")
    return ReviewApplier(ReviewStore(sidecar), accepted_only=accepted_only)


def _review_note(applier: Any, accepted_only: bool) -> str | None:
    if applier is None:
        return None
    stats = applier.stats
    note = (
        f"applied (`joyforge view`): {stats['dropped_rejected']:,} rejected and left out, {stats['edited']:,} edited, "
        f"{stats['accepted']:,} accepted"
    )
    if accepted_only:
        note += f"; {stats['dropped_unreviewed']:,} not accepted and left out (`--accepted-only`)"
    return note


def _to_parquet(jsonl: Path, parquet: Path) -> Path:
    from ..io.writers import jsonl_to_parquet

    jsonl_to_parquet(jsonl, parquet)
    jsonl.unlink()
    return parquet


def _languages_of(source: Any, drop: tuple[str, ...]) -> list[str]:
    """Languages from the first records, when the records were not kept in memory (``--no-eval``)."""
    from itertools import islice

    from ..io.hub_card import detect_languages
    from ..io.readers import iter_records

    sample = (item.record for item in islice(iter_records(source.data), 2_000) if item.record is not None)
    return detect_languages({k: v for k, v in r.items() if k not in drop} for r in sample)
