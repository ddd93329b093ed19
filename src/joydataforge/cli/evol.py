"""``joyforge evol report DATA``: mean difficulty and Vendi score per round of an ``evol_instruct`` run.

The measuring lives in :mod:`joydataforge.methods.evol_instruct.report`; this module reads, embeds (with the
same ``--embedder`` choices as ``joyforge eval``) and prints.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..methods.evol_instruct.report import RoundStats, add_vendi, all_texts, collect_rounds
from .evaluate import EMBEDDER_HELP, BadInput, read_dataset, resolve_vectors


@click.group("evol")
def evol_group() -> None:
    """Evol-Instruct tools."""


@evol_group.command("report")
@click.argument("data", type=click.Path())
@click.option("--embedder", default="auto", show_default=True, help=EMBEDDER_HELP)
@click.option(
    "--field",
    "field_name",
    default="wizard_llm_querys",
    show_default=True,
    help="Where the nested output keeps its rounds (the step's output_field).",
)
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models (for model:NAME).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def evol_report_command(
    data: str, embedder: str, field_name: str, models_file: str | None, no_cache: bool, as_json: bool
) -> None:
    """Per round (0 = the input queries): generated, eliminated, judged, valid and carried instructions, the
    mean difficulty score of the valid ones and their Vendi score (effective number of distinct instructions;
    vendi/n = 1 when all are unrelated). DATA is the step's output, nested or flat."""
    records, _ = read_dataset(data, skip_bad=False)
    try:
        stats = collect_rounds(records, field_name)
    except ValueError as exc:
        raise BadInput(f"{data}: {exc}") from None
    texts = all_texts(stats)
    vectors, source = resolve_vectors(
        [{"input": t} for t in texts], texts, embedder, models_file=models_file, cache=not no_cache
    )
    if vectors is not None:
        add_vendi(stats, vectors)
    if as_json:
        click.echo(
            json.dumps({"embedder": source, "rounds": [s.as_dict() for s in stats]}, ensure_ascii=False, indent=2)
        )
        return
    console = Console()
    console.print(_table(stats, source))
    for s in stats:
        if s.eliminated:
            console.print(
                f"round {s.round} eliminated: " + ", ".join(f"{k} {v}" for k, v in s.eliminated.most_common())
            )


def _table(stats: list[RoundStats], source: str | None) -> Table:
    table = Table(
        title=f"Evol-Instruct per round (score: mean difficulty of the valid; Vendi: {source or 'no embedder'})"
    )
    for name in ("round", "gen", "elim", "judged", "valid", "carried", "score", "Vendi", "Vendi/n"):
        table.add_column(name, justify="right")
    for s in stats:
        table.add_row(
            str(s.round),
            str(s.generated),
            str(sum(s.eliminated.values())),
            str(s.judged),
            str(s.valid),
            str(s.carried),
            "-" if s.mean_score is None else f"{s.mean_score:.1f}",
            "-" if s.vendi is None else f"{s.vendi:.2f}",
            "-" if s.vendi_per_item is None else f"{s.vendi_per_item:.3f}",
        )
    return table
