"""``joyforge magpie``: distil instructions (and answers) from a chat model with nothing but its template.

Two pipelines, both ordinary and both resumable, because dedup (a sequential step) must sit between the
instructions and the responses -- answers are the expensive part, and a duplicate's answer is waste::

    OUT/slots.jsonl --magpie--> OUT/instructions/ --minhash_dedup, magpie_response[, magpie_tag]--> OUT/conversations/

Each stage's pipeline is also written next to its output (``OUT/*.yaml``), so ``joyforge run`` can redo
or extend it by hand. Re-running the same command resumes; a larger ``-n`` adds slots.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from ..methods.magpie.cleaning import DROP_REASONS
from ..methods.magpie.control_tasks import CONTROL_TASKS
from ..methods.magpie.slots import write_slots
from ..methods.magpie.templates import TABLE
from ..models.config import ModelRegistry

QUALITY = ["very poor", "poor", "average", "good", "excellent"]


def _registry(models_file: str | None) -> ModelRegistry:
    registry = ModelRegistry.load()
    return registry.merged(ModelRegistry.load(models_file)) if models_file else registry


def build_pipelines(out: Path, *, model: str, n: int, template: str = "auto", system: str | None = None,
                    control_task: str | None = None, language: str | None = None, turns: int = 1,
                    response_model: str | None = None, tag: bool = False, tag_model: str | None = None,
                    min_quality: str | None = None, samples: int = 1, attempts: int = 1, samples_per_call: int = 1,
                    instruction_params: dict[str, Any] | None = None, response_params: dict[str, Any] | None = None,
                    dedup_threshold: float | None = 0.8, responses: bool = True, seed: int = 0, concurrency: int = 8,
                    models_file: str | None = None, cache: str | None = "default",
                    progress: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The two pipelines (as the dicts a YAML file would hold) that ``joyforge magpie`` runs."""
    out = out.resolve()
    run: dict[str, Any] = {"seed": seed, "concurrency": concurrency, "progress": progress,
                           "cache": str(out / ".joyforge-cache" / "calls.sqlite") if cache == "default" else cache}
    if language in ("en", "zh"):
        run["language"] = language  # the judges' prompts in that language
    common: dict[str, Any] = {"run": run}
    if models_file:
        common["models"] = os.path.abspath(models_file)
    magpie: dict[str, Any] = {"model": model, "template": template, "samples": samples, "attempts": attempts,
                              "params": dict(instruction_params or {})}
    if samples_per_call != 1:
        magpie["samples_per_call"] = samples_per_call
    for key, value in (("system", system), ("control_task", control_task), ("language", language)):
        if value:
            magpie[key] = value
    instructions = {"name": "magpie-instructions", "input": {"path": str(out / "slots.jsonl"), "limit": n},
                    "steps": [{"magpie": magpie}], "output": {"dir": str(out / "instructions")}, **common}
    if not responses:
        return instructions, None
    steps: list[dict[str, Any]] = []
    if dedup_threshold:
        steps.append({"minhash_dedup": {"fields": "input", "threshold": dedup_threshold}})
    steps.append({"magpie_response": {"model": response_model or model, "turns": turns,
                                      **({"instruction_model": model} if turns > 1 else {}),
                                      "params": dict(response_params or {})}})
    if tag or min_quality:
        tagger: dict[str, Any] = {"model": tag_model or response_model or model}
        if min_quality:
            tagger["keep"] = {"input_quality": QUALITY[QUALITY.index(min_quality):]}
        steps.append({"magpie_tag": tagger})
    conversations = {"name": "magpie-conversations", "input": {"path": str(out / "instructions" / "data.jsonl")},
                     "steps": steps, "output": {"dir": str(out / "conversations")}, **common}
    return instructions, conversations


def print_drops(summary: Any, console: Console) -> None:
    """Drop rates of the instruction stage, by reason, out of the model calls made."""
    stats = summary.steps.get("magpie", {})
    calls = int(stats.get("calls", 0))
    if not calls:
        return
    table = Table(title="instructions: kept and dropped (this run's calls)", title_justify="left")
    for column in ("outcome", "count", "share of calls"):
        table.add_column(column)
    table.add_row("kept", str(stats.get("instructions", 0)), f"{stats.get('instructions', 0) / calls:.1%}")
    for reason in DROP_REASONS:
        count = int(stats.get(f"dropped:{reason}", 0))
        if count:
            table.add_row(f"dropped: {reason}", str(count), f"{count / calls:.1%}")
    console.print(table)
    hint = drop_hint(stats)
    if hint:
        console.print(f"[yellow]note:[/] {hint}")


def drop_hint(stats: dict[str, Any]) -> str | None:
    """What to change when most draws are dropped for one reason, so an almost empty run is not a mystery."""
    calls = int(stats.get("calls", 0))
    if not calls or int(stats.get("instructions", 0)) > calls / 2:
        return None
    reason, count = max(((r, int(stats.get(f"dropped:{r}", 0))) for r in DROP_REASONS), key=lambda rc: rc[1])
    if count < calls / 2:
        return None
    hints = {
        "language": "most instructions came in another language than --language asked for: small models (the "
                    "embedded SmolLM2-135M) write almost only English; use a model trained on that language, "
                    "e.g. a Qwen2.5 server or vLLM model via --models",
        "truncated": "most instructions hit --max-tokens before the end of the user turn: raise --max-tokens",
        "not_a_request": "most drafts are not requests: try --temperature 0.7-0.9, a --system prompt or "
                         "--control-task, or a larger model",
        "assistant_voice": "most drafts speak as the assistant: the pre-query template may not match the model; "
                           "check --template (auto reads the model's own chat template)",
    }
    return hints.get(reason, f"most draws were dropped as {reason}; see the table above")


@click.command("magpie")
@click.option("--model", default="smollm2", show_default=True, help="Model that writes the instructions.")
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of slots (instruction draws); cleaning and dedup may keep fewer.")
@click.option("-o", "--output", "output_dir", required=True, help="Output folder.")
@click.option("--template", default="auto", show_default=True,
              help=f"auto (from the model's own chat template), a family ({', '.join(TABLE)}), or a "
                   "tokenizer_config.json / .jinja path.")
@click.option("--system", help="System prompt placed before the user turn.")
@click.option("--control-task", type=click.Choice(sorted(CONTROL_TASKS)), help="Steer towards a task with a built-in "
              "system prompt.")
@click.option("--language", help="Keep only instructions in this language (zh, en, ja, ko...); zh also steers with a "
              "Chinese system prompt.")
@click.option("--turns", type=click.IntRange(min=1), default=1, show_default=True, help="Conversation turns.")
@click.option("--response-model", help="Model that answers (default: --model).")
@click.option("--no-responses", is_flag=True, help="Instructions only.")
@click.option("--tag", is_flag=True, help="Tag task category, input quality and difficulty (Magpie's judge prompts).")
@click.option("--tag-model", help="Judge model for --tag (default: the response model).")
@click.option("--min-quality", type=click.Choice(QUALITY), help="Keep instructions rated at least this (implies --tag).")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Instructions per slot.")
@click.option("--samples-per-call", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instructions drawn per request (the server's n: the pre-query is processed once per group); "
                   "groups a slot's --samples.")
@click.option("--attempts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Draws per instruction until one passes the filters.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Instruction sampling temperature.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Instruction nucleus sampling.")
@click.option("--max-tokens", type=int, default=128, show_default=True, help="Instruction length limit; longer ones "
              "are dropped as truncated.")
@click.option("--repetition-penalty", type=float, help="Repetition penalty (llama.cpp repeat_penalty; vLLM/SGLang "
              "repetition_penalty).")
@click.option("--response-max-tokens", type=int, help="Response length limit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed: same seed, same instructions.")
@click.option("--dedup-threshold", type=float, default=0.8, show_default=True,
              help="Jaccard similarity from which two instructions are near-duplicates.")
@click.option("--no-dedup", is_flag=True, help="Keep duplicate instructions.")
@click.option("--export", "exports", multiple=True, type=click.Choice(["sharegpt", "openai", "alpaca"]),
              help="Also write OUT/export.<format>.jsonl (repeatable).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Records in flight at once (default 8; for a vllm model its max_concurrency, 256 unless set: "
                   "its engine batches everything in flight).")
@click.option("--models", "models_file", help="A models.yaml merged over the built-in models.")
@click.option("--no-cache", is_flag=True, help="No call cache (default: OUT/.joyforge-cache/calls.sqlite).")
@click.option("--overwrite", is_flag=True, help="Start afresh: delete this folder's earlier stage outputs first.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs and CI).")
def magpie_command(model: str, n: int, output_dir: str, template: str, system: str | None, control_task: str | None,
                   language: str | None, turns: int, response_model: str | None, no_responses: bool, tag: bool,
                   tag_model: str | None, min_quality: str | None, samples: int, samples_per_call: int, attempts: int,
                   temperature: float, top_p: float, max_tokens: int, repetition_penalty: float | None,
                   response_max_tokens: int | None,
                   seed: int, dedup_threshold: float, no_dedup: bool, exports: tuple[str, ...], concurrency: int | None,
                   models_file: str | None, no_cache: bool, overwrite: bool, no_progress: bool) -> None:
    """Magpie: instructions written by a chat model given only its pre-query template, then answers.

    \b
    joyforge magpie -n 100 -o out/magpie                       # embedded SmolLM2, template from the GGUF
    joyforge magpie --model my-vllm --template qwen2.5 --language zh -n 10000 -o out/zh --tag
    joyforge magpie --control-task math --turns 2 --response-model gpt -n 500 -o out/math --export sharegpt
    """
    from ..engine.local import LocalExecutor
    from ..io.exports import export_file
    from ..config.pipeline import Pipeline
    from .run import print_summary

    if no_responses and (tag or min_quality or turns > 1 or exports):
        raise click.UsageError("--tag, --min-quality, --turns > 1 and --export need responses: drop --no-responses")
    registry = _registry(models_file)
    config = registry.get(model)
    backend = config.backend
    if concurrency is None:
        concurrency = config.max_concurrency if backend == "vllm" else 8
    instruction_params: dict[str, Any] = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    if repetition_penalty is not None:
        instruction_params["repeat_penalty" if backend == "llamacpp" else "repetition_penalty"] = repetition_penalty
    response_params = {"max_tokens": response_max_tokens} if response_max_tokens else {}
    out = Path(output_dir).resolve()
    instructions, conversations = build_pipelines(
        out, model=model, n=n, template=template, system=system, control_task=control_task, language=language,
        turns=turns, response_model=response_model, tag=tag, tag_model=tag_model, min_quality=min_quality,
        samples=samples, attempts=attempts, samples_per_call=samples_per_call, instruction_params=instruction_params,
        response_params=response_params,
        dedup_threshold=None if no_dedup else dedup_threshold, responses=not no_responses, seed=seed,
        concurrency=concurrency, models_file=models_file, cache=None if no_cache else "default",
        progress=not no_progress)
    console = Console(stderr=True)
    write_slots(out / "slots.jsonl", n)
    for data in (instructions, conversations):
        if data is None:
            continue
        (out / f"{data['name']}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
        pipeline = Pipeline.from_dict(data, source=str(out / f"{data['name']}.yaml"), base_dir=str(out))
        console.rule(data["name"])
        summary = LocalExecutor(pipeline, registry=registry, overwrite=overwrite).run_sync()
        print_summary(summary, console)
        if data is instructions:
            print_drops(summary, console)
        elif "minhash_dedup" in summary.steps:
            dedup = summary.steps["minhash_dedup"]
            seen = int(dedup.get("records_in", 0))
            removed = int(dedup.get("removed", 0))
            if seen:
                console.print(f"duplicates removed: {removed} of {seen} instructions ({removed / seen:.1%}, exact and "
                              "near, this run)")
    if conversations is not None:
        for fmt in exports:
            report = export_file(out / "conversations" / "data.jsonl", out / f"export.{fmt}.jsonl", fmt)
            console.print(f"export {fmt}: {report.written} records -> {out / f'export.{fmt}.jsonl'}")
