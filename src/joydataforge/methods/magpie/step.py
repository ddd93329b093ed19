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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from ...errors import ConfigError, StepError
from .cleaning import Cleaned, CleaningRules, clean_instruction
from .control_tasks import LANGUAGE_SYSTEM, control_system_prompt
from .templates import TABLE, ChatFormat, guess_family, resolve_format, table_format
from ...models.backends.base import Completion
from ...prompts.renderer import PromptTemplate
from ...records import content_hash
from ...engine.step import Record, Step, StepContext, source_id_of
from ...engine.prompted import add_call_meta, call_meta

if TYPE_CHECKING:
    from ...models.gateway import ModelClient

# The paper samples instructions at temperature 1, top-p 1; a user's instruction is short.
DEFAULT_INSTRUCTION_PARAMS = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 128}


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


def _check_params(params: dict[str, Any] | None, where: str) -> dict[str, Any]:
    params = dict(params or {})
    if "stop" in params:
        raise ConfigError(f"{where}: params.stop is set from the chat template's end-of-turn markers; remove it")
    return params


class MagpieInstruction(Step):
    """Write instructions from the model's pre-query template (YAML kind ``magpie``).

    Args (the YAML keys): ``model``; ``template`` (``auto``: derived from the model's own chat template,
    else a table name such as ``llama3.1``, or a tokenizer_config.json / .jinja path); ``system`` (a system
    prompt), ``control_task`` (``math``/``code``/``translation``: a built-in system prompt); ``language``
    (keep only instructions in it, e.g. ``zh``; also picks the control prompt's language and, without other
    system prompt, a steering one where there is one); ``samples`` (instructions per slot);
    ``samples_per_call`` (instructions drawn per request, default 1: each its own call; above 1, a slot's
    samples are drawn in groups of up to that many through ``complete_n``, the server's ``n``, so the
    pre-query is processed once per group; it only matters with ``samples > 1``); ``attempts`` (draws per
    instruction until one passes the filters: with groups, the samples a round dropped are drawn again,
    grouped, in the next round); ``cleaning`` (min_units, max_units, languages, require_request);
    ``on_drop`` (``drop``, or ``keep`` to pass dropped ones on with ``magpie.drop`` set: for inspection);
    ``params`` (temperature, top_p, max_tokens, repeat_penalty...).

    Each output keeps its draw in ``magpie``: ``sample`` (the call's sample index), ``attempt``, ``raw``,
    ``finish_reason``; with ``samples_per_call > 1`` also ``samples_per_call``, ``n`` (samples in that
    request) and ``choice`` (this one's place among them). A group of one is the very call that
    ``samples_per_call: 1`` makes, cache key included.
    """

    kind: ClassVar[str] = "magpie"

    def __init__(self, model: str, template: str = "auto", system: str | None = None,
                 control_task: str | None = None, language: str | None = None, samples: int = 1, attempts: int = 1,
                 cleaning: dict[str, Any] | None = None, on_drop: str = "drop", output_field: str = "input",
                 params: dict[str, Any] | None = None, samples_per_call: int = 1, name: str | None = None):
        super().__init__(name)
        self.model = model
        self.template = template or "auto"
        where = f"step '{self.name}'"
        if system and control_task:
            raise ConfigError(f"{where}: give system or control_task, not both")
        if language is not None and not isinstance(language, str):
            raise ConfigError(f"{where}: language must be one language code such as zh (a list goes in "
                              "cleaning.languages)")
        self.system = system or (control_system_prompt(control_task, language) if control_task else None) \
            or (LANGUAGE_SYSTEM.get(language) if language else None)
        self.control_task = control_task
        self.language = language
        for key, value in (("samples", samples), ("attempts", attempts), ("samples_per_call", samples_per_call)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {key} must be a whole number >= 1, not {value!r}")
        self.samples = samples
        self.attempts = attempts
        self.samples_per_call = samples_per_call
        try:
            rules = CleaningRules.from_dict(cleaning, where=f"{where}: cleaning")
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if language and rules.languages is None:
            rules = CleaningRules(**{**rules.__dict__, "languages": (language,)})
        self.rules = rules
        if on_drop not in ("drop", "keep"):
            raise ConfigError(f"{where}: on_drop must be 'drop' or 'keep', not {on_drop!r}")
        self.on_drop = on_drop
        self.output_field = output_field
        self.params = {**DEFAULT_INSTRUCTION_PARAMS, **_check_params(params, where)}
        self._formats = _Formats()

    def model_names(self) -> list[str]:
        return [self.model]

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        spec = self.template.strip()
        if spec.lower() != "auto":
            if "/" not in spec and not spec.endswith((".json", ".jinja", ".j2")):
                table_format(spec)  # an unknown name fails before the run
            return
        config = ctx.gateway.registry.get(self.model)
        # Where ModelClient.chat_template() finds one: the GGUF's (unless a llama.cpp chat format overrides it),
        # vLLM's tokenizer or chat_template file, the file named for a server.
        own_template = config.backend == "vllm" or (config.backend == "llamacpp") != bool(config.chat_template)
        if not own_template and guess_family(config.chat_template, config.model, config.model_path, config.name) is None:
            raise ConfigError(f"step '{self.name}': cannot tell the chat template of model '{self.model}' "
                              f"({config.backend} backend, model '{config.model}'): set template: to one of "
                              f"{', '.join(TABLE)}, or to the path of its tokenizer_config.json / .jinja file")

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

    async def _draw_each(self, ctx: StepContext, record: Record, client: ModelClient, pre_query: str,
                         stops: list[str], rules: CleaningRules) -> list[_Draw]:
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

    async def _draw_grouped(self, ctx: StepContext, record: Record, client: ModelClient, pre_query: str,
                            stops: list[str], rules: CleaningRules) -> list[_Draw]:
        """Rounds of grouped draws: each round asks for the samples still without an instruction, up to
        ``samples_per_call`` per request (a round's requests at once). A group is named by its first sample
        and the round, so its cache key and seed are stable across runs."""
        draws: dict[int, _Draw] = {}
        pending = list(range(self.samples))
        size = self.samples_per_call
        for attempt in range(self.attempts):
            if not pending:
                break
            groups = [pending[i:i + size] for i in range(0, len(pending), size)]
            samples = [_sample_index(ctx, record, self.name, group[0], attempt) for group in groups]
            replies = await asyncio.gather(*(client.complete_n(pre_query, len(group), sample=sample, stop=stops,
                                                               **self.params)
                                             for group, sample in zip(groups, samples)))
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
                await draw(ctx, record, client, pre_query, list(fmt.stops), rules)):
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
                "model": self.model, "template": fmt.name, "template_spec": self.template,
                "template_origin": fmt.origin, "pre_query": pre_query, "stops": list(fmt.stops),
                "control_task": self.control_task, "language_filter": list(rules.languages or []) or None,
                "params": {**client.config.params, **self.params}, "sample": sample, "attempt": attempt,
                "finish_reason": completion.finish_reason, "raw": completion.text, "edits": cleaned.edits,
            }
            if self.samples_per_call > 1:
                out["magpie"].update(samples_per_call=self.samples_per_call, n=n, choice=choice)
            if not cleaned.kept:
                out["magpie"]["drop"] = cleaned.drop
            else:
                self.counters["instructions"] += 1
            add_call_meta(out, call_meta(self.name, self.model, completion))
            outputs.append(out)
        if self.samples == 1:
            return outputs[0] if outputs else None
        return outputs


class MagpieResponse(Step):
    """Answer Magpie instructions; continue the conversation for ``turns`` turns (YAML kind ``magpie_response``).

    Args: ``model`` (the responder: the instruction model or another); ``turns`` (user/assistant turns in
    all); ``instruction_model`` and ``template`` for follow-up instructions (default: the model and template
    spec that wrote the record's first instruction, from its ``magpie`` field); ``params`` (responses),
    ``instruction_params`` (follow-ups; default: the first instruction's), ``cleaning`` (follow-ups; default:
    the first instruction's language filter). A follow-up that fails cleaning drops the conversation, counted
    as ``followup_dropped:<reason>``. Writes ``target`` (last answer), ``input`` (last user turn), ``history``
    (earlier turns) and ``messages`` (the whole conversation, system prompt included).
    """

    kind: ClassVar[str] = "magpie_response"

    def __init__(self, model: str, turns: int = 1, instruction_model: str | None = None, template: str | None = None,
                 params: dict[str, Any] | None = None, instruction_params: dict[str, Any] | None = None,
                 cleaning: dict[str, Any] | None = None, input_field: str = "input", output_field: str = "target",
                 name: str | None = None):
        super().__init__(name)
        where = f"step '{self.name}'"
        if not isinstance(turns, int) or turns < 1:
            raise ConfigError(f"{where}: turns must be a whole number >= 1, not {turns!r}")
        self.model = model
        self.turns = turns
        self.instruction_model = instruction_model
        self.template = template
        self.params = _check_params(params, where)
        self.instruction_params = _check_params(instruction_params, where) if instruction_params is not None else None
        try:
            self.rules = CleaningRules.from_dict(cleaning, where=f"{where}: cleaning") if cleaning is not None else None
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self.input_field = input_field
        self.output_field = output_field
        self._formats = _Formats()

    def model_names(self) -> list[str]:
        return [self.model] + ([self.instruction_model] if self.instruction_model else [])

    def required_fields(self) -> set[str]:
        return {self.input_field}

    async def _answer(self, ctx: StepContext, messages: list[dict[str, str]], out: Record) -> str:
        completion = await ctx.model(self.model).chat(list(messages), **self.params)
        add_call_meta(out, call_meta(self.name, self.model, completion))
        self.counters["responses"] += 1
        if completion.finish_reason == "length":
            self.counters["responses_truncated"] += 1
        if not completion.text.strip():
            self.counters["empty_responses"] += 1
            raise StepError(f"model '{self.model}' returned an empty reply", raw=completion.text)
        return completion.text.strip()

    async def _follow_up(self, ctx: StepContext, record: Record, messages: list[dict[str, str]], turn: int,
                         out: Record) -> str | None:
        provenance = record.get("magpie") if isinstance(record.get("magpie"), dict) else {}
        model = self.instruction_model or provenance.get("model")
        spec = self.template or provenance.get("template_spec") or "auto"
        if not model:
            raise StepError(f"step '{self.name}': turns > 1 needs instruction_model (the record has no magpie.model)")
        fmt = await self._formats.get(ctx, model, spec)
        params = self.instruction_params if self.instruction_params is not None else \
            {k: v for k, v in (provenance.get("params") or DEFAULT_INSTRUCTION_PARAMS).items() if k != "stop"}
        rules = self.rules or CleaningRules(languages=tuple(provenance["language_filter"])
                                            if provenance.get("language_filter") else None)
        rules = CleaningRules(**{**rules.__dict__, "stops": fmt.stops})
        completion = await ctx.model(model).complete(fmt.prefix(messages), stop=list(fmt.stops),
                                                     sample=_sample_index(ctx, record, self.name, turn), **params)
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
        messages = ([{"role": "system", "content": system}] if isinstance(system, str) and system else [])
        messages.append({"role": "user", "content": instruction})
        out = dict(record)
        messages.append({"role": "assistant", "content": await self._answer(ctx, messages, out)})
        for turn in range(2, self.turns + 1):
            follow_up = await self._follow_up(ctx, record, messages, turn, out)
            if follow_up is None:
                return None
            messages.append({"role": "user", "content": follow_up})
            messages.append({"role": "assistant", "content": await self._answer(ctx, messages, out)})
        dialogue = [m for m in messages if m["role"] != "system"]
        out[self.input_field] = dialogue[-2]["content"]
        out[self.output_field] = dialogue[-1]["content"]
        if len(dialogue) > 2:
            out["history"] = dialogue[:-2]
        out["messages"] = messages
        out["turns"] = len(dialogue) // 2
        return out


# tag -> (prompt name, {reply key: record field})
TAGS: dict[str, tuple[str, dict[str, str]]] = {
    "task_category": ("magpie_task_category", {"primary_tag": "task_category", "other_tags": "other_task_categories"}),
    "input_quality": ("magpie_input_quality", {"input_quality": "input_quality",
                                               "explanation": "input_quality_explanation"}),
    "difficulty": ("magpie_difficulty", {"difficulty": "difficulty", "intent": "intent", "knowledge": "knowledge"}),
}


class MagpieTag(Step):
    """Tag instructions with the Magpie paper's judge prompts (YAML kind ``magpie_tag``).

    Args: ``model`` (the judge); ``tags`` (any of ``task_category``, ``input_quality``, ``difficulty``);
    ``keep`` (e.g. ``{input_quality: [good, excellent]}``: drop the rest, counted as
    ``dropped:<field>=<value>``); ``prompts`` (override a tag's prompt, e.g. ``{difficulty: my.yaml}``);
    ``params``. The first user turn is judged (``messages`` when present, else ``input``).
    """

    kind: ClassVar[str] = "magpie_tag"

    def __init__(self, model: str, tags: list[str] | tuple[str, ...] = ("task_category", "input_quality", "difficulty"),
                 keep: dict[str, list[str]] | None = None, prompts: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, input_field: str = "input", name: str | None = None):
        super().__init__(name)
        where = f"step '{self.name}'"
        tags = [tags] if isinstance(tags, str) else list(tags)
        unknown = [t for t in tags if t not in TAGS]
        if unknown or not tags:
            raise ConfigError(f"{where}: unknown tags {unknown} (known: {', '.join(TAGS)})")
        self.model = model
        self.tags = tags
        fields = {f for tag in tags for f in TAGS[tag][1].values()}
        self.keep = {k: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in (keep or {}).items()}
        bad = sorted(set(self.keep) - fields)
        if bad:
            raise ConfigError(f"{where}: keep names fields {bad} that the tags {tags} do not produce "
                              f"(they produce: {', '.join(sorted(fields))})")
        self.prompt_refs = {tag: (prompts or {}).get(tag, TAGS[tag][0]) for tag in tags}
        self.params = dict(params or {})
        self.input_field = input_field
        self._templates: dict[str, PromptTemplate] = {}

    def model_names(self) -> list[str]:
        return [self.model]

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
            add_call_meta(out, call_meta(self.name, self.model, completion))
            main = next(iter(TAGS[tag][1].values()))
            self.counters[f"{main}:{fields.get(main)}"] += 1
        for field, allowed in self.keep.items():
            if str(out.get(field)) not in allowed:
                self.counters[f"dropped:{field}={out.get(field)}"] += 1
                return None
        return out
