"""``joyforge steps list`` and ``joyforge steps show KIND``: what each step kind does and takes.

Read from the configs (:mod:`joydataforge.config.describe`), the same source as the reference pages in
``docs/reference/``, so the terminal and the docs say the same thing.
"""

from __future__ import annotations

import difflib
import sys
import textwrap

import click

from ..config.base import StepConfig
from ..config.describe import doc_of, example_yaml, settings_of
from ..config.kinds import BUILTIN_CONFIGS
from .terminal import echo_json

WIDTH = 100


def _config(kind: str) -> type[StepConfig]:
    """The kind's config, or one line naming the kinds there are and exit status 2 (a usage mistake)."""
    try:
        return BUILTIN_CONFIGS[kind]
    except KeyError:
        close = difflib.get_close_matches(kind, list(BUILTIN_CONFIGS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        click.echo(f"error: unknown step kind '{kind}' ({hint}known: {', '.join(sorted(BUILTIN_CONFIGS))})", err=True)
        sys.exit(2)


@click.group("steps")
def steps_group() -> None:
    """The step kinds a pipeline can use, and their settings."""


@steps_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (kind, summary) for programs.")
def list_command(as_json: bool) -> None:
    """Every step kind, one line each."""
    kinds = sorted(BUILTIN_CONFIGS)
    if as_json:
        echo_json([{"kind": kind, "summary": BUILTIN_CONFIGS[kind].summary} for kind in kinds])
        return
    width = max(len(kind) for kind in kinds)
    for kind in kinds:
        click.echo(f"{kind:<{width}}  {BUILTIN_CONFIGS[kind].summary}")


@steps_group.command("show")
@click.argument("kind")
def show_command(kind: str) -> None:
    """Each setting of KIND (type, default, meaning) and a working example."""
    config = _config(kind)
    click.echo(f"{kind}: {config.summary}")
    doc = doc_of(config)
    if doc:
        click.echo("\n" + doc.replace("``", "`"))
    click.echo("\nsettings:")
    for setting in settings_of(config):
        default = "required" if setting.required else f"default {setting.default}"
        click.echo(f"  {setting.name}: {setting.type}, {default}")
        if setting.description:
            click.echo(
                textwrap.fill(
                    setting.description,
                    WIDTH,
                    initial_indent=" " * 6,
                    subsequent_indent=" " * 6,
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
    click.echo("\nexample (in steps:):")
    click.echo(textwrap.indent(example_yaml(config).rstrip("\n"), "  "))
