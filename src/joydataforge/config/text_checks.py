"""The ``text_checks`` setting of generating steps: which sanity rules generated text must pass.

Small models and loose prompts return junk that is still a non-empty string: a fragment of the JSON
envelope (``"}].join(["``), a bare number (``"2"``), a word looping forever, or the prompt's own labels
copied into the answer (``候选回答 4：``). Every step that writes generated text into records runs the same
rules (:mod:`joydataforge.text.sanity`) through this setting; each rule can be turned off and has its
threshold here. What a failing text costs is the step's decision (a failed record, a dropped case, an
eliminated child), always counted as ``text_check:<rule>``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

RULES = ("no_letters", "too_short", "debris", "repetition", "scaffolding")
"""The rules, in the order they are checked; each is also the counter suffix ``text_check:<rule>``."""


class TextChecks(BaseModel):
    """Sanity rules for generated text; ``text_checks: false`` turns them all off, ``{rule: false}`` one."""

    model_config = ConfigDict(extra="forbid")

    no_letters: bool = Field(
        default=True,
        description=(
            'Fail text without a single letter or Han character: numbers and punctuation alone (`"2"`, '
            '`"123"`, `"}{"`) are not a question or an answer (`text_check:no_letters`).'
        ),
    )
    too_short: bool = Field(default=True, description="Fail text shorter than `min_chars` (`text_check:too_short`).")
    min_chars: int = Field(
        default=2,
        ge=1,
        description="Fewest characters a text may have, spaces aside (a Chinese answer of two characters passes).",
    )
    debris: bool = Field(
        default=True,
        description=(
            "Fail code/JSON debris: text that starts with a closing bracket or quote-bracket, ends with an "
            'opening one, or is mostly brackets, quotes and semicolons (`"}].join(["`) (`text_check:debris`).'
        ),
    )
    max_symbol_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            'Share of the characters (spaces aside) that may be `{}[]()<>"\\;=|` and backticks before a text '
            "is debris; code answers with prose around them stay well below it."
        ),
    )
    repetition: bool = Field(
        default=True,
        description=(
            "Fail text in which one word, Han character or run of them (up to 20) repeats back to back more "
            "than `max_repeats` times: a model stuck in a loop (`text_check:repetition`)."
        ),
    )
    max_repeats: int = Field(
        default=4,
        ge=1,
        description="Most back-to-back copies of one unit a text may hold (`哈哈哈哈` is 4 copies of `哈`).",
    )
    scaffolding: bool = Field(
        default=True,
        description=(
            "Fail text that carries the prompt's own scaffolding: the labels the prompt puts before inserted "
            "content (`候选回答 4：`, `用户问题：`, `Candidate 2:`; found in the step's prompt), chat-template "
            "tokens (`<|im_start|>`, `[INST]`) and `### Instruction`-style headings (`text_check:scaffolding`)."
        ),
    )
    scaffolding_phrases: list[str] = Field(
        default_factory=list,
        description="More phrases that must never appear in generated text (matched ignoring case).",
    )

    @model_validator(mode="before")
    @classmethod
    def _all_on_or_off(cls, value: Any) -> Any:
        """``text_checks: false`` turns every rule off; ``true`` is the defaults."""
        if value is False:
            return dict.fromkeys(RULES, False)
        if value is True:
            return {}
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        """In the editor schema too, ``text_checks: false`` (or ``true``) is as valid as a mapping."""
        return {"anyOf": [handler(core_schema), {"type": "boolean"}]}

    def enabled(self) -> list[str]:
        return [rule for rule in RULES if getattr(self, rule)]


def text_checks_field(what: str) -> Any:
    """The ``text_checks`` setting of a step, described for what that step checks and what a failure costs."""
    return Field(
        default_factory=TextChecks,
        description=(
            f"Sanity rules for {what}. A mapping of `no_letters`, `too_short` (`min_chars`: 2), `debris` "
            "(`max_symbol_share`: 0.5), `repetition` (`max_repeats`: 4) and `scaffolding` (the prompt's own labels, "
            "chat-template tokens, plus `scaffolding_phrases`), each on unless set to false; `false` turns them all "
            "off. Failures are counted as `text_check:<rule>` (docs/pipelines.md, Text checks)."
        ),
    )
