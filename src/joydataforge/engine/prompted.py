"""What steps that render a prompt for a model share: the template, and the provenance of each call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config.base import PromptedConfig
from ..records import content_hash, with_reasoning
from .step import Record, Step, StepContext

if TYPE_CHECKING:
    from ..models.backends.base import Completion
    from ..prompts.renderer import PromptTemplate


def prompt_hash(template: "PromptTemplate") -> str:
    """A content hash of a prompt template (system, user, schema, history flag): two runs whose records carry
    the same hash asked with the same words, whatever the prompt's name or file; computed once per template."""
    known = template.__dict__.get("_content_hash")
    if known is None:
        body = {
            "system": template.system,
            "user": template.user,
            "schema": template.schema,
            "include_history": template.include_history,
        }
        known = template.__dict__["_content_hash"] = content_hash(body, 8)
    return known


def call_meta(
    step: str,
    model: str,
    completion: "Completion",
    prompt: "PromptTemplate | tuple[str, str] | None" = None,
) -> dict[str, Any]:
    """What each output keeps about the call that made it (``_meta.calls[]``): enough to trace and reproduce it.

    ``step`` and ``model`` are names from the pipeline and models.yaml; ``model_id`` is what the backend
    answered with (a server's ``model``, the GGUF's label). ``prompt`` is the template rendered for the
    call (or, for prompts that are not template files, a ``(name, text)`` pair): its name and a hash of its
    content. ``params`` are the sampling parameters as sent (the model's, under the step's, and the seed),
    ``sample`` and ``attempt`` which sample and which re-ask of a JSON reply it was; ``parsed`` says how a
    JSON reply that was not strict JSON was read (``lenient``, ``cut``, ``repaired``).
    """
    meta: dict[str, Any] = {"step": step, "model": model, "model_id": completion.model}
    if isinstance(prompt, tuple):
        meta["prompt"], meta["prompt_hash"] = prompt[0], content_hash(prompt[1], 8)
    elif prompt is not None:
        meta["prompt"], meta["prompt_hash"] = prompt.name, prompt_hash(prompt)
    meta.update(
        params=dict(completion.params),
        sample=completion.sample,
        attempt=completion.attempt,
        prompt_tokens=completion.usage.prompt_tokens,
        completion_tokens=completion.usage.completion_tokens,
        cached=completion.cached,
    )
    if completion.parsed:
        meta["parsed"] = completion.parsed
    if completion.reasoning is not None:
        meta["reasoning_tokens"] = completion.usage.reasoning_tokens
        if completion.usage.reasoning_estimated:
            meta["reasoning_tokens_estimated"] = True
    return meta


def reasoning_field(field: str) -> str:
    """Where the trace of the text in ``field`` goes: ``<field>_reasoning``, beside it, one per output field,
    so an export can pair each answer with the trace that led to it."""
    return f"{field}_reasoning"


def keep_reasoning(out: Record, field: str, completion: "Completion", keep: bool) -> None:
    """Store ``completion``'s reasoning trace beside the answer in ``field`` (when it has one and the step's
    ``keep_reasoning`` is on); the answer itself is never touched, so judges, votes and dedup see it alone."""
    if keep and completion.reasoning:
        out[reasoning_field(field)] = completion.reasoning


def judge_view(record: Record) -> Record:
    """The record as a judge that sees reasoning reads it: every text field whose trace is kept beside it
    (``<field>_reasoning``) shown as :func:`with_reasoning` of the two. Judges that do not see reasoning (the
    default) read the record as it is, so the answer alone; dedup and text checks never call this."""
    view = dict(record)
    for name, value in record.items():
        trace = record.get(reasoning_field(name))
        if isinstance(value, str) and isinstance(trace, str) and trace.strip():
            view[name] = with_reasoning(value, trace)
    return view


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
