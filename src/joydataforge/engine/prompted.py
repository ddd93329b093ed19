"""What steps that render a prompt for a model share: the template, and the provenance of each call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config.base import PromptedConfig
from .step import Record, Step, StepContext

if TYPE_CHECKING:
    from ..models.backends.base import Completion
    from ..prompts.renderer import PromptTemplate


def call_meta(step: str, model: str, completion: "Completion") -> dict[str, Any]:
    """What each output keeps about the call that made it: enough to trace cost, small enough to ship."""
    return {
        "step": step,
        "model": model,
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "cached": completion.cached,
    }


def add_call_meta(record: Record, meta: dict[str, Any]) -> None:
    record.setdefault("_meta", {}).setdefault("calls", []).append(meta)


class PromptedStep(Step):
    """Shared by steps that render one prompt for one model (their config is a :class:`PromptedConfig`)."""

    config: PromptedConfig

    def setup(self) -> None:
        self.model = self.config.model
        self.prompt_ref = self.config.prompt
        self.options = dict(self.config.options)
        self.params = dict(self.config.params)
        self._template: PromptTemplate | None = None

    def template(self, ctx: StepContext) -> "PromptTemplate":
        if self._template is None:
            self._template = ctx.prompts.get(self.prompt_ref)
        return self._template

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        self.template(ctx)

    def required_fields(self) -> set[str]:
        return set(self._template.required_fields) if self._template else set()
