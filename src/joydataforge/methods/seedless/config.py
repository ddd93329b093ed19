"""Settings of generation without seed data (``seedless``): topics in, N generated records per topic out."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ...config.base import PromptedConfig
from ...config.messages import SettingError
from ...config.reasoning import keep_reasoning_field
from ...config.tables import one_or_more_names, written_field_names
from ...config.text_checks import TextChecks, text_checks_field
from ..dedup.config import banding_problem

#: Fields of a topic record that steer generation; the step reads them, the outputs do not copy them.
CONTROL_FIELDS = ("topic", "subtopics", "personas", "difficulties", "n")
#: Fields every generated record gets from the step, so the model cannot write them.
STEP_FIELDS = frozenset({*CONTROL_FIELDS, "persona", "difficulty", "id", "seedless_reasoning"})


class SeedlessConfig(PromptedConfig):
    """Generate ``n_per_topic`` records per input topic, with seeded diversity controls and near-dedup.

    The input is the topic list itself, one record per topic (a YAML taxonomy or JSONL/JSON/CSV/XLSX/
    Parquet): ``topic`` (required), and optionally ``subtopics`` (a list, or one string split on ``|`` /
    ``;``), ``personas``, ``difficulties`` and ``n``, which override the step's settings for that topic.
    Every call draws its sub-topics, persona and difficulty from a generator seeded by the run seed, the
    step and the topic, so two runs ask the same questions. Near-duplicates are dropped before they are
    kept and the step tops up with extra calls (up to ``max_calls``). Each output record has the topic's
    other fields, ``topic``, the generated ``fields``, the controls it was made with (``subtopics``,
    ``persona``, ``difficulty``), the id ``<topic id>:g<k>`` and a thinking model's trace of the reply that
    wrote it (``seedless_reasoning``, ``keep_reasoning``). A topic that yields fewer records keeps
    what it got (counted as ``short_topics``); one that yields none fails with the last raw reply.
    The built-in prompts read ``options.task``: what kind of record to write (e.g. "questions a user might
    ask an AI assistant").
    """

    kind: ClassVar[str] = "seedless"
    summary: ClassVar[str] = "generate N records per input topic without seed data, with diversity controls and dedup"
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2-writer",
        "prompt": "en/seedless",
        "n_per_topic": 3,
        "personas": ["a student", "a nurse"],
    }

    prompt: str = Field(
        default="seedless",
        min_length=1,
        description=(
            "Prompt template: a built-in name (`seedless` in the run's language, `en/seedless`) or the path of a "
            "YAML prompt file, relative to the pipeline file."
        ),
    )
    n_per_topic: int = Field(
        default=5, ge=1, strict=True, description=("Records generated per topic; a topic's own `n` overrides it.")
    )
    per_call: int = Field(default=1, ge=1, strict=True, description="Records asked for in one model call.")
    fields: str | list[str] = Field(
        default_factory=lambda: ["input"],
        description=(
            "What each generated record holds (one name or a list), each a non-empty text; add a `generate` step "
            "to answer them. Not a name starting with `_`, nor one the step sets (`topic`, `subtopics`, "
            "`personas`, `difficulties`, `n`, `persona`, `difficulty`, `id`, `seedless_reasoning`)."
        ),
    )
    personas: list[str] | None = Field(
        default=None,
        description=("Who asks: one is drawn per call; a topic's own `personas` override them. Default: none."),
    )
    difficulties: list[str] | None = Field(
        default=None,
        description=("How hard: one is drawn per call; a topic's own `difficulties` override them. Default: none."),
    )
    subtopics_per_call: int = Field(
        default=1, ge=1, strict=True, description=("How many of the topic's sub-topics are drawn for each call.")
    )
    max_calls: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=(
            "Call budget per topic, calls that gave duplicates included; default: twice the calls N records need."
        ),
    )
    dedup: Literal["minhash", "exact", "none"] = Field(
        default="minhash",
        description=(
            "How generated records are deduplicated before they are kept: `minhash` (near-duplicates, plus "
            "exact matches of normalised text), `exact` (normalised text only) or `none`."
        ),
    )
    dedup_scope: Literal["topic", "run"] = Field(
        default="topic",
        description=(
            "`topic`: within each topic's records (deterministic and resume-safe); `run`: also across the topics "
            'of this run in this process ("first" then means first to finish; for an exact cross-topic pass run '
            "`minhash_dedup` over the output afterwards)."
        ),
    )
    threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        strict=True,
        description=(
            "Estimated Jaccard similarity from which two generated records are near-duplicates (`dedup: minhash`)."
        ),
    )
    num_perm: int = Field(
        default=128,
        ge=1,
        strict=True,
        description=("MinHash signature length (`dedup: minhash`); the estimate's error shrinks as 1/sqrt(num_perm)."),
    )
    max_chars: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=("Longest generated field the schema allows, in characters; null: no limit."),
    )
    text_checks: TextChecks = text_checks_field(
        "each generated field; a record with one that fails is not kept (the topic is topped up like after a duplicate)"
    )
    keep_reasoning: bool = keep_reasoning_field(
        "`seedless_reasoning` of each record (the trace of the reply that wrote it, shared by the `per_call` records "
        "of one reply; dedup and text checks read the generated fields alone)"
    )

    @field_validator("fields", mode="before")
    @classmethod
    def _one_or_more_fields(cls, value: Any) -> Any:
        return one_or_more_names(value, "fields")

    @field_validator("fields")
    @classmethod
    def _fields_are_free(cls, fields: list[str]) -> list[str]:  # a list: see _one_or_more_fields
        return written_field_names(fields, "fields", STEP_FIELDS, "field names")

    @model_validator(mode="after")
    def _bands_fit(self) -> "SeedlessConfig":
        problem = banding_problem(self.threshold, self.num_perm) if self.dedup == "minhash" else None
        if problem:
            raise SettingError("num_perm", problem)
        return self
