"""Settings of joint synthesis (``joint``): several models draft, one fuses the drafts or picks the best."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError
from ...config.reasoning import keep_reasoning_field
from ...config.text_checks import TextChecks, text_checks_field

ModelName = Annotated[str, Field(min_length=1)]


class JointConfig(StepConfig):
    """Drafts from several models, then one final answer: fused from the drafts (``fuse``) or chosen (``pick``).

    Drafting runs concurrently. A drafter listed more than once asks for a distinct sample each time, so
    one model can stand in for several. Failed drafters stay on the record with their error and raw reply;
    fewer than ``min_drafts`` successful drafts fail the record.

    - ``fuse``: the fuser reads the drafts (``options.drafts`` in its prompt) and writes the final answer:
      free text, or JSON when the draft prompt has a schema (drafts are then JSON values, not texts).
    - ``pick``: the fuser answers ``{best, reason}``, ``best`` the 1-based number of a draft as shown to it.
      An out-of-range number is re-asked and, if it persists, fails the record; it is never clamped.
      Judges favour the candidate shown first, so by default (``pick_order: shuffle``) each record shows
      the drafts in its own order, drawn from the run seed and the record's id; ``rotate`` asks once per
      draft with the order rotated, so every draft is shown in every position once (as ``dpo``'s pairwise
      judging asks both orders), and the draft picked most often wins.

    Output: ``output_field`` (default ``target``) holds the final answer; ``drafts_field`` (default
    ``drafts``) the list ``[{model, sample, text|value}]`` or ``[{model, sample, error, raw}]`` in drafter
    order; ``joint_field`` (default ``joint``) says how the final answer was made: ``{mode, fuser,
    used_drafts}`` and, for ``pick``, ``best`` (index into the drafts list), ``model``, ``reason`` and
    ``order`` (the drafts' indexes in the order shown); with ``rotate`` also ``rotations`` (each order
    shown, with its pick and reason), ``picks`` (picks per draft, by index into the drafts list) and, when
    the most picks are shared, ``tied`` (those drafts; the seeded generator chose among them).
    """

    kind: ClassVar[str] = "joint"
    positional: ClassVar[tuple[str, ...]] = ("drafters", "fuser")
    summary: ClassVar[str] = "several models draft an answer; one model fuses the drafts or picks the best"
    example: ClassVar[dict[str, Any]] = {
        "drafters": ["smollm2-cool", "smollm2-warm", "smollm2-hot"],
        "fuser": "smollm2-judge",
        "draft_prompt": "zh/answer",
        "fuse_prompt": "zh/joint_fuse",
    }

    drafters: list[ModelName] = Field(
        min_length=1,
        description=(
            "Named models (from models.yaml) that draft, in order. Repeat a name for more samples of one model "
            "(its k-th occurrence asks for sample k, a distinct cached sample of the same prompt)."
        ),
    )
    fuser: str = Field(min_length=1, description="Named model that fuses the drafts or picks the best one.")
    mode: Literal["fuse", "pick"] = Field(
        default="fuse",
        description=(
            "`fuse`: the fuser writes the final answer from the drafts; `pick`: it chooses the best draft, "
            "which becomes the final answer unchanged."
        ),
    )
    pick_order: Literal["shuffle", "fixed", "rotate"] = Field(
        default="shuffle",
        description=(
            "Order the drafts are shown in for `pick`: `shuffle` (a seeded order per record, recorded in "
            "`order`), `fixed` (drafter order), or `rotate` (one pick call per draft, each order rotated by one, "
            "so every draft is shown in every position; the draft picked most often wins) to cancel position bias."
        ),
    )
    draft_prompt: str = Field(
        default="answer",
        min_length=1,
        description=(
            "Prompt every drafter answers: a built-in name (`answer`, `zh/answer`) or a YAML prompt file. With a "
            "JSON schema the drafts (and a fused answer) are JSON values."
        ),
    )
    fuse_prompt: str = Field(
        default="joint_fuse",
        min_length=1,
        description=("Prompt of the fuser in `fuse` mode; it reads the drafts as `options.drafts`."),
    )
    pick_prompt: str = Field(
        default="joint_pick",
        min_length=1,
        description=(
            "Prompt of the fuser in `pick` mode; its schema needs a `best` property (the 1-based draft number)."
        ),
    )
    min_drafts: int = Field(
        default=2,
        ge=1,
        strict=True,
        description=(
            "Successful drafts needed, at most the number of drafters (at least 2 for `pick`); fewer fail the record."
        ),
    )
    output_field: str = Field(default="target", min_length=1, description="Field that receives the final answer.")
    drafts_field: str = Field(
        default="drafts",
        min_length=1,
        description=("Field that receives every draft (or the drafter's error and raw reply), in drafter order."),
    )
    joint_field: str = Field(
        default="joint",
        min_length=1,
        description=(
            "Field that receives how the final answer was made: `{mode, fuser, used_drafts}` (+ `best, model, "
            "reason` for `pick`)."
        ),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra values every prompt reads as `options.NAME`; the fuser's prompt also gets `options.drafts`."
        ),
    )
    draft_params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Sampling parameters for the drafters' calls (`temperature`, `max_tokens`, ...), over each model's own."
        ),
    )
    fuse_params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters for the fuser's call, over the model's own.")
    )
    text_checks: TextChecks = text_checks_field(
        "each text draft (one that fails is a failed draft, never shown to the fuser) and the fused answer (one "
        "that fails fails the record)"
    )
    keep_reasoning: bool = keep_reasoning_field(
        "`<output_field>_reasoning` (the picked draft's or the fuser's) and each text draft's `reasoning`"
    )

    @model_validator(mode="after")
    def _enough_drafters(self) -> "JointConfig":
        if self.min_drafts > len(self.drafters):
            raise SettingError(
                "min_drafts", f"must be at most the number of drafters ({len(self.drafters)}) (got {self.min_drafts})"
            )
        if self.mode == "pick" and self.min_drafts < 2:
            raise SettingError("min_drafts", "mode 'pick' needs min_drafts >= 2 (picking from one draft is no choice)")
        return self

    def final_prompt(self) -> str:
        """The fuser's prompt: the one of the chosen mode."""
        return self.fuse_prompt if self.mode == "fuse" else self.pick_prompt

    def model_names(self) -> list[str]:
        return list(dict.fromkeys([*self.drafters, self.fuser]))
