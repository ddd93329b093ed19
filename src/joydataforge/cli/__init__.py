"""The ``joyforge`` command. Each group of subcommands lives in its own module.

Errors reach the user as one line (the path at fault and what to do); the traceback only with
``joyforge --debug``. Exit statuses are :class:`~joydataforge.errors.ExitCode` (``joyforge run --help``).
"""

from __future__ import annotations

import sys
import traceback

import click

from .. import __version__
from ..errors import ExitCode, JoyForgeError, RunStopped
from .batches import batches_group
from .dialogue import dialogue_split_command
from .evaluate import dedup_command, eval_command, select_command
from .evol import evol_group
from .export import export_command
from .magpie import magpie_command
from .models import models_group
from .plan import plan_command
from .prompts import prompts_group
from .push import push_command
from .run import run_command
from .schema import schema_command
from .steps import steps_group
from .validate import validate_command
from .view import view_command

_options = {"debug": False}  # set by the group's --debug, read by main() once the command has raised


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="joyforge")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (for bug reports).")
def cli(debug: bool) -> None:
    """JoyDataForge: forge SFT and preference training data with one or many LLMs.

    \b
    Start with:   joyforge run examples/demo.yaml -o out/demo
    Evaluate:     joyforge eval out/demo/data.jsonl --report report.html
    Share:        joyforge push out/demo OWNER/NAME   (a Hugging Face Hub dataset; token from HF_TOKEN)
    Clean:        joyforge dedup DATA -o OUT  |  joyforge select DATA -n 100 -o OUT
    Models:       joyforge models list | joyforge models check smollm2
    Prompts:      joyforge prompts list | joyforge prompts show zh/intent_cdss
    Check:        joyforge validate PIPELINE | joyforge steps list | joyforge steps show KIND | joyforge schema
    View:         joyforge view out/demo | joyforge export out/demo train.jsonl --reviewed

    The embedded default model (SmolLM2-135M-Instruct, in-process) needs no server and no key.
    """
    _options["debug"] = debug


for command in (
    run_command,
    eval_command,
    dedup_command,
    select_command,
    dialogue_split_command,
    evol_group,
    magpie_command,
    models_group,
    prompts_group,
    steps_group,
    validate_command,
    schema_command,
    plan_command,
    view_command,
    export_command,
    push_command,
    batches_group,
):
    cli.add_command(command)


def main() -> None:
    _options["debug"] = False
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C (and EOF at a prompt) into Abort
        interrupted = isinstance(exc.__context__, KeyboardInterrupt)
        click.echo("interrupted: re-run the same command to resume" if interrupted else "aborted", err=True)
        sys.exit(ExitCode.STOPPED if interrupted else ExitCode.INTERNAL)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: re-run the same command to resume", err=True)
        sys.exit(ExitCode.STOPPED)
    except Exception as exc:  # every error ends here as one line and an exit status
        sys.exit(report_error(exc, debug=_options["debug"]))


def report_error(exc: BaseException, *, debug: bool = False) -> int:
    """Print ``exc`` as one line (with ``debug``, the traceback first) and return the exit status.

    Our own errors and file-system errors are the user's to fix (2); a stopped run is resumable (5);
    anything else is a bug in joyforge (1).
    """
    from ..engine.run_state import os_error_line

    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, RunStopped):
        click.echo(f"stopped: {exc.reason}; re-run the same command to resume", err=True)
        return ExitCode.STOPPED
    if isinstance(exc, JoyForgeError):
        click.secho(f"error: {exc}", fg="red", err=True)
        return ExitCode.CONFIG
    if isinstance(exc, OSError):
        click.secho(f"error: {os_error_line(exc)}", fg="red", err=True)
        return ExitCode.CONFIG
    line = f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (a bug in joyforge)"
    if not debug:
        line += "; run with --debug for the traceback"
    click.secho(line, fg="red", err=True)
    return ExitCode.INTERNAL
