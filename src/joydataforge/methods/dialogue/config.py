"""Settings of the dialogue intent pipeline: ``dialogue_intent`` (label every user turn of a dialogue in one
call) and ``intent_binary`` (a yes/no check of a coarse label by a second model)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ...config.base import PromptedConfig
from ...config.messages import SettingError, shown
from ...config.reasoning import keep_reasoning_field
from ...config.tables import named_table

#: The original's CDSS intent labels with its rules (the ones the built-in ``zh/intent_cdss`` prompt states,
#: in short): what a turn must itself contain to get the label. ``docs/original.md`` explains them;
#: ``tests/test_fidelity_intent_cdss.py`` keeps this table and the prompt saying the same.
CDSS_LABELS: dict[str, str] = {
    "BMI": "这句话本身同时给出了身高和体重；只有其一，或身高体重只在前文出现，都不算。",
    "孕期孕周": "这句话本身给出了末次月经日期，且用户处于怀孕状态；日期只在前文出现或用户未怀孕，都不算。",
    "药品": "这句话是一个问题，问某种药品的用法用量、成分、禁忌或注意事项；陈述句、询问购买/库存/价格的问题不算。",
    "其他": "不属于以上类别的内容，包括寒暄、致谢、回答提问、描述症状。",
}


class LabelSetConfig(PromptedConfig):
    """Settings shared by the steps that work with a set of intent labels."""

    labels: list[str] | dict[str, str | None] | None = Field(
        default=None,
        description=(
            "The intent labels, at least two: a mapping name -> description shown to the model, or a list of "
            "names (a CDSS label among them gets its built-in description, any other none). Default: the seed's "
            "CDSS labels BMI / 孕期孕周 / 药品 / 其他 with their descriptions."
        ),
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _label_set(cls, value: Any) -> Any:
        table = named_table(value, CDSS_LABELS, "labels", "description")
        if len(table) < 2 or any(not name.strip() for name in table):
            raise SettingError("labels", f"must name at least two non-empty labels (got {shown(value)})")
        # A mapping's descriptions are taken as text (an empty one stays empty); a list stays names.
        return table if isinstance(value, dict) else value

    def label_table(self) -> dict[str, str]:
        """The labels as ``name -> description``, in the order given."""
        return named_table(self.labels, CDSS_LABELS, "labels", "description")


class DialogueIntentConfig(LabelSetConfig):
    """Label every user turn of a dialogue in ONE model call; one output record per user turn.

    The input record holds a whole dialogue (``dialog_field``: the seed's newline-joined ``用户:``/``助手:``
    lines, or a list of messages). Each output record is one user turn with ``id`` ``<dialog_id>:<turn>``,
    ``dialog_id``, ``turn_index`` (1-based), ``input`` (the turn's text), ``history`` (the dialogue lines
    before it, back to the k-th last round), ``label`` and ``reason`` (and a thinking model's trace of the
    reply, ``label_reasoning``), plus the ``keep_fields`` of the dialogue record. A reply that does not line up with the user turns is asked again (``retries``); after
    that the dialogue fails with the raw reply, never with guessed labels. The same dialogue arriving in
    several input records is labelled once (later copies are counted as ``duplicate_dialogues``).
    """

    kind: ClassVar[str] = "dialogue_intent"
    summary: ClassVar[str] = "label every user turn of a dialogue in one call; one record per user turn"
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2-dialogue",
        "prompt": "zh/dialogue_intent",
        "dialog_id_field": "diaglog_id",
    }

    prompt: str = Field(
        default="dialogue_intent",
        min_length=1,
        description=(
            "Prompt template: a built-in name (`dialogue_intent` in the run's language, `zh/dialogue_intent`) "
            "or the path of a YAML prompt file, relative to the pipeline file."
        ),
    )
    dialog_field: str = Field(
        default="dialogs",
        min_length=1,
        description=("Field holding the dialogue: `用户:`/`助手:` lines in one string, or a list of messages."),
    )
    dialog_id_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Field holding the dialogue's id (a record without it fails). Default: `dialog_id` or the seed's "
            "`diaglog_id`, whichever the record has, else a hash of the dialogue."
        ),
    )
    history_rounds: int | None = Field(
        default=4,
        ge=0,
        strict=True,
        description=(
            "How many rounds (a user line the assistant answers directly) of history each turn keeps; "
            "null keeps every earlier line. The seed used 4."
        ),
    )
    history_format: Literal["text", "messages"] = Field(
        default="text",
        description=(
            "`text`: the seed's history string, one `用户: ...`/`助手: ...` line per message; "
            "`messages`: a list of `{role, content}`."
        ),
    )
    check_content: bool = Field(
        default=True,
        strict=True,
        description=(
            "Reject a reply whose `content` for a turn is not that turn's text (whitespace and a role prefix aside)."
        ),
    )
    pin_turns: bool = Field(
        default=True,
        strict=True,
        description=(
            "Pin each reply item's index and content in the JSON schema, so a grammar-constrained backend cannot "
            "misalign turns; false leaves them free and checks alignment after parsing."
        ),
    )
    retries: int = Field(
        default=2,
        ge=0,
        strict=True,
        description=(
            "New samples asked after a reply that does not line up with the user turns (0: one attempt only)."
        ),
    )
    reason_max_chars: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=("Longest `reason` the schema allows, in characters; null: no limit."),
    )
    keep_fields: list[str] = Field(
        default_factory=list,
        description=("Fields of the dialogue record copied onto every turn record (e.g. `[time]`)."),
    )
    keep_reasoning: bool = keep_reasoning_field(
        "`label_reasoning` of each turn record (the trace of the one reply that labelled the whole dialogue; the "
        "labels are read from the answer alone)"
    )


class IntentBinaryConfig(LabelSetConfig):
    """The fine pass of coarse-then-fine labelling: does this turn really belong to its coarse label?

    Meant for a sampled set (e.g. the test split of ``joyforge dialogue-split``): one yes/no call per
    record whose ``label_field`` is in ``check_labels``; other records pass unchanged (counted as
    ``skipped``). A checked record gets ``binary_match`` (true/false) and ``binary_reason``; a "no" then
    follows ``on_reject``. ``label_prompts`` gives a label its own check: the original's re-checks are
    the built-in presets ``zh/intent_binary_pregnancy`` (孕期孕周: a last-menstrual-period date in the turn
    itself, in four steps) and ``zh/intent_binary_drug`` (药品: the medicine must be named, in the turn or
    the dialogue it refers to); English versions ``en/intent_binary_pregnancy``, ``en/intent_binary_drug``.
    """

    kind: ClassVar[str] = "intent_binary"
    summary: ClassVar[str] = "a second model checks each record's coarse label with a yes/no question"
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2-judge",
        "prompt": "zh/dialogue_intent_binary",
        "on_reject": "relabel",
    }

    prompt: str = Field(
        default="dialogue_intent_binary",
        min_length=1,
        description=(
            "Prompt template: a built-in name (`dialogue_intent_binary` in the run's language, "
            "`zh/dialogue_intent_binary`) or the path of a YAML prompt file, relative to the pipeline file."
        ),
    )
    labels: list[str] | dict[str, str | None] | None = Field(
        default=None,
        description=(
            "Label descriptions shown to the model with the label it checks: a list of names or a mapping "
            "name -> description (at least two). Default: the seed's CDSS labels with their descriptions."
        ),
    )
    label_field: str = Field(default="label", min_length=1, description="Field holding the coarse label.")
    check_labels: list[str] | None = Field(
        default=None,
        description=("Only records with one of these coarse labels are checked; null checks every record."),
    )
    label_prompts: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "A prompt per coarse label, used instead of `prompt` for records with that label: built-in names or "
            "YAML files, e.g. the original's re-checks `{孕期孕周: zh/intent_binary_pregnancy, 药品: "
            "zh/intent_binary_drug}`. Every label named must be one `check_labels` lets through."
        ),
    )
    on_reject: Literal["tag", "drop", "relabel"] = Field(
        default="tag",
        description=(
            'What a "no" does: `tag` keeps the record (binary_match: false), `drop` drops it, `relabel` sets the '
            "label to `fallback_label` and keeps the coarse one in `coarse_label`."
        ),
    )
    fallback_label: str = Field(
        default="其他", description=("The label a rejected record gets with `on_reject: relabel`.")
    )

    @field_validator("label_prompts")
    @classmethod
    def _named_prompts(cls, value: dict[str, str]) -> dict[str, str]:
        for label, prompt in value.items():
            if not label.strip() or not isinstance(prompt, str) or not prompt.strip():
                raise SettingError(
                    "label_prompts", f"must map each label to a prompt name or file (got {shown({label: prompt})})"
                )
        return value

    @model_validator(mode="after")
    def _prompts_for_checked_labels(self) -> "IntentBinaryConfig":
        if self.check_labels is not None:
            unused = [label for label in self.label_prompts if label not in self.check_labels]
            if unused:
                raise SettingError(
                    "label_prompts",
                    f"names labels that check_labels never lets through: {unused} (check_labels: {self.check_labels})",
                )
        return self

    def prompt_refs(self) -> list[str]:
        """Every prompt this step may render: the default one, then each label's own."""
        return list(dict.fromkeys([self.prompt, *self.label_prompts.values()]))
