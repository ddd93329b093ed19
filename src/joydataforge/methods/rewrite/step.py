"""Case rewrite / augmentation: one record in, several rewritten cases out, each linked to its parent.

The whole record goes to the model as JSON, inserted as a value (``{{ record | to_json }}``), never as
template code; private fields (``_meta``) and the ``id`` are left out so that the prompt, hence the
cache key, depends on content only. The model answers ``{"cases": [{"type": ..., <field>: ...}]}``
against a schema built from the step's settings: ``type`` restricted to the configured rewrite types,
every rewritten field required and non-empty, at most ``max_cases`` cases. A reply that breaks the
schema is re-asked by the gateway (``json_retries``) and, if it never complies, the record fails with
the raw reply in ``failures.jsonl``.

Cases that pass the schema are still checked one by one, because a schema cannot say "different from
the original" or "not the same as the case before": blank, unchanged, duplicate and over-quota cases
are dropped and counted (``dropped:<reason>``). A record left with no usable case is a failure, not an
empty output. Each kept case becomes its own record: the parent's fields, the rewritten ones on top,
``rewrite_type``, ``parent_id`` and an id ``<parent_id>:rw<k>`` (set here, not by the executor, so that
rewriting records that are themselves fan-out children still gives unique, traceable ids).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from ...errors import ConfigError, InputError, StepError
from ...engine.step import Record, StepContext, named_table, source_id_of
from ...engine.prompted import PromptedStep, add_call_meta, call_meta

#: Rewrite types used when the pipeline names none; a mapping from type name to the instruction shown
#: to the model. Users pass their own list (names only) or mapping (names and instructions).
DEFAULT_TYPES: dict[str, str] = {
    "paraphrase": "say the same thing in different words; keep the meaning and every fact",
    "persona": "have a different kind of person ask (age, job, expertise, mood); adapt wording to them",
    "detail": "add concrete, plausible details or constraints that make the case more specific",
    "tone": "change the tone or register (formal/casual, terse/verbose, polite/impatient)",
}


def _type_table(types: Sequence[str] | dict[str, str] | None, where: str) -> dict[str, str]:
    table = named_table(types, DEFAULT_TYPES, where, "types", "instruction")
    if not table or any(not name.strip() for name in table):
        raise ConfigError(f"{where}: types must name at least one non-empty rewrite type")
    return table


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class Rewrite(PromptedStep):
    """Rewrite each record into several cases, one output record per case (YAML kind ``rewrite``).

    Args (the YAML keys): ``model``; ``prompt`` (default ``rewrite`` in the run's language);
    ``fields`` (the fields each case rewrites and must contain; default ``[input]``); ``types`` (list of
    names or mapping name -> instruction; default paraphrase / persona / detail / tone);
    ``per_type`` (cases asked per type, also the per-type cap); ``max_cases`` (cap per record, default
    ``len(types) * per_type``); ``min_cases`` (fewer usable cases fail the record); ``drop_fields``
    (parent fields not copied to the cases, e.g. ``[target]`` when an answer no longer fits the
    rewritten question); ``max_chars`` (length cap per rewritten field, keeps small models' JSON
    inside ``max_tokens``); ``show_fields`` (send only these fields to the model, default the whole
    record: long histories can overflow a small context); ``options``, ``params`` as for ``generate``.
    """

    kind = "rewrite"

    def __init__(self, model: str, prompt: str = "rewrite", *, fields: str | Sequence[str] = ("input",),
                 types: Sequence[str] | dict[str, str] | None = None, per_type: int = 1,
                 max_cases: int | None = None, min_cases: int = 1, drop_fields: Sequence[str] = (),
                 max_chars: int | None = None, show_fields: Sequence[str] | None = None,
                 options: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, name: str | None = None):
        super().__init__(model, prompt, options=options, params=params, name=name)
        where = f"step '{self.name}'"
        self.fields = [fields] if isinstance(fields, str) else list(fields)
        if not self.fields or not all(isinstance(f, str) and f and not f.startswith("_") for f in self.fields):
            raise ConfigError(f"{where}: fields must be one or more record field names (not starting with '_')")
        reserved = {"type", "id", "parent_id", "rewrite_type"} & set(self.fields)
        if reserved:
            raise ConfigError(f"{where}: fields cannot include {sorted(reserved)}")
        self.types = _type_table(types, where)
        if not isinstance(per_type, int) or per_type < 1:
            raise ConfigError(f"{where}: per_type must be a positive integer, not {per_type!r}")
        self.per_type = per_type
        self.max_cases = max_cases if max_cases is not None else len(self.types) * per_type
        if not isinstance(self.max_cases, int) or self.max_cases < 1:
            raise ConfigError(f"{where}: max_cases must be a positive integer, not {max_cases!r}")
        if not isinstance(min_cases, int) or not 1 <= min_cases <= self.max_cases:
            raise ConfigError(f"{where}: min_cases must be an integer in [1, max_cases={self.max_cases}]")
        self.min_cases = min_cases
        self.drop_fields = set(drop_fields)
        if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
            raise ConfigError(f"{where}: max_chars must be a positive integer")
        self.max_chars = max_chars
        self.show_fields = list(show_fields) if show_fields is not None else None
        if self.show_fields is not None and not set(self.fields) <= set(self.show_fields):
            raise ConfigError(f"{where}: show_fields must include the fields to rewrite {self.fields}")
        self.schema = self._build_schema()

    def _build_schema(self) -> dict[str, Any]:
        text: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.max_chars:
            text["maxLength"] = self.max_chars
        case = {"type": "object",
                "properties": {"type": {"type": "string", "enum": list(self.types)},
                               **{f: dict(text) for f in self.fields}},
                "required": ["type", *self.fields]}
        return {"type": "object",
                "properties": {"cases": {"type": "array", "items": case, "minItems": 1, "maxItems": self.max_cases}},
                "required": ["cases"]}

    def required_fields(self) -> set[str]:
        return super().required_fields() | set(self.fields)

    def _render_options(self) -> dict[str, Any]:
        return {**self.options, "types": [{"name": k, "description": v} for k, v in self.types.items()],
                "fields": self.fields, "per_type": self.per_type, "max_cases": self.max_cases,
                "max_chars": self.max_chars}

    async def run(self, record: Record, ctx: StepContext) -> list[Record]:
        for field in self.fields:
            if not isinstance(record.get(field), str):
                problem = "is missing" if field not in record else f"must be text, not {type(record[field]).__name__}"
                raise InputError(f"step '{self.name}': field to rewrite {problem}", None, field)
        view = {k: v for k, v in record.items() if not k.startswith("_") and k != "id"
                and (self.show_fields is None or k in self.show_fields)}
        messages = self.template(ctx).render(view, self._render_options())
        value, completion = await ctx.model(self.model).chat_json(messages, self.schema, **self.params)
        self.counters["calls"] += 1
        cases = value["cases"]
        self.counters["cases_returned"] += len(cases)
        kept = self._usable(record, cases)
        if len(kept) < self.min_cases:
            self.counters["records_too_few_cases"] += 1
            raise StepError(f"step '{self.name}': {len(kept)} usable rewritten case(s) of {len(cases)} returned, "
                            f"min_cases is {self.min_cases}", raw=completion.text)
        parent_id = str(record.get("id") or source_id_of(record))
        meta = call_meta(self.name, self.model, completion)
        outputs = []
        for k, case in enumerate(kept):
            child = {key: copy.deepcopy(v) for key, v in record.items() if key not in self.drop_fields}
            child.update({f: case[f] for f in self.fields})
            child.update(id=f"{parent_id}:rw{k}", parent_id=parent_id, rewrite_type=case["type"])
            add_call_meta(child, dict(meta))
            outputs.append(child)
            self.counters[f"type:{case['type']}"] += 1
        self.counters["cases_out"] += len(outputs)
        return outputs

    def _usable(self, record: Record, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Cases that say something new: not blank, not the original, not a repeat, within the type quota."""
        original = tuple(_norm(record[f]) for f in self.fields)
        seen: set[tuple[str, ...]] = set()
        per_type: dict[str, int] = {}
        kept = []
        for case in cases:
            case = {**case, **{f: case[f].strip() for f in self.fields}}
            key = tuple(_norm(case[f]) for f in self.fields)
            reason = None
            if any(not any(ch.isalnum() for ch in v) for v in key):
                reason = "blank"  # empty, or punctuation only
            elif key == original:
                reason = "unchanged"
            elif key in seen:
                reason = "duplicate"
            elif per_type.get(case["type"], 0) >= self.per_type:
                reason = "over_type_quota"
            if reason:
                self.counters[f"dropped:{reason}"] += 1
                continue
            seen.add(key)
            per_type[case["type"]] = per_type.get(case["type"], 0) + 1
            kept.append(case)
        return kept
