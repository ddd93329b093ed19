"""Single-model synthesis (the seed's ``default`` method): one prompt, one model, one reply per record.

``generate`` stores free text in a field; ``label`` asks for JSON that must match the prompt's schema
(e.g. ``{label, reason}``) and stores its keys. Both render a prompt file with the record's fields.
"""

from __future__ import annotations

import copy
from typing import Any

from ...engine.prompted import PromptedStep, add_call_meta, call_meta, keep_reasoning
from ...engine.step import Record, StepContext
from ...errors import ConfigError, StepError
from ...text.sanity import TextSanity
from .config import GenerateConfig, LabelConfig


class Generate(PromptedStep):
    """Free text: the reply goes to ``output_field`` (the seed's ``target``)."""

    Config = GenerateConfig
    config: GenerateConfig

    def setup(self) -> None:
        super().setup()
        self.output_field = self.config.output_field
        self.sanity = TextSanity(self.config.text_checks)

    async def run(self, record: Record, ctx: StepContext) -> Record:
        template = self.template(ctx)
        messages = template.render(record, self.options)
        completion = await ctx.model(self.model).chat(messages, **self.params)
        if not completion.text.strip():
            self.counters["empty_replies"] += 1
            why = "an empty reply" if not completion.reasoning else "a reasoning trace but no answer"
            raise StepError(f"model '{self.model}' returned {why}", raw=completion.text or completion.reasoning)
        problem = self.sanity.problem(completion.text.strip(), template)
        if problem is not None:
            self.counters[problem.counter] += 1
            raise StepError(f"step '{self.name}': the reply fails the text check {problem}", raw=completion.text)
        out = dict(record)
        out[self.output_field] = completion.text.strip()
        keep_reasoning(out, self.output_field, completion, self.config.keep_reasoning)
        add_call_meta(out, call_meta(self.name, self.model, completion, template))
        self.counters["generated"] += 1
        return out


class Label(PromptedStep):
    """Structured: the reply must be JSON matching the prompt's schema.

    With ``options.labels`` the schema's ``label`` property is restricted to that list, so a grammar-
    constrained backend cannot answer anything else and a free one is retried when it does. The JSON's
    keys are stored on the record, under ``output_field`` when given, else at the top level with an
    optional ``prefix`` (the seed stored ``<model>_label`` per voter).
    """

    Config = LabelConfig
    config: LabelConfig

    def setup(self) -> None:
        super().setup()
        self.output_field = self.config.output_field
        self.prefix = self.config.prefix
        self.schema_override = self.config.schema_
        self._schema: dict[str, Any] | None = None

    def schema(self, ctx: StepContext) -> dict[str, Any]:
        if self._schema is None:
            schema = copy.deepcopy(self.schema_override or self.template(ctx).schema)
            if schema is None:
                raise ConfigError(
                    f"step '{self.name}': prompt '{self.prompt_ref}' has no schema; add one or pass schema:"
                )
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
        template = self.template(ctx)
        messages = template.render(record, self.options)
        value, completion = await ctx.model(self.model).chat_json(messages, self.schema(ctx), **self.params)
        out = dict(record)
        if self.output_field:
            out[self.output_field] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                out[f"{self.prefix}{key}"] = item
        else:
            raise StepError(f"step '{self.name}': a non-object reply needs output_field", raw=completion.text)
        keep_reasoning(out, self.output_field or f"{self.prefix}label", completion, self.config.keep_reasoning)
        add_call_meta(out, call_meta(self.name, self.model, completion, template))
        if isinstance(value, dict) and "label" in value:
            self.counters[f"label:{value['label']}"] += 1
        return out
