"""The ``joyforge`` command. Each group of subcommands lives in its own module."""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import JoyForgeError
from .dialogue import dialogue_split_command
from .evaluate import dedup_command, eval_command, select_command
from .evol import evol_group
from .magpie import magpie_command
from .models import models_group
from .prompts import prompts_group
from .run import run_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="joyforge")
def cli() -> None:
    """JoyDataForge: forge SFT and preference training data with one or many LLMs.

    \b
    Start with:   joyforge run examples/demo.yaml -o out/demo
    Evaluate:     joyforge eval out/demo/data.jsonl --report report.html
    Clean:        joyforge dedup DATA -o OUT  |  joyforge select DATA -n 100 -o OUT
    Models:       joyforge models list | joyforge models check smollm2
    Prompts:      joyforge prompts list | joyforge prompts show zh/intent_cdss

    The embedded default model (SmolLM2-135M-Instruct, in-process) needs no server and no key.
    """


for command in (run_command, eval_command, dedup_command, select_command, dialogue_split_command, evol_group,
                magpie_command, models_group, prompts_group):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except JoyForgeError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: re-run the same command to resume", err=True)
        sys.exit(130)
