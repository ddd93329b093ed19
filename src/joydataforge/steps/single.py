"""Single-model synthesis (the seed's ``default`` method): one prompt, one model, one reply per record.

``generate`` stores free text in a field; ``label`` asks for JSON that must match the prompt's schema
(e.g. ``{label, reason}``) and stores its keys. Both render a prompt file with the record's fields.
"""
from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError, StepError
from ..models.backends.base import Completion
from ..prompts.renderer import PromptTemplate
from .base import Record, Step, StepContext


def call_meta(step: str, model: str, completion: Completion) -> dict[str, Any]:
    """What each output keeps about the call that made it: enough to trace cost, small enough to ship."""
    return {"step": step, "model": model, "prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens, "cached": completion.cached}


def add_call_meta(record: Record, meta: dict[str, Any]) -> None:
    record.setdefault("_meta", {}).setdefault("calls", []).append(meta)


class PromptedStep(Step):
    """Shared by steps that render one prompt for one model."""

    def __init__(self, model: str, prompt: str, *, options: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, name: str | None = None):
        super().__init__(name)
        self.model = model
        self.prompt_ref = prompt
        self.options = dict(options or {})
        self.params = dict(params or {})
        self._template: PromptTemplate | None = None

    def model_names(self) -> list[str]:
        return [self.model]

    def template(self, ctx: StepContext) -> PromptTemplate:
        if self._template is None:
            self._template = ctx.prompts.get(self.prompt_ref)
        return self._template

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        self.template(ctx)

    def required_fields(self) -> set[str]:
        return set(self._template.required_fields) if self._template else set()


class Generate(PromptedStep):
    """Free text: the reply goes to ``output_field`` (the seed's ``target``)."""

    kind = "generate"

    def __init__(self, model: str, prompt: str = "answer", output_field: str = "target", *,
                 options: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 name: str | None = None):
        super().__init__(model, prompt, options=options, params=params, name=name)
        self.output_field = output_field

    async def run(self, record: Record, ctx: StepContext) -> Record:
        messages = self.template(ctx).render(record, self.options)
        completion = await ctx.model(self.model).chat(messages, **self.params)
        if not completion.text.strip():
            self.counters["empty_replies"] += 1
            raise StepError(f"model '{self.model}' returned an empty reply", raw=completion.text)
        out = dict(record)
        out[self.output_field] = completion.text.strip()
        add_call_meta(out, call_meta(self.name, self.model, completion))
        self.counters["generated"] += 1
        return out


class Label(PromptedStep):
    """Structured: the reply must be JSON matching the prompt's schema.

    With ``options.labels`` the schema's ``label`` property is restricted to that list, so a grammar-
    constrained backend cannot answer anything else and a free one is retried when it does. The JSON's
    keys are stored on the record, under ``output_field`` when given, else at the top level with an
    optional ``prefix`` (the seed stored ``<model>_label`` per voter).
    """

    kind = "label"

    def __init__(self, model: str, prompt: str = "label", *, output_field: str | None = None, prefix: str = "",
                 schema: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, name: str | None = None):
        super().__init__(model, prompt, options=options, params=params, name=name)
        self.output_field = output_field
        self.prefix = prefix
        self.schema_override = schema
        self._schema: dict[str, Any] | None = None

    def schema(self, ctx: StepContext) -> dict[str, Any]:
        if self._schema is None:
            schema = copy.deepcopy(self.schema_override or self.template(ctx).schema)
            if schema is None:
                raise ConfigError(f"step '{self.name}': prompt '{self.prompt_ref}' has no schema; add one or pass schema:")
            labels = self.options.get("labels")
            if labels:
                label_prop = schema.get("properties", {}).get("label")
                if label_prop is None:
                    raise ConfigError(f"step '{self.name}': options.labels given but the schema has no 'label'")
                label_prop["enum"] = list(labels)
            self._schema = schema
        return self._schema

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        self.schema(ctx)

    async def run(self, record: Record, ctx: StepContext) -> Record:
        messages = self.template(ctx).render(record, self.options)
        value, completion = await ctx.model(self.model).chat_json(messages, self.schema(ctx), **self.params)
        out = dict(record)
        if self.output_field:
            out[self.output_field] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                out[f"{self.prefix}{key}"] = item
        else:
            raise StepError(f"step '{self.name}': a non-object reply needs output_field", raw=completion.text)
        add_call_meta(out, call_meta(self.name, self.model, completion))
        if isinstance(value, dict) and "label" in value:
            self.counters[f"label:{value['label']}"] += 1
        return out
