"""``joyforge prompts``: the built-in prompt library."""

from __future__ import annotations

import click

from ..prompts.renderer import PromptLibrary, available_prompts


@click.group("prompts")
def prompts_group() -> None:
    """List and show built-in prompts (copy one, edit it, and point a step's prompt: at your file)."""


@prompts_group.command("list")
def list_prompts() -> None:
    library = PromptLibrary()
    for name in available_prompts():
        template = library.get(name)
        fields = ", ".join(sorted(template.required_fields)) or "-"
        click.echo(f"{name:24} fields: {fields:20} {template.description.strip().splitlines()[0][:70]}")


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
