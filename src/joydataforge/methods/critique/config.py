"""Settings of critique and revise (``critique_revise``): one model writes, another critiques, for a few rounds."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from ...config.base import StepConfig
from ...config.reasoning import judge_sees_reasoning_field, keep_reasoning_field
from ...config.text_checks import TextChecks, text_checks_field


class CritiqueReviseConfig(StepConfig):
    """One model drafts (or the answer comes from ``answer_field``), another critiques it, the first revises.

    Each round the critic sees the current answer and replies ``{issues: [...], verdict: approve|revise,
    score: 1-10}``. The loop stops early when the critic approves; otherwise the author revises with the
    issues in hand. After ``rounds`` critiques without approval the last revision is the answer, marked
    ``approved: false`` (it was never critiqued); ``on_not_approved`` can drop or fail it instead.

    Output: ``output_field`` (default ``target``) holds the final answer; ``rounds_field`` (default
    ``critique_rounds``) every round ``[{round, answer, critique: {issues, verdict, score}, approved,
    revision}]`` (``revision`` null on the approving round), so the path from the first draft to the final
    answer can be audited or turned into preference pairs; ``summary_field`` (default ``critique``) a
    summary ``{approved, rounds, stopped: approved|max_rounds, author, critic}``.
    """

    kind: ClassVar[str] = "critique_revise"
    positional: ClassVar[tuple[str, ...]] = ("model", "critic")
    summary: ClassVar[str] = "one model answers, another critiques, the first revises, until approved or out of rounds"
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2-warm",
        "critic": "smollm2-judge",
        "rounds": 2,
        "draft_prompt": "zh/answer",
        "critique_prompt": "zh/critique",
        "revise_prompt": "zh/revise",
    }

    model: str = Field(min_length=1, description="Named model (from models.yaml), the author: drafts and revises.")
    critic: str = Field(min_length=1, description="Named model that critiques each answer.")
    rounds: int = Field(
        default=2,
        ge=1,
        strict=True,
        description=("Most critiques per record; each one not approving is followed by a revision."),
    )
    draft_prompt: str = Field(
        default="answer",
        min_length=1,
        description=(
            "Prompt of the first draft: a built-in name (`answer`, `zh/answer`) or a YAML prompt file. Not used "
            "with `answer_field`."
        ),
    )
    critique_prompt: str = Field(
        default="critique",
        min_length=1,
        description=(
            "Prompt of the critic, with a JSON schema that has `issues` and `verdict` (and usually `score`); it "
            "reads the answer as `options.answer` and the round number as `options.round`."
        ),
    )
    revise_prompt: str = Field(
        default="revise",
        min_length=1,
        description=("Prompt of the revision; it reads `options.answer`, `options.critique` and `options.round`."),
    )
    answer_field: str | None = Field(
        default=None,
        min_length=1,
        description=("Critique the answer already in this field instead of drafting one (a record without it fails)."),
    )
    approve_score: int | None = Field(
        default=None,
        ge=1,
        le=10,
        strict=True,
        description=(
            "When set, the critic's score decides instead of its verdict: a score (1-10) at least this high "
            'approves. Small critics often say "approve" to answers they score low.'
        ),
    )
    on_not_approved: Literal["keep", "drop", "fail"] = Field(
        default="keep",
        description=(
            "An answer still not approved after `rounds`: `keep` it (marked `approved: false`), `drop` it "
            "(counted), or `fail` it (failures.jsonl)."
        ),
    )
    output_field: str = Field(default="target", min_length=1, description="Field that receives the final answer.")
    rounds_field: str = Field(
        default="critique_rounds",
        min_length=1,
        description=("Field that receives every round: answer, critique, approval and revision."),
    )
    summary_field: str = Field(
        default="critique",
        min_length=1,
        description=("Field that receives `{approved, rounds, stopped, author, critic}`."),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra values every prompt reads as `options.NAME` (the step adds `answer`, `critique`, `round`)."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=("Sampling parameters for the author's calls (draft and revisions), over the model's own."),
    )
    critic_params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters for the critic's calls, over the model's own.")
    )
    text_checks: TextChecks = text_checks_field(
        "the author's draft and each revision; one that fails fails the record, kept in failures.jsonl"
    )
    keep_reasoning: bool = keep_reasoning_field("`<output_field>_reasoning` (the trace of the final draft or revision)")
    judge_sees_reasoning: bool = judge_sees_reasoning_field(
        "the critic the answer it critiques (as `options.answer`; an `answer_field`'s trace is "
        "`<answer_field>_reasoning`)"
    )

    def model_names(self) -> list[str]:
        return list(dict.fromkeys([self.model, self.critic]))
