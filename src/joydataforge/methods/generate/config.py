"""Settings of single-model synthesis: ``generate`` (free text) and ``label`` (JSON checked against a schema)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ...config.base import PromptedConfig
from ...config.reasoning import keep_reasoning_field
from ...config.text_checks import TextChecks, text_checks_field


class GenerateConfig(PromptedConfig):
    """One prompt, one model, one reply per record: the reply (stripped) goes to ``output_field``.

    An empty reply fails the record (kept in failures.jsonl), it is never written as an empty answer; so
    does a reply that fails the ``text_checks`` (a bare number, JSON debris, a loop, the prompt's labels).
    """

    kind: ClassVar[str] = "generate"
    positional: ClassVar[tuple[str, ...]] = ("model", "prompt", "output_field")
    summary: ClassVar[str] = "one model answers each record; the reply goes to a field (the seed's default method)"
    example: ClassVar[dict[str, Any]] = {"model": "smollm2", "prompt": "zh/answer", "output_field": "target"}

    prompt: str = Field(
        default="answer",
        min_length=1,
        description=(
            "Prompt template: a built-in name (`answer`, `zh/answer`; `joyforge prompts list`) or the path of a "
            "YAML prompt file, relative to the pipeline file."
        ),
    )
    output_field: str = Field(default="target", min_length=1, description="Field that receives the reply.")
    text_checks: TextChecks = text_checks_field(
        "the reply; a reply that fails one fails the record, kept in failures.jsonl"
    )
    keep_reasoning: bool = keep_reasoning_field()


class LabelConfig(PromptedConfig):
    """Structured output: the reply must be JSON matching the prompt's schema (e.g. ``{label, reason}``).

    With ``options.labels`` the schema's ``label`` property is restricted to that list, so a grammar-
    constrained backend cannot answer anything else and a free one is retried when it does. The JSON's keys
    are stored on the record, under ``output_field`` when given, else at the top level with ``prefix``.
    """

    kind: ClassVar[str] = "label"
    summary: ClassVar[str] = "one model answers in JSON checked against the prompt's schema ({label, reason})"
    example: ClassVar[dict[str, Any]] = {"model": "smollm2", "prompt": "zh/intent_cdss"}

    prompt: str = Field(
        default="label",
        min_length=1,
        description=(
            "Prompt template with a JSON schema: a built-in name (`label`, `zh/intent_cdss`) or a YAML prompt file."
        ),
    )
    output_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Store the whole JSON reply under this field; when unset its keys go to the top level of the record."
        ),
    )
    prefix: str = Field(default="", description="Prefix for the reply's keys at the top level (`gpt_` -> `gpt_label`).")
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description=("A JSON schema to use instead of the prompt's own.")
    )
    keep_reasoning: bool = keep_reasoning_field(
        "`<output_field>_reasoning` (without `output_field`: `<prefix>label_reasoning`); the JSON is read from the "
        "answer alone"
    )
