"""``joyforge dialogue-split``: sample labelled dialogue turns into train/test sets per label."""

from __future__ import annotations

import click

from ..methods.dialogue.split import read_labelled, split_records, write_split


def _test_size(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if number < 0 or (number >= 1 and not number.is_integer()):
        raise click.BadParameter("a count (10) or a fraction in (0, 1) (0.2)")
    return number if number < 1 else int(number)


@click.command("dialogue-split")
@click.argument("data", type=click.Path(exists=True))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="folder for the split files")
@click.option(
    "--test-size",
    default="0.2",
    show_default=True,
    help="per label: a count (10) or a fraction (0.2) of the sampled turns",
)
@click.option("--per-label-cap", type=int, default=None, help="at most this many turns per label")
@click.option("--per-record-cap", type=int, default=None, help="at most this many turns per dialogue and label")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--label-field", default="label", show_default=True)
@click.option("--group-field", default="dialog_id", show_default=True, help="what 'record' means for --per-record-cap")
@click.option("--labels", default=None, help="comma-separated labels to keep (default: all)")
@click.option(
    "--by-dialogue/--by-turn",
    default=False,
    show_default=True,
    help="keep each dialogue's turns on one side (no train/test leakage through shared context); "
    "--by-turn samples turns one by one as the seed project did",
)
@click.option("--xlsx/--no-xlsx", default=True, show_default=True, help="also write test.xlsx, one sheet per label")
def dialogue_split_command(
    data: str,
    out_dir: str,
    test_size: str,
    per_label_cap: int | None,
    per_record_cap: int | None,
    seed: int,
    label_field: str,
    group_field: str,
    labels: str | None,
    by_dialogue: bool,
    xlsx: bool,
) -> None:
    """Split DATA (a dialogue_intent output: file or folder) into train and test sets per label.

    \b
    Writes train.jsonl, test.jsonl, train/<label>.jsonl, test/<label>.jsonl, test.xlsx and split.json.
    Example:  joyforge dialogue-split out/dialogue/data.jsonl -o out/dialogue/split \\
                --test-size 2 --per-label-cap 50 --per-record-cap 3 --seed 0
    """
    size = _test_size(test_size)
    wanted = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    result = split_records(
        read_labelled(data),
        test_size=size,
        per_label_cap=per_label_cap,
        per_record_cap=per_record_cap,
        seed=seed,
        label_field=label_field,
        group_field=group_field,
        labels=wanted,
        by_dialogue=by_dialogue,
    )
    settings = {
        "data": data,
        "test_size": size,
        "per_label_cap": per_label_cap,
        "per_record_cap": per_record_cap,
        "seed": seed,
        "label_field": label_field,
        "group_field": group_field,
        "labels": wanted,
        "by_dialogue": by_dialogue,
    }
    summary = write_split(result, out_dir, xlsx=xlsx, settings=settings)
    click.echo(f"{'label':12} {'available':>9} {'train':>6} {'test':>5}")
    for label, counts in summary["labels"].items():
        click.echo(f"{label:12} {counts['available']:>9} {counts['train']:>6} {counts['test']:>5}")
    dropped = ", ".join(f"{k}: {v}" for k, v in summary["dropped"].items()) or "none"
    click.echo(f"train {summary['train']}, test {summary['test']}; left out: {dropped}; written to {out_dir}")
    if result.shared_dialogues:
        click.echo(
            f"note: {result.shared_dialogues} dialogues have turns in both train and test (their context "
            "is shared); --by-dialogue keeps each dialogue on one side"
        )
