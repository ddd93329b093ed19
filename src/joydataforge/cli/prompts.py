"""``joyforge prompts``: the built-in prompt library."""

from __future__ import annotations

import re
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ..prompts.renderer import PromptLibrary, available_prompts
from .terminal import echo_json, make_console, name_table, plain


@click.group("prompts")
def prompts_group() -> None:
    """List and show built-in prompts (copy one, edit it, and point a step's prompt: at your file)."""


def prompt_rows() -> list[dict[str, Any]]:
    """One plain dict per built-in prompt: name, the record fields it needs, what it is for."""
    library = PromptLibrary()
    rows = []
    for name in available_prompts():
        template = library.get(name)
        lines = template.description.strip().splitlines()
        rows.append(
            {
                "name": name,
                "fields": sorted(template.required_fields),
                "description": lines[0] if lines else "",
                "schema": template.schema is not None,
            }
        )
    return rows


def first_sentence(text: str) -> str:
    """The description's first sentence: a list of 60 prompts is read to pick one, then ``prompts show`` it."""
    match = re.search(r"(?<=[.!?])\s|(?<=[。！？])", text)
    return text[: match.start()].rstrip() if match else text


def prompts_table(rows: list[dict[str, Any]]) -> Table:
    """Name and needed fields on one line, the description under them: nothing cut, whatever the name's length."""
    table = name_table("built-in prompts", "name", "fields needed / what it is for")
    for row in rows:
        cell = Text("fields: " + (", ".join(row["fields"]) or "-"), style="bold")
        cell.append("\n" + first_sentence(row["description"]), style="")
        table.add_row(plain(row["name"]), cell)
    return table


@prompts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (for programs).")
def list_prompts(as_json: bool) -> None:
    """Every built-in prompt: its name (use it as a step's prompt:), the fields it needs, what it is for."""
    rows = prompt_rows()
    if as_json:
        echo_json(rows)
        return
    make_console().print(prompts_table(rows))


@prompts_group.command("show")
@click.argument("name")
def show_prompt(name: str) -> None:
    template = PromptLibrary().get(name)
    click.echo(f"# {template.source}")
    if template.system:
        click.echo(f"--- system ---\n{template.system}")
    click.echo(f"--- user ---\n{template.user}")
    if template.schema:
        import json

        click.echo(f"--- schema ---\n{json.dumps(template.schema, ensure_ascii=False, indent=2)}")
