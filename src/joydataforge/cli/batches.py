"""``joyforge batches status|cancel``: the provider batches of a run's output folder (docs/cost.md, Batch)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import click

from ..config.pipeline import Pipeline
from ..engine.batches import FINAL, BatchRun
from ..engine.local import LocalExecutor
from ..models.cache import CallCache
from ..models.gateway import Gateway
from .terminal import echo_json, make_console, name_table, pairs_text, plain, terminal_width


@click.group("batches")
def batches_group() -> None:
    """The provider batches of a batched run (`joyforge run --batch`)."""


def _folder_options(command: Any) -> Any:
    command = click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")(command)
    command = click.option("-o", "--output", "output_dir", help="Output folder (overrides output.dir in the file).")(
        command
    )
    return click.argument("pipeline_file", type=click.Path(dir_okay=False))(command)


def _executor(pipeline_file: str, output_dir: str | None, models_file: str | None) -> LocalExecutor:
    """The run's executor, for its registry, folder and lock: the same ones ``joyforge run`` uses."""
    pipeline = Pipeline.from_yaml(pipeline_file)
    if output_dir is not None:
        pipeline.output.dir = os.path.abspath(output_dir)
    if models_file is not None:
        pipeline.models = os.path.abspath(models_file)
    return LocalExecutor(pipeline, progress=False)


async def _with_batches(executor: LocalExecutor, action: str) -> list[dict[str, Any]]:
    """Hold the folder's lock, open the folder's batches, then ``poll`` (collecting what is done into the call
    cache) or ``cancel``; the folder's batches afterwards."""
    pipeline = executor.pipeline
    with executor.folder_locked() as folder:
        if not (Path(folder) / "batches.json").exists():
            raise click.ClickException(f"{folder} has no provider batches (batches.json)")
        cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
        cache = CallCache(cache_path) if cache_path is not None else None
        gateway = Gateway(executor.registry, cache)
        batches = BatchRun.open(Path(folder), gateway)
        assert batches is not None
        try:
            if action == "cancel":
                await batches.cancel()
            else:
                await batches.poll(collect=True)
            return batches.book.batches
        finally:
            await batches.close()
            await gateway.close()
            if cache is not None:
                cache.close()


def _show(entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        echo_json(entries)
        return
    console = make_console(width=terminal_width())
    table = name_table("provider batches", "batch", "model · requests · state · provider status")
    for entry in entries:
        counts = entry.get("counts") or {}
        details: list[tuple[str, Any]] = [
            ("", entry.get("batch_id") or "(not sent yet)"),
            ("model", entry["model"]),
            ("requests", entry["requests"]),
            ("", entry["state"]),
        ]
        if entry.get("status"):
            details.append(("status", entry["status"]))
        if counts:
            details.append(("done", f"{counts.get('completed', 0)}/{counts.get('total', entry['requests'])}"))
        if entry["state"] == "collected":
            details.append(("answered", entry.get("answered", 0)))
            details.append(("failed", entry.get("failed", 0)))
        table.add_row(plain(entry["name"]), pairs_text(details))
    console.print(table)
    running = [e for e in entries if e["state"] != "collected" and e.get("status") not in FINAL]
    if running:
        click.echo(f"{len(running)} still running: re-run this command (or the run) later", err=True)
    elif entries:
        click.echo("every batch is collected: re-run the same `joyforge run` command to go on", err=True)


@batches_group.command("status")
@_folder_options
@click.option("--json", "as_json", is_flag=True, help="Print the batches as JSON.")
def status_command(pipeline_file: str, output_dir: str | None, models_file: str | None, as_json: bool) -> None:
    """Ask the provider about the batches of PIPELINE_FILE's output folder; collect the finished ones into the
    call cache (the next `joyforge run` then goes on from them)."""
    executor = _executor(pipeline_file, output_dir, models_file)
    _show(asyncio.run(_with_batches(executor, "poll")), as_json)


@batches_group.command("cancel")
@_folder_options
def cancel_command(pipeline_file: str, output_dir: str | None, models_file: str | None) -> None:
    """Cancel the running batches of PIPELINE_FILE's output folder. What they answered before is collected by
    the next `joyforge run` or `joyforge batches status`; the rest follows each model's batch_failed."""
    executor = _executor(pipeline_file, output_dir, models_file)
    _show(asyncio.run(_with_batches(executor, "cancel")), False)
