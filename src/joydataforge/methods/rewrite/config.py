"""Settings of case rewrite / augmentation (``rewrite``): one record in, several rewritten cases out."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from ...config.base import PromptedConfig
from ...config.messages import SettingError, shown
from ...config.reasoning import keep_reasoning_field
from ...config.tables import named_table, one_or_more_names, written_field_names
from ...config.text_checks import TextChecks, text_checks_field

#: Rewrite types used when the pipeline names none; a mapping from type name to the instruction shown
#: to the model. Users pass their own list (names only) or mapping (names and instructions).
DEFAULT_TYPES: dict[str, str] = {
    "paraphrase": "say the same thing in different words; keep the meaning and every fact",
    "persona": "have a different kind of person ask (age, job, expertise, mood); adapt wording to them",
    "detail": "add concrete, plausible details or constraints that make the case more specific",
    "tone": "change the tone or register (formal/casual, terse/verbose, polite/impatient)",
}

#: The original JoyDataForge's domain rewrite types (its drug and pregnancy case-rewrite prompts), as
#: presets a ``types`` list can name: Chinese names with Chinese instructions, English names with English
#: ones. Not used unless named. ``docs/original.md`` says what the original asked for.
DOMAIN_TYPES: dict[str, str] = {
    "问句药名替换": (
        "问句里写了具体药名时，把它换成一种同类药（作用和用途相近），问句的其余部分和历史对话随之调整，"
        "让整条样本仍然合理。"
    ),
    "历史药名替换": (
        "问句没有写药名、而是指代历史对话里提到的药时，把历史对话里的这种药换成一种同类药，用户当前的问句一字不改。"
    ),
    "末次月经日期改写": (
        "改写末次月经日期：换成另一个合理的具体日期，或换一种写法（有无年份、“号”与“日”、数字与汉字），其余内容不变。"
    ),
    "怀孕状态改写": (
        "换一种说法表达用户正在怀孕，多用隐含的说法（验孕结果、孕期反应），少用“我确定怀孕了”这种直说；日期不变。"
    ),
    "表达润色": "不改药名、末次月经日期和怀孕状态，只让表达更通顺自然。",
    "drug_swap_query": (
        "the query names a medicine: replace it with another medicine of the same class and use, and adjust "
        "the rest of the case (the history included) so that it still makes sense"
    ),
    "drug_swap_history": (
        "the query refers to a medicine named only in the history ('this one', 'it'): replace that medicine in "
        "the history with one of the same class and use, and keep the query word for word"
    ),
    "lmp_date": (
        "rewrite the date of the last menstrual period: another plausible date, or the same date written "
        "another way (with or without the year, numeric or spelled out); change nothing else"
    ),
}

#: Preset types that only make sense when the case rewrites this field too (they change the history).
TYPE_NEEDS_FIELD: dict[str, str] = {"历史药名替换": "history", "drug_swap_history": "history"}

#: Every type a ``types`` list can name and get an instruction for.
BUILTIN_TYPES: dict[str, str] = {**DEFAULT_TYPES, **DOMAIN_TYPES}

#: Fields every output case gets from the step, so a case cannot rewrite them.
RESERVED_FIELDS = frozenset({"type", "id", "parent_id", "rewrite_type", "rewrite_reasoning"})


class RewriteConfig(PromptedConfig):
    """Rewrite each record into several cases of named types; one output record per usable case.

    The record (its ``id`` and private fields left out) goes to the model as JSON; the model answers
    ``{"cases": [{"type": ..., <field>: ...}]}``. Cases that are blank, unchanged, repeated or over their
    type's quota are dropped and counted (``dropped:<reason>``); a record left with fewer than
    ``min_cases`` usable cases fails. Each kept case is a copy of the parent (less ``drop_fields``) with
    the rewritten ``fields`` on top, ``rewrite_type``, ``parent_id`` and the id ``<parent_id>:rw<k>``; a
    thinking model's trace of the reply goes in ``rewrite_reasoning`` (``keep_reasoning``).
    """

    kind: ClassVar[str] = "rewrite"
    summary: ClassVar[str] = "rewrite each record into several cases of named types (paraphrase, persona, ...)"
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2-rewriter",
        "prompt": "zh/rewrite",
        "types": ["paraphrase", "persona"],
    }

    prompt: str = Field(
        default="rewrite",
        min_length=1,
        description=(
            "Prompt template: a built-in name (`rewrite` in the run's language, `zh/rewrite`) or the path of a "
            "YAML prompt file, relative to the pipeline file."
        ),
    )
    fields: str | list[str] = Field(
        default_factory=lambda: ["input"],
        description=(
            "The record fields each case rewrites (and must contain, as non-empty text): one name or a list. "
            "Not `type`, `id`, `parent_id`, `rewrite_type`, `rewrite_reasoning`, nor a name starting with `_`."
        ),
    )
    types: list[str] | dict[str, str | None] | None = Field(
        default=None,
        description=(
            "The rewrite types: a mapping name -> instruction shown to the model, or a list of names (a built-in "
            "type among them gets its built-in instruction, any other none). Default: paraphrase, persona, "
            "detail, tone. Presets of the original's domain types: 问句药名替换, 历史药名替换 (needs `history` "
            "in `fields`), 末次月经日期改写, 怀孕状态改写, 表达润色; in English drug_swap_query, drug_swap_history, "
            "lmp_date."
        ),
    )
    per_type: int = Field(
        default=1,
        ge=1,
        strict=True,
        description=("Cases asked per type; also the most cases of one type that are kept."),
    )
    max_cases: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=(
            "The most cases kept per record (the reply's schema allows no more); default: number of types "
            "times `per_type`."
        ),
    )
    min_cases: int = Field(
        default=1,
        ge=1,
        strict=True,
        description=("A record with fewer usable cases fails (kept in failures.jsonl with the raw reply)."),
    )
    drop_fields: list[str] = Field(
        default_factory=list,
        description=(
            "Parent fields not copied to the cases, e.g. `[target]` when an answer no longer fits the "
            "rewritten question."
        ),
    )
    max_chars: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=(
            "Longest rewritten field the schema allows, in characters (keeps a small model's JSON within "
            "`max_tokens`); null: no limit."
        ),
    )
    show_fields: list[str] | None = Field(
        default=None,
        description=(
            "Send only these fields of the record to the model (must include `fields`); default: the whole "
            "record. Long histories can overflow a small model's context."
        ),
    )
    text_checks: TextChecks = text_checks_field(
        "each rewritten field of each case; a case that fails one is dropped and counted, like a blank one"
    )
    keep_reasoning: bool = keep_reasoning_field(
        "`rewrite_reasoning` of each case (the trace of the one reply that wrote all of a record's cases)"
    )

    @field_validator("fields", mode="before")
    @classmethod
    def _one_or_more_fields(cls, value: Any) -> Any:
        return one_or_more_names(value, "fields")

    @field_validator("fields")
    @classmethod
    def _fields_are_rewritable(cls, fields: list[str]) -> list[str]:  # a list: see _one_or_more_fields
        return written_field_names(fields, "fields", RESERVED_FIELDS, "record field names")

    @field_validator("types", mode="before")
    @classmethod
    def _type_set(cls, value: Any) -> Any:
        table = named_table(value, BUILTIN_TYPES if value is not None else DEFAULT_TYPES, "types", "instruction")
        if not table or any(not name.strip() for name in table):
            raise SettingError("types", f"must name at least one non-empty rewrite type (got {shown(value)})")
        # A mapping's instructions are taken as text (an empty one stays empty); a list stays names.
        return table if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _cases_and_fields_agree(self) -> "RewriteConfig":
        if self.min_cases > self.case_cap():
            source = "" if self.max_cases is not None else ", the number of types times per_type"
            raise SettingError("min_cases", f"must be <= max_cases ({self.case_cap()}{source}) (got {self.min_cases})")
        for name, field in TYPE_NEEDS_FIELD.items():
            if name in self.type_table() and field not in self.fields:
                raise SettingError(
                    "types", f"'{name}' rewrites the {field}: add {field} to fields (got {shown(self.fields)})"
                )
        if self.show_fields is not None and not set(self.fields) <= set(self.show_fields):
            raise SettingError(
                "show_fields",
                f"must include the fields to rewrite {shown(self.fields)} (got {shown(self.show_fields)})",
            )
        return self

    def type_table(self) -> dict[str, str]:
        """The rewrite types as ``name -> instruction``, in the order given (a listed preset gets its text)."""
        if self.types is None:
            return dict(DEFAULT_TYPES)
        return named_table(self.types, BUILTIN_TYPES, "types", "instruction")

    def case_cap(self) -> int:
        """The most cases kept per record: ``max_cases``, or the number of types times ``per_type``."""
        return self.max_cases if self.max_cases is not None else len(self.type_table()) * self.per_type
