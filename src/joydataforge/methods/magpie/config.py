"""Settings of the Magpie steps: ``magpie`` (instructions), ``magpie_response`` (answers) and ``magpie_tag``.

Plain data, checked without the engine or any model: ``joyforge validate`` reports a wrong setting here,
before a model is loaded. What needs the run (the model's chat template, prompt files) is checked by the
steps' ``check``.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError, shown
from ...config.reasoning import keep_reasoning_field

ControlTask = Literal["math", "code", "translation"]
"""The built-in steering system prompts (:data:`joydataforge.methods.magpie.control_tasks.CONTROL_TASKS`)."""

TagName = Literal["task_category", "input_quality", "difficulty"]

# tag -> (prompt name, {reply key: record field})
TAGS: dict[str, tuple[str, dict[str, str]]] = {
    "task_category": ("magpie_task_category", {"primary_tag": "task_category", "other_tags": "other_task_categories"}),
    "input_quality": (
        "magpie_input_quality",
        {"input_quality": "input_quality", "explanation": "input_quality_explanation"},
    ),
    "difficulty": ("magpie_difficulty", {"difficulty": "difficulty", "intent": "intent", "knowledge": "knowledge"}),
}

# The paper samples instructions at temperature 1, top-p 1; a user's instruction is short.
DEFAULT_INSTRUCTION_PARAMS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 128}

_STOP_IS_DERIVED = "is set from the chat template's end-of-turn markers; remove it"


class CleaningConfig(BaseModel):
    """What an instruction must be to be kept (the ``cleaning`` setting); a dropped one is counted by reason."""

    model_config = ConfigDict(extra="forbid")

    min_units: int = Field(
        default=3,
        ge=0,
        description=(
            "Shortest instruction kept, in units: words, each CJK character counting as one. Shorter ones are "
            "dropped as `too_short`."
        ),
    )
    max_units: int = Field(
        default=600,
        ge=1,
        description=("Longest instruction kept, in the same units; longer ones are dropped as `too_long`."),
    )
    languages: list[str] | None = Field(
        default=None,
        description=(
            "Keep only instructions detected as one of these languages (`[zh]`; a single code may be written "
            "as a string); unset keeps all. The detected language is recorded either way."
        ),
    )
    require_request: bool = Field(
        default=True,
        description=("Drop instructions that ask nothing (no question mark, no request wording) as `not_a_request`."),
    )

    @field_validator("languages", mode="before")
    @classmethod
    def _one_language_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "CleaningConfig":
        if self.max_units < self.min_units:
            raise SettingError(
                "cleaning.max_units",
                f"must be >= min_units ({self.min_units}), else every instruction is dropped (got {self.max_units})",
            )
        return self


def _known_cleaning_keys(value: Any) -> Any:
    """Name an unknown key of ``cleaning`` with the keys ``cleaning`` accepts (not those of the step)."""
    if isinstance(value, dict):
        known = sorted(CleaningConfig.model_fields)
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise SettingError(f"cleaning.{key}", f"unknown setting ({hint}known: {', '.join(known)})")
    return value


def _no_stop(value: dict[str, Any] | None, field: str) -> dict[str, Any] | None:
    if value is not None and "stop" in value:
        raise SettingError(f"{field}.stop", _STOP_IS_DERIVED)
    return value


class MagpieInstructionConfig(StepConfig):
    """Magpie (Xu et al. 2024): an aligned chat model writes user instructions from nothing but its pre-query
    template (the chat template up to where the user's message would start).

    Each input record is one *slot* (``joyforge magpie`` writes them: ``{"id": "magpie-000001"}``); its id
    seeds the sample, so a re-run asks the same questions (cache hits) and a resumed run skips finished
    slots. The raw text is cleaned (leaked labels, answers and template tokens removed) and filtered; a
    dropped draw is counted as ``dropped:<reason>`` and, with ``attempts > 1``, drawn again.

    Writes the instruction to ``output_field`` (``input``), ``language`` (detected), ``system`` (when a system
    prompt was used) and ``magpie``: the template (``template``, ``template_spec``, ``template_origin``,
    ``pre_query``, ``stops``), ``control_task``, ``language_filter``, ``params``, the draw (``sample``,
    ``attempt``, ``finish_reason``, ``raw``, ``edits``; with ``samples_per_call > 1`` also
    ``samples_per_call``, ``n`` and ``choice``) and ``drop`` when ``on_drop: keep`` passed a dropped one on.
    With ``samples > 1`` the outputs' ids are ``<slot id>:<k>``.
    """

    kind: ClassVar[str] = "magpie"
    positional: ClassVar[tuple[str, ...]] = (
        "model",
        "template",
        "system",
        "control_task",
        "language",
        "samples",
        "attempts",
        "cleaning",
        "on_drop",
        "output_field",
        "params",
        "samples_per_call",
    )
    summary: ClassVar[str] = "a chat model writes instructions from nothing but its pre-query template (Magpie)"
    example: ClassVar[dict[str, Any]] = {"model": "smollm2", "template": "auto", "attempts": 2}

    model: str = Field(
        min_length=1,
        description=("Named model (from models.yaml) that writes the instructions; it must continue raw text."),
    )
    template: str = Field(
        default="auto",
        description=(
            "The chat template the pre-query comes from: `auto` (the model's own: a GGUF's, a tokenizer's, or the "
            "file its models.yaml entry names), a built-in family (`chatml`, `llama3.1`, `qwen2.5`, ...), or the "
            "path of a tokenizer_config.json / .jinja file, relative to the pipeline file. Empty means `auto`."
        ),
    )
    system: str | None = Field(
        default=None, description=("System prompt placed before the user turn: it steers what the model asks about.")
    )
    control_task: ControlTask | None = Field(
        default=None,
        description=(
            "A built-in system prompt that steers towards one kind of task: `math`, `code` or `translation` "
            "(in `language` when there is a version in it). Not together with `system`."
        ),
    )
    language: str | None = Field(
        default=None,
        description=(
            "Keep only instructions in this language (a code such as `zh`); also picks the control task's language "
            "and, with no other system prompt, a steering one where there is one (`zh`). Several languages go "
            "in `cleaning.languages`."
        ),
    )
    samples: int = Field(default=1, ge=1, description=("Instructions written per slot (outputs per input record)."))
    attempts: int = Field(
        default=1, ge=1, description=("Draws per instruction until one passes the filters; 1 draws once.")
    )
    samples_per_call: int = Field(
        default=1,
        ge=1,
        description=(
            "Instructions drawn per request: above 1, a slot's `samples` are drawn in groups of up to this many "
            "through the server's `n`, so the pre-query is processed once per group (matters only with "
            "`samples > 1`); 1 makes one call per draw."
        ),
    )
    cleaning: CleaningConfig | None = Field(
        default=None,
        description=(
            "What an instruction must be to be kept, a mapping of: `min_units` (default 3) and `max_units` (600), "
            "its length in words, each CJK character counting as one; `languages` (keep only these, e.g. `[zh]`; "
            "default: `language` when set, else all); `require_request` (true: drop what asks nothing)."
        ),
    )
    on_drop: Literal["drop", "keep"] = Field(
        default="drop",
        description=(
            "`drop` removes instructions that fail the filters; `keep` passes them on with `magpie.drop` set to "
            "the reason (for inspection)."
        ),
    )
    output_field: str = Field(default="input", min_length=1, description="Field that receives the instruction.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Sampling parameters of the instruction calls, over the defaults temperature 1.0, top_p 1.0, "
            "max_tokens 128 and the model's own (`repeat_penalty` for llama.cpp, `repetition_penalty` for "
            "servers and vLLM). `stop` is not allowed: it comes from the chat template."
        ),
    )

    @field_validator("template", mode="before")
    @classmethod
    def _empty_template_is_auto(cls, value: Any) -> Any:
        return value or "auto"

    @field_validator("language", mode="before")
    @classmethod
    def _one_language(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"must be one language code such as zh (got {shown(value)}); a list goes in cleaning.languages"
            )
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _no_params_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("cleaning", mode="before")
    @classmethod
    def _cleaning_keys(cls, value: Any) -> Any:
        return _known_cleaning_keys(value)

    @field_validator("params")
    @classmethod
    def _params_without_stop(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _no_stop(value, "params")

    @model_validator(mode="after")
    def _one_system_prompt(self) -> "MagpieInstructionConfig":
        if self.system and self.control_task:
            raise SettingError(
                "control_task", "give system or control_task, not both (control_task is a built-in system prompt)"
            )
        return self

    def model_names(self) -> list[str]:
        return [self.model]


class MagpieResponseConfig(StepConfig):
    """Answers Magpie instructions, and continues the conversation for ``turns`` turns.

    Each follow-up instruction is written Magpie's way: the instruction model continues the conversation so
    far plus its chat template's user-turn prefix. A follow-up that fails cleaning drops the conversation,
    counted as ``followup_dropped:<reason>``; an empty answer fails the record.

    Writes ``output_field`` (``target``: the last answer), ``input_field`` (``input``: the last user turn),
    ``history`` (the earlier turns, when there are some), ``messages`` (the whole conversation, system prompt
    included) and ``turns``. A thinking model's trace of the last answer goes in ``<output_field>_reasoning``,
    each answer's in its assistant message's ``reasoning_content`` in ``messages`` (``keep_reasoning``); the
    model and the instruction model read the conversation without traces, and ``history`` holds none.
    """

    kind: ClassVar[str] = "magpie_response"
    positional: ClassVar[tuple[str, ...]] = (
        "model",
        "turns",
        "instruction_model",
        "template",
        "params",
        "instruction_params",
        "cleaning",
        "input_field",
        "output_field",
    )
    summary: ClassVar[str] = "answers Magpie instructions; with turns > 1 the instruction model writes follow-ups"
    example: ClassVar[dict[str, Any]] = {"model": "smollm2-greedy", "params": {"max_tokens": 96}}

    model: str = Field(
        min_length=1,
        description=(
            "Named model that answers (the instruction model or another); the backend applies its chat template."
        ),
    )
    turns: int = Field(default=1, ge=1, description="User/assistant turns in each conversation, the first included.")
    instruction_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Model that writes the follow-up instructions (turns > 1); unset: the one that wrote the record's "
            "first instruction (its `magpie.model`)."
        ),
    )
    template: str | None = Field(
        default=None,
        description=(
            "Chat template of the follow-up instructions, as in the `magpie` step; unset: the first "
            "instruction's (`magpie.template_spec`), else `auto`."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=("Sampling parameters of the answers (`max_tokens`, `temperature`, ...), over the model's own."),
    )
    instruction_params: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Sampling parameters of the follow-up instructions; unset: those the first instruction was drawn "
            "with (`magpie.params`). `stop` is not allowed: it comes from the chat template."
        ),
    )
    cleaning: CleaningConfig | None = Field(
        default=None,
        description=(
            "Filters of the follow-up instructions (`min_units`, `max_units`, `languages`, `require_request`, as "
            "in the `magpie` step); unset: the defaults with the first instruction's language filter."
        ),
    )
    input_field: str = Field(
        default="input", min_length=1, description=("Field holding the instruction; receives the last user turn.")
    )
    output_field: str = Field(default="target", min_length=1, description="Field that receives the last answer.")
    keep_reasoning: bool = keep_reasoning_field(
        "`<output_field>_reasoning` (the last answer's) and each assistant message's `reasoning_content` in `messages`"
    )

    @field_validator("params", mode="before")
    @classmethod
    def _no_params_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("cleaning", mode="before")
    @classmethod
    def _cleaning_keys(cls, value: Any) -> Any:
        return _known_cleaning_keys(value)

    @field_validator("params", "instruction_params")
    @classmethod
    def _params_without_stop(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        return _no_stop(value, str(info.field_name))

    def model_names(self) -> list[str]:
        return [self.model] + ([self.instruction_model] if self.instruction_model else [])


class MagpieTagConfig(StepConfig):
    """Tags instructions with the Magpie paper's judge prompts, answered as JSON; ``keep`` filters on the tags.

    The first user turn is judged (from ``messages`` when the record has them, else ``input_field``). Each tag
    writes fields: ``task_category`` -> ``task_category``, ``other_task_categories``; ``input_quality`` ->
    ``input_quality``, ``input_quality_explanation``; ``difficulty`` -> ``difficulty``, ``intent``,
    ``knowledge``. A record that ``keep`` rejects is dropped, counted as ``dropped:<field>=<value>``.
    """

    kind: ClassVar[str] = "magpie_tag"
    positional: ClassVar[tuple[str, ...]] = ("model", "tags", "keep", "prompts", "params", "input_field")
    summary: ClassVar[str] = "the Magpie paper's judges tag task category, input quality and difficulty; keep filters"
    example: ClassVar[dict[str, Any]] = {"model": "smollm2-greedy", "tags": ["task_category", "input_quality"]}

    model: str = Field(min_length=1, description="Named model that judges (it answers in JSON).")
    tags: list[TagName] = Field(
        default_factory=lambda: list(TAGS),
        min_length=1,
        description=("Which judges to ask: any of `task_category`, `input_quality`, `difficulty` (one call each)."),
    )
    keep: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Keep only records whose tag field has one of these values, e.g. `{input_quality: [good, excellent]}` "
            "(a single value may be written as a string); the fields must be ones the tags write."
        ),
    )
    prompts: dict[TagName, str] = Field(
        default_factory=dict,
        description=(
            "A tag's prompt instead of the built-in one, e.g. `{difficulty: my_difficulty.yaml}` (a built-in name "
            "or a YAML prompt file with a schema, relative to the pipeline file)."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters of the judge calls, over the model's own.")
    )
    input_field: str = Field(
        default="input", min_length=1, description=("Field judged when the record has no `messages`.")
    )

    @field_validator("tags", mode="before")
    @classmethod
    def _one_tag_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("keep", mode="before")
    @classmethod
    def _kept_values_are_lists_of_text(cls, value: Any) -> Any:
        # Tags are compared as text: `difficulty: easy` and `{level: [1, 2]}` both work.
        if value is None:
            return {}
        if isinstance(value, dict):
            return {k: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in value.items()}
        return value

    @field_validator("prompts", "params", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _keep_names_tag_fields(self) -> "MagpieTagConfig":
        fields = {field for tag in self.tags for field in TAGS[tag][1].values()}
        bad = sorted(set(self.keep) - fields)
        if bad:
            raise SettingError(
                "keep",
                f"names fields {bad} that the tags {list(self.tags)} do not produce "
                f"(they produce: {', '.join(sorted(fields))})",
            )
        return self

    def model_names(self) -> list[str]:
        return [self.model]
