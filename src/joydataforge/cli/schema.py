"""``joyforge schema``: the JSON Schema of a pipeline file, for editors that complete and check YAML."""

from __future__ import annotations

import json

import click

from ..config.json_schema import pipeline_schema


@click.command("schema")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of printing."
)
def schema_command(output: str | None) -> None:
    """Print the JSON Schema of pipeline files (every step kind and its settings).

    \b
    VS Code (YAML extension): joyforge schema -o pipeline.schema.json, then begin a pipeline file with
      # yaml-language-server: $schema=pipeline.schema.json
    """
    text = json.dumps(pipeline_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
        click.echo(f"wrote {output}", err=True)
