"""What ``joyforge magpie`` does, apart from reading options and printing: two ordinary pipelines.

Dedup (a sequential step) must sit between the instructions and the responses -- answers are the expensive
part, and a duplicate's answer is waste -- so the command runs two pipelines, both resumable::

    OUT/slots.jsonl --magpie--> OUT/instructions/ --minhash_dedup, magpie_response[, magpie_tag]--> OUT/conversations/

Each stage's pipeline is written next to its output (``OUT/*.yaml``), so ``joyforge run`` can redo or extend
it by hand. Re-running the same command resumes; a larger ``-n`` adds slots.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ...config.defaults import COMMAND_RECORDS_IN_FLIGHT
from .cleaning import DROP_REASONS

if TYPE_CHECKING:
    from ...config.pipeline import Pipeline
    from ...engine.summary import RunSummary
    from ...models.config import ModelConfig, ModelRegistry

QUALITY = ["very poor", "poor", "average", "good", "excellent"]
"""The input-quality judge's ratings, worst first: ``--min-quality good`` keeps good and excellent."""

EXPORT_FORMATS = ("sharegpt", "openai", "alpaca")


def model_registry(models_file: str | None) -> "ModelRegistry":
    """The built-in models, with a user's models.yaml merged over them."""
    from ...models.config import ModelRegistry

    registry = ModelRegistry.load()
    return registry.merged(ModelRegistry.load(models_file)) if models_file else registry


def records_in_flight(config: "ModelConfig", concurrency: int | None) -> int:
    """Records in flight unless the user said: an engine that batches what is in flight gets its batch width."""
    if concurrency is not None:
        return concurrency
    return config.max_concurrency if config.capabilities.batches_in_flight else COMMAND_RECORDS_IN_FLIGHT


def instruction_params(
    config: "ModelConfig", *, temperature: float, top_p: float, max_tokens: int, repetition_penalty: float | None = None
) -> dict[str, Any]:
    """Sampling parameters of the instruction calls, the repetition penalty under the backend's own name."""
    params: dict[str, Any] = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    if repetition_penalty is not None:
        params[config.capabilities.repetition_penalty_param] = repetition_penalty
    return params


def build_pipelines(
    out: Path,
    *,
    model: str,
    n: int,
    template: str = "auto",
    system: str | None = None,
    control_task: str | None = None,
    language: str | None = None,
    turns: int = 1,
    response_model: str | None = None,
    tag: bool = False,
    tag_model: str | None = None,
    min_quality: str | None = None,
    samples: int = 1,
    attempts: int = 1,
    samples_per_call: int = 1,
    instruction_params: dict[str, Any] | None = None,
    response_params: dict[str, Any] | None = None,
    dedup_threshold: float | None = 0.8,
    responses: bool = True,
    seed: int = 0,
    concurrency: int = COMMAND_RECORDS_IN_FLIGHT,
    models_file: str | None = None,
    cache: str | None = "default",
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The two pipelines (as the dicts a YAML file would hold) that ``joyforge magpie`` runs.

    The second is ``None`` without ``responses``. ``cache="default"`` puts the call cache in the output folder.
    """
    out = out.resolve()
    run: dict[str, Any] = {
        "seed": seed,
        "concurrency": concurrency,
        "progress": progress,
        "cache": str(out / ".joyforge-cache" / "calls.sqlite") if cache == "default" else cache,
    }
    if language in ("en", "zh"):
        run["language"] = language  # the judges' prompts in that language
    common: dict[str, Any] = {"run": run}
    if models_file:
        common["models"] = os.path.abspath(models_file)
    magpie: dict[str, Any] = {
        "model": model,
        "template": template,
        "samples": samples,
        "attempts": attempts,
        "params": dict(instruction_params or {}),
    }
    if samples_per_call != 1:
        magpie["samples_per_call"] = samples_per_call
    for key, value in (("system", system), ("control_task", control_task), ("language", language)):
        if value:
            magpie[key] = value
    instructions = {
        "name": "magpie-instructions",
        "input": {"path": str(out / "slots.jsonl"), "limit": n},
        "steps": [{"magpie": magpie}],
        "output": {"dir": str(out / "instructions")},
        **common,
    }
    if not responses:
        return instructions, None
    steps: list[dict[str, Any]] = []
    if dedup_threshold:
        steps.append({"minhash_dedup": {"fields": "input", "threshold": dedup_threshold}})
    steps.append(
        {
            "magpie_response": {
                "model": response_model or model,
                "turns": turns,
                **({"instruction_model": model} if turns > 1 else {}),
                "params": dict(response_params or {}),
            }
        }
    )
    if tag or min_quality:
        tagger: dict[str, Any] = {"model": tag_model or response_model or model}
        if min_quality:
            tagger["keep"] = {"input_quality": QUALITY[QUALITY.index(min_quality) :]}
        steps.append({"magpie_tag": tagger})
    conversations = {
        "name": "magpie-conversations",
        "input": {"path": str(out / "instructions" / "data.jsonl")},
        "steps": steps,
        "output": {"dir": str(out / "conversations")},
        **common,
    }
    return instructions, conversations


def stage_pipeline(out: Path, data: dict[str, Any]) -> "Pipeline":
    """Write a stage's pipeline to ``OUT/<name>.yaml`` (for ``joyforge run``) and validate it from there."""
    from ...config.pipeline import Pipeline

    path = out / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
    return Pipeline.from_dict(data, source=str(path), base_dir=str(out))


def run_stage(pipeline: "Pipeline", registry: "ModelRegistry", *, overwrite: bool = False) -> "RunSummary":
    """Run one stage with the local executor."""
    from ...engine.local import LocalExecutor

    return LocalExecutor(pipeline, registry=registry, overwrite=overwrite).run_sync()


def instruction_outcomes(stats: Mapping[str, Any]) -> list[tuple[str, int]]:
    """What became of the instruction stage's draws: ``kept``, then each reason that dropped some, in
    :data:`~joydataforge.methods.magpie.cleaning.DROP_REASONS` order. Empty when no model call was made."""
    if not int(stats.get("calls", 0)):
        return []
    outcomes = [("kept", int(stats.get("instructions", 0)))]
    for reason in DROP_REASONS:
        count = int(stats.get(f"dropped:{reason}", 0))
        if count:
            outcomes.append((f"dropped: {reason}", count))
    return outcomes


def drop_hint(stats: Mapping[str, Any]) -> str | None:
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


def duplicates_removed(summary: "RunSummary") -> tuple[int, int] | None:
    """``(removed, seen)`` instructions of the conversation stage's dedup, when it saw any this run."""
    dedup = summary.steps.get("minhash_dedup")
    if dedup is None:
        return None
    seen = int(dedup.get("records_in", 0))
    return (int(dedup.get("removed", 0)), seen) if seen else None


def export_conversations(out: Path, formats: tuple[str, ...] | list[str]) -> Iterator[tuple[str, int, Path]]:
    """Write ``OUT/export.<format>.jsonl`` for each format; yields ``(format, records written, path)``."""
    from ...io.exports import export_file

    for fmt in formats:
        path = out / f"export.{fmt}.jsonl"
        report = export_file(out / "conversations" / "data.jsonl", path, fmt)
        yield fmt, report.written, path
