"""``joyforge magpie``: distil instructions (and answers) from a chat model with nothing but its template.

Reads the options and prints; the two pipelines it runs (instructions, then dedup and answers) are built and
run by :mod:`joydataforge.methods.magpie.command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..config.defaults import BATCHING_ENGINE_MAX_CONCURRENCY, COMMAND_RECORDS_IN_FLIGHT
from ..methods.magpie.command import (
    EXPORT_FORMATS,
    QUALITY,
    build_pipelines,
    drop_hint,
    duplicates_removed,
    export_conversations,
    instruction_outcomes,
    instruction_params,
    model_registry,
    records_in_flight,
    run_stage,
    stage_pipeline,
)
from ..methods.magpie.control_tasks import CONTROL_TASKS
from ..methods.magpie.slots import write_slots
from ..methods.magpie.templates import TABLE


def print_drops(stats: dict[str, Any], console: Console) -> None:
    """Drop rates of the instruction stage, by reason, out of the model calls made."""
    outcomes = instruction_outcomes(stats)
    if not outcomes:
        return
    calls = int(stats["calls"])
    table = Table(title="instructions: kept and dropped (this run's calls)", title_justify="left")
    for column in ("outcome", "count", "share of calls"):
        table.add_column(column)
    for outcome, count in outcomes:
        table.add_row(outcome, str(count), f"{count / calls:.1%}")
    console.print(table)
    hint = drop_hint(stats)
    if hint:
        console.print(f"[yellow]note:[/] {hint}")


@click.command("magpie")
@click.option("--model", default="smollm2", show_default=True, help="Model that writes the instructions.")
@click.option(
    "-n",
    "--num",
    "n",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Number of slots (instruction draws); cleaning and dedup may keep fewer.",
)
@click.option("-o", "--output", "output_dir", required=True, help="Output folder.")
@click.option(
    "--template",
    default="auto",
    show_default=True,
    help=f"auto (from the model's own chat template), a family ({', '.join(TABLE)}), or a "
    "tokenizer_config.json / .jinja path.",
)
@click.option("--system", help="System prompt placed before the user turn.")
@click.option(
    "--control-task",
    type=click.Choice(sorted(CONTROL_TASKS)),
    help="Steer towards a task with a built-in system prompt.",
)
@click.option(
    "--language",
    help="Keep only instructions in this language (zh, en, ja, ko...); zh also steers with a Chinese system prompt.",
)
@click.option("--turns", type=click.IntRange(min=1), default=1, show_default=True, help="Conversation turns.")
@click.option("--response-model", help="Model that answers (default: --model).")
@click.option("--no-responses", is_flag=True, help="Instructions only.")
@click.option("--tag", is_flag=True, help="Tag task category, input quality and difficulty (Magpie's judge prompts).")
@click.option("--tag-model", help="Judge model for --tag (default: the response model).")
@click.option(
    "--min-quality", type=click.Choice(QUALITY), help="Keep instructions rated at least this (implies --tag)."
)
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Instructions per slot.")
@click.option(
    "--samples-per-call",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Instructions drawn per request (the server's n: the pre-query is processed once per group); "
    "groups a slot's --samples.",
)
@click.option(
    "--attempts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Draws per instruction until one passes the filters.",
)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Instruction sampling temperature.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Instruction nucleus sampling.")
@click.option(
    "--max-tokens",
    type=int,
    default=128,
    show_default=True,
    help="Instruction length limit; longer ones are dropped as truncated.",
)
@click.option(
    "--repetition-penalty",
    type=float,
    help="Repetition penalty (llama.cpp repeat_penalty; vLLM/SGLang repetition_penalty).",
)
@click.option("--response-max-tokens", type=int, help="Response length limit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed: same seed, same instructions.")
@click.option(
    "--dedup-threshold",
    type=float,
    default=0.8,
    show_default=True,
    help="Jaccard similarity from which two instructions are near-duplicates.",
)
@click.option("--no-dedup", is_flag=True, help="Keep duplicate instructions.")
@click.option(
    "--export",
    "exports",
    multiple=True,
    type=click.Choice(EXPORT_FORMATS),
    help="Also write OUT/export.<format>.jsonl (repeatable).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help=f"Records in flight at once (default {COMMAND_RECORDS_IN_FLIGHT}; for a vllm model its "
    f"max_concurrency, {BATCHING_ENGINE_MAX_CONCURRENCY} unless set: its engine batches everything in "
    "flight).",
)
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
@click.option("--no-cache", is_flag=True, help="No call cache (default: OUT/.joyforge-cache/calls.sqlite).")
@click.option("--overwrite", is_flag=True, help="Start afresh: delete this folder's earlier stage outputs first.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs and CI).")
def magpie_command(
    model: str,
    n: int,
    output_dir: str,
    template: str,
    system: str | None,
    control_task: str | None,
    language: str | None,
    turns: int,
    response_model: str | None,
    no_responses: bool,
    tag: bool,
    tag_model: str | None,
    min_quality: str | None,
    samples: int,
    samples_per_call: int,
    attempts: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    repetition_penalty: float | None,
    response_max_tokens: int | None,
    seed: int,
    dedup_threshold: float,
    no_dedup: bool,
    exports: tuple[str, ...],
    concurrency: int | None,
    models_file: str | None,
    no_cache: bool,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Magpie: instructions written by a chat model given only its pre-query template, then answers.

    \b
    joyforge magpie -n 100 -o out/magpie                       # embedded SmolLM2, template from the GGUF
    joyforge magpie --model my-vllm --template qwen2.5 --language zh -n 10000 -o out/zh --tag
    joyforge magpie --control-task math --turns 2 --response-model gpt -n 500 -o out/math --export sharegpt
    """
    from .run import print_summary

    if no_responses and (tag or min_quality or turns > 1 or exports):
        raise click.UsageError("--tag, --min-quality, --turns > 1 and --export need responses: drop --no-responses")
    registry = model_registry(models_file)
    config = registry.get(model)
    out = Path(output_dir).resolve()
    instructions, conversations = build_pipelines(
        out,
        model=model,
        n=n,
        template=template,
        system=system,
        control_task=control_task,
        language=language,
        turns=turns,
        response_model=response_model,
        tag=tag,
        tag_model=tag_model,
        min_quality=min_quality,
        samples=samples,
        attempts=attempts,
        samples_per_call=samples_per_call,
        instruction_params=instruction_params(
            config, temperature=temperature, top_p=top_p, max_tokens=max_tokens, repetition_penalty=repetition_penalty
        ),
        response_params={"max_tokens": response_max_tokens} if response_max_tokens else {},
        dedup_threshold=None if no_dedup else dedup_threshold,
        responses=not no_responses,
        seed=seed,
        concurrency=records_in_flight(config, concurrency),
        models_file=models_file,
        cache=None if no_cache else "default",
        progress=not no_progress,
    )
    console = Console(stderr=True)
    write_slots(out / "slots.jsonl", n)
    for data in (instructions, conversations):
        if data is None:
            continue
        pipeline = stage_pipeline(out, data)
        console.rule(data["name"])
        summary = run_stage(pipeline, registry, overwrite=overwrite)
        print_summary(summary, console)
        if data is instructions:
            print_drops(summary.steps.get("magpie", {}), console)
        else:
            counts = duplicates_removed(summary)
            if counts:
                removed, seen = counts
                console.print(
                    f"duplicates removed: {removed} of {seen} instructions ({removed / seen:.1%}, exact and "
                    "near, this run)"
                )
    if conversations is not None:
        for fmt, written, path in export_conversations(out, exports):
            console.print(f"export {fmt}: {written} records -> {path}")
