"""Magpie (Xu et al. 2024): instructions written by an aligned model given only its pre-query template.

Three steps, meant to run with dedup between the first two (instructions are cheap, responses are not)::

    slots --magpie--> instructions --minhash_dedup--> --magpie_response--> conversations --magpie_tag-->

- ``magpie``: one input record is one *slot* (its id seeds the sample, so re-runs hit the cache and a
  resumed run skips finished slots). The model's pre-query template (derived from its own chat template,
  see :mod:`joydataforge.methods.magpie.templates`) goes through ``complete()``, the raw text is cleaned and
  filtered (:mod:`joydataforge.methods.magpie.cleaning`), and the instruction lands in ``input``. A dropped
  instruction is counted by reason (``dropped:<reason>``) and, with ``attempts > 1``, drawn again.
- ``magpie_response``: answers through ``chat()`` (the backend applies the chat template) with the same
  or another model; for ``turns > 1`` the instruction model writes each follow-up from the conversation
  so far plus the template's user-turn prefix.
- ``magpie_tag``: the Magpie paper's judge prompts (task category, input quality, difficulty) through
  ``chat_json``; the tags become fields, and ``keep`` filters on them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ...engine.prompted import add_call_meta, call_meta, reasoning_field
from ...engine.step import Record, Step, StepContext, source_id_of
from ...errors import ConfigError, StepError
from ...models.backends.base import Completion
from ...prompts.renderer import PromptTemplate
from ...records import content_hash
from .cleaning import Cleaned, CleaningRules, clean_instruction
from .config import DEFAULT_INSTRUCTION_PARAMS, TAGS, MagpieInstructionConfig, MagpieResponseConfig, MagpieTagConfig
from .control_tasks import LANGUAGE_SYSTEM, control_system_prompt
from .templates import TABLE, ChatFormat, guess_family, resolve_format, table_format

if TYPE_CHECKING:
    from ...models.gateway import ModelClient


class _Formats:
    """Chat formats by (model, template spec), resolved once per step: ``auto`` may load the model."""

    def __init__(self) -> None:
        self._formats: dict[tuple[str, str], ChatFormat] = {}
        self._lock = asyncio.Lock()

    async def get(self, ctx: StepContext, model: str, spec: str) -> ChatFormat:
        key = (model, spec)
        if key not in self._formats:
            async with self._lock:
                if key not in self._formats:
                    client = ctx.model(model)
                    source = await client.chat_template() if spec.strip().lower() == "auto" else None
                    config = client.config
                    hints = [config.chat_template, config.model, config.model_path, config.name]
                    self._formats[key] = resolve_format(spec, source, hints, base_dir=_base_dir(ctx, spec))
        return self._formats[key]


def _base_dir(ctx: StepContext, spec: str) -> Path:
    """Relative template paths are relative to the pipeline file, like prompt files."""
    for base in getattr(ctx.prompts, "search_paths", []):
        if (Path(base) / spec).is_file():
            return Path(base)
    return Path(".")


def _sample_index(ctx: StepContext, record: Record, step: str, *parts: Any) -> int:
    """A sample index per slot (and per draw): distinct cache keys and backend seeds, stable across runs,
    and different for a different ``run.seed``."""
    base = ctx.rng(source_id_of(record), step).getrandbits(48)
    return int(content_hash([base, *parts], 6), 16)


class _Draw(NamedTuple):
    """What became of one instruction sample: its last draw (the kept one, or the last one dropped)."""

    sample: int  # the gateway call's sample index
    attempt: int
    completion: Completion
    cleaned: Cleaned
    choice: int = 0  # its place among the request's samples
    n: int = 1  # samples in that request


def _system_prompt(config: MagpieInstructionConfig) -> str | None:
    """The user's system prompt, else the control task's, else the language's steering one (where there is one)."""
    if config.system:
        return config.system
    if config.control_task:
        return control_system_prompt(config.control_task, config.language)
    if config.language:
        return LANGUAGE_SYSTEM.get(config.language)
    return None


class MagpieInstruction(Step):
    """Write instructions from the model's pre-query template (YAML kind ``magpie``).

    The pre-query (:meth:`ChatFormat.pre_query`, with the system prompt) goes through ``complete()`` with the
    template's end-of-turn markers as stop strings; the raw text is cleaned and filtered
    (:func:`~joydataforge.methods.magpie.cleaning.clean_instruction`). With ``samples_per_call: 1`` each draw
    is its own call and the samples of a slot draw at once; above 1 the samples still without an instruction
    are drawn in rounds of grouped requests (``complete_n``). A group of one is the very call that
    ``samples_per_call: 1`` makes, cache key included. Sample indexes (hence seeds and cache keys) depend on
    the run seed, the step, the slot, the sample and the attempt only, never on the order replies come in.
    """

    Config = MagpieInstructionConfig
    config: MagpieInstructionConfig

    def setup(self) -> None:
        config = self.config
        self.model = config.model
        self.template = config.template
        self.control_task = config.control_task
        self.language = config.language
        self.system = _system_prompt(config)
        self.samples = config.samples
        self.attempts = config.attempts
        self.samples_per_call = config.samples_per_call
        rules = CleaningRules.from_config(config.cleaning) if config.cleaning is not None else CleaningRules()
        if config.language and rules.languages is None:
            rules = dataclasses.replace(rules, languages=(config.language,))
        self.rules = rules
        self.on_drop = config.on_drop
        self.output_field = config.output_field
        self.params = {**DEFAULT_INSTRUCTION_PARAMS, **config.params}
        self._formats = _Formats()

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        config = ctx.gateway.registry.get(self.model)
        capabilities = config.capabilities
        if not capabilities.raw_completion:
            raise ConfigError(
                f"step '{self.name}': model '{self.model}' ({config.backend} backend) cannot continue "
                "raw text, which writing instructions from a pre-query template needs"
            )
        spec = self.template.strip()
        if spec.lower() != "auto":
            if "/" not in spec and not spec.endswith((".json", ".jinja", ".j2")):
                table_format(spec)  # an unknown name fails before the run
            return
        # Where ModelClient.chat_template() finds one: the model's own (a GGUF's unless a llama.cpp chat format
        # overrides it, a vLLM tokenizer's), or the template file its models.yaml entry names.
        known = capabilities.own_chat_template or (capabilities.chat_template_file and bool(config.chat_template))
        if not known and guess_family(config.chat_template, config.model, config.model_path, config.name) is None:
            raise ConfigError(
                f"step '{self.name}': cannot tell the chat template of model '{self.model}' "
                f"({config.backend} backend, model '{config.model}'): set template: to one of "
                f"{', '.join(TABLE)}, or to the path of its tokenizer_config.json / .jinja file"
            )

    async def chat_format(self, ctx: StepContext) -> ChatFormat:
        return await self._formats.get(ctx, self.model, self.template)

    def _clean(self, completion: Completion, rules: CleaningRules) -> Cleaned:
        self.counters["calls"] += 1
        cleaned = clean_instruction(completion.text, completion.finish_reason, rules)
        for edit in cleaned.edits:
            self.counters[f"edited:{edit}"] += 1
        if not cleaned.kept:
            self.counters[f"dropped:{cleaned.drop}"] += 1
        return cleaned

    async def _draw_each(
        self,
        ctx: StepContext,
        record: Record,
        client: ModelClient,
        pre_query: str,
        stops: list[str],
        rules: CleaningRules,
    ) -> list[_Draw]:
        """One call per draw: each sample ``k`` tries until it passes or its ``attempts`` are spent. The
        samples of a slot draw at the same time (a server answers them in parallel); their sample indexes,
        hence their seeds and cache keys, do not depend on the order the replies come back in."""

        async def one(k: int) -> _Draw:
            for attempt in range(self.attempts):
                sample = _sample_index(ctx, record, self.name, k, attempt)
                completion = await client.complete(pre_query, sample=sample, stop=stops, **self.params)
                cleaned = self._clean(completion, rules)
                if cleaned.kept:
                    break
            return _Draw(sample, attempt, completion, cleaned)

        return list(await asyncio.gather(*(one(k) for k in range(self.samples))))

    async def _draw_grouped(
        self,
        ctx: StepContext,
        record: Record,
        client: ModelClient,
        pre_query: str,
        stops: list[str],
        rules: CleaningRules,
    ) -> list[_Draw]:
        """Rounds of grouped draws: each round asks for the samples still without an instruction, up to
        ``samples_per_call`` per request (a round's requests at once). A group is named by its first sample
        and the round, so its cache key and seed are stable across runs."""
        draws: dict[int, _Draw] = {}
        pending = list(range(self.samples))
        size = self.samples_per_call
        for attempt in range(self.attempts):
            if not pending:
                break
            groups = [pending[i : i + size] for i in range(0, len(pending), size)]
            samples = [_sample_index(ctx, record, self.name, group[0], attempt) for group in groups]
            replies = await asyncio.gather(
                *(
                    client.complete_n(pre_query, len(group), sample=sample, stop=stops, **self.params)
                    for group, sample in zip(groups, samples)
                )
            )
            pending = []
            for group, sample, completions in zip(groups, samples, replies):
                self.counters["requests"] += 1
                for choice, (k, completion) in enumerate(zip(group, completions)):
                    cleaned = self._clean(completion, rules)
                    draws[k] = _Draw(sample, attempt, completion, cleaned, choice, len(group))
                    if not cleaned.kept:
                        pending.append(k)
        return [draws[k] for k in range(self.samples)]

    async def run(self, record: Record, ctx: StepContext) -> Record | list[Record] | None:
        fmt = await self.chat_format(ctx)
        pre_query = fmt.pre_query(self.system)
        rules = CleaningRules(**{**self.rules.__dict__, "stops": fmt.stops})
        client = ctx.model(self.model)
        draw = self._draw_each if self.samples_per_call == 1 else self._draw_grouped
        outputs: list[Record] = []
        for k, (sample, attempt, completion, cleaned, choice, n) in enumerate(
            await draw(ctx, record, client, pre_query, list(fmt.stops), rules)
        ):
            if not cleaned.kept and self.on_drop == "drop":
                continue
            out = dict(record)
            if "_meta" in record:  # its own call list: the samples of a slot share nothing else
                out["_meta"] = {**record["_meta"], "calls": list(record["_meta"].get("calls", []))}
            if self.samples > 1:
                out["id"] = f"{source_id_of(record)}:{k}"
            out[self.output_field] = cleaned.text
            if self.system:
                out["system"] = self.system
            out["language"] = cleaned.language
            out["magpie"] = {
                "model": self.model,
                "template": fmt.name,
                "template_spec": self.template,
                "template_origin": fmt.origin,
                "pre_query": pre_query,
                "stops": list(fmt.stops),
                "control_task": self.control_task,
                "language_filter": list(rules.languages or []) or None,
                "params": {**client.config.params, **self.params},
                "sample": sample,
                "attempt": attempt,
                "finish_reason": completion.finish_reason,
                "raw": completion.text,
                "edits": cleaned.edits,
            }
            if self.samples_per_call > 1:
                out["magpie"].update(samples_per_call=self.samples_per_call, n=n, choice=choice)
            if not cleaned.kept:
                out["magpie"]["drop"] = cleaned.drop
            else:
                self.counters["instructions"] += 1
            # The pre-query template is this call's prompt: named by its chat format, hashed by its text.
            add_call_meta(out, call_meta(self.name, self.model, completion, (f"pre_query:{fmt.name}", pre_query)))
            outputs.append(out)
        if self.samples == 1:
            return outputs[0] if outputs else None
        return outputs


class MagpieResponse(Step):
    """Answer Magpie instructions; continue the conversation for ``turns`` turns (YAML kind ``magpie_response``).

    Answers go through ``chat()`` (the backend applies the chat template). A follow-up instruction is the
    instruction model's ``complete()`` of the conversation so far plus its template's user-turn prefix
    (:meth:`ChatFormat.prefix`), cleaned like a first instruction; model, template spec, sampling parameters
    and language filter default to those recorded in the record's ``magpie`` field.
    """

    Config = MagpieResponseConfig
    config: MagpieResponseConfig

    def setup(self) -> None:
        config = self.config
        self.model = config.model
        self.turns = config.turns
        self.instruction_model = config.instruction_model
        self.template = config.template
        self.params = dict(config.params)
        self.instruction_params = dict(config.instruction_params) if config.instruction_params is not None else None
        self.rules = CleaningRules.from_config(config.cleaning) if config.cleaning is not None else None
        self.input_field = config.input_field
        self.output_field = config.output_field
        self._formats = _Formats()

    def required_fields(self) -> set[str]:
        return {self.input_field}

    async def _answer(self, ctx: StepContext, messages: list[dict[str, str]], out: Record) -> tuple[str, str | None]:
        """The answer to the conversation so far, and the model's reasoning trace when it gave one."""
        completion = await ctx.model(self.model).chat(list(messages), **self.params)
        add_call_meta(out, call_meta(self.name, self.model, completion))
        self.counters["responses"] += 1
        if completion.finish_reason == "length":
            self.counters["responses_truncated"] += 1
        if not completion.text.strip():
            self.counters["empty_responses"] += 1
            why = "an empty reply" if not completion.reasoning else "a reasoning trace but no answer"
            raise StepError(f"model '{self.model}' returned {why}", raw=completion.text or completion.reasoning)
        return completion.text.strip(), completion.reasoning

    async def _follow_up(
        self, ctx: StepContext, record: Record, messages: list[dict[str, str]], turn: int, out: Record
    ) -> str | None:
        provenance = record.get("magpie") if isinstance(record.get("magpie"), dict) else {}
        model = self.instruction_model or provenance.get("model")
        spec = self.template or provenance.get("template_spec") or "auto"
        if not model:
            raise StepError(f"step '{self.name}': turns > 1 needs instruction_model (the record has no magpie.model)")
        fmt = await self._formats.get(ctx, model, spec)
        params = (
            self.instruction_params
            if self.instruction_params is not None
            else {k: v for k, v in (provenance.get("params") or DEFAULT_INSTRUCTION_PARAMS).items() if k != "stop"}
        )
        rules = self.rules or CleaningRules(
            languages=tuple(provenance["language_filter"]) if provenance.get("language_filter") else None
        )
        rules = CleaningRules(**{**rules.__dict__, "stops": fmt.stops})
        completion = await ctx.model(model).complete(
            fmt.prefix(messages), stop=list(fmt.stops), sample=_sample_index(ctx, record, self.name, turn), **params
        )
        add_call_meta(out, call_meta(self.name, model, completion))
        cleaned = clean_instruction(completion.text, completion.finish_reason, rules)
        if not cleaned.kept:
            self.counters[f"followup_dropped:{cleaned.drop}"] += 1
            return None
        self.counters["followups"] += 1
        return cleaned.text

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        instruction = record.get(self.input_field)
        if not isinstance(instruction, str) or not instruction.strip():
            raise StepError(f"step '{self.name}': field '{self.input_field}' is missing or empty")
        system = record.get("system")
        messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        messages.append({"role": "user", "content": instruction})
        out = dict(record)
        # The conversation as the models read it (answers alone); each answer's trace by its message's place.
        traces: dict[int, str] = {}

        async def answer() -> None:
            text, trace = await self._answer(ctx, messages, out)
            if trace and self.config.keep_reasoning:
                traces[len(messages)] = trace
            messages.append({"role": "assistant", "content": text})

        await answer()
        for turn in range(2, self.turns + 1):
            follow_up = await self._follow_up(ctx, record, messages, turn, out)
            if follow_up is None:
                return None
            messages.append({"role": "user", "content": follow_up})
            await answer()
        dialogue = [m for m in messages if m["role"] != "system"]
        out[self.input_field] = dialogue[-2]["content"]
        out[self.output_field] = dialogue[-1]["content"]
        out.pop(reasoning_field(self.output_field), None)  # an earlier step's trace is not this answer's
        if len(messages) - 1 in traces:
            out[reasoning_field(self.output_field)] = traces[len(messages) - 1]
        if len(dialogue) > 2:
            out["history"] = dialogue[:-2]
        out["messages"] = [{**m, "reasoning_content": traces[k]} if k in traces else m for k, m in enumerate(messages)]
        out["turns"] = len(dialogue) // 2
        return out


class MagpieTag(Step):
    """Tag instructions with the Magpie paper's judge prompts (YAML kind ``magpie_tag``).

    The tags are asked at once, each through ``chat_json`` with its prompt's schema; the reply's keys become
    record fields (:data:`~joydataforge.methods.magpie.config.TAGS`), then ``keep`` filters on them.
    """

    Config = MagpieTagConfig
    config: MagpieTagConfig

    def setup(self) -> None:
        config = self.config
        self.model = config.model
        self.tags = list(config.tags)
        self.keep = {field: list(values) for field, values in config.keep.items()}
        self.prompt_refs = {tag: config.prompts.get(tag, TAGS[tag][0]) for tag in self.tags}
        self.params = dict(config.params)
        self.input_field = config.input_field
        self._templates: dict[str, PromptTemplate] = {}

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        for tag in self.tags:
            template = self._template(ctx, tag)
            if template.schema is None:
                raise ConfigError(f"step '{self.name}': prompt '{self.prompt_refs[tag]}' has no schema")

    def _template(self, ctx: StepContext, tag: str) -> PromptTemplate:
        if tag not in self._templates:
            self._templates[tag] = ctx.prompts.get(self.prompt_refs[tag])
        return self._templates[tag]

    def _instruction(self, record: Record) -> str:
        messages = record.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict) and message.get("role") == "user":
                    return str(message.get("content") or "")
        value = record.get(self.input_field)
        if not isinstance(value, str) or not value.strip():
            raise StepError(f"step '{self.name}': field '{self.input_field}' is missing or empty")
        return value

    async def _tag(self, ctx: StepContext, tag: str, instruction: str) -> tuple[dict[str, Any], Any]:
        template = self._template(ctx, tag)
        messages = template.render({"input": instruction})
        value, completion = await ctx.model(self.model).chat_json(messages, template.schema, **self.params)
        return {field: value.get(key) for key, field in TAGS[tag][1].items()}, completion

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        instruction = self._instruction(record)
        results = await asyncio.gather(*(self._tag(ctx, tag, instruction) for tag in self.tags))
        out = dict(record)
        for tag, (fields, completion) in zip(self.tags, results):
            out.update(fields)
            add_call_meta(out, call_meta(self.name, self.model, completion, self._template(ctx, tag)))
            main = next(iter(TAGS[tag][1].values()))
            self.counters[f"{main}:{fields.get(main)}"] += 1
        for field, allowed in self.keep.items():
            if str(out.get(field)) not in allowed:
                self.counters[f"dropped:{field}={out.get(field)}"] += 1
                return None
        return out
