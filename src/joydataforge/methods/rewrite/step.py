"""Case rewrite / augmentation: one record in, several rewritten cases out, each linked to its parent.

The whole record goes to the model as JSON, inserted as a value (``{{ record | to_json }}``), never as
template code; private fields (``_meta``), the ``id`` and reasoning traces kept beside fields
(``target_reasoning``) are left out so that the prompt, hence the cache key, depends on the case only. The
model answers ``{"cases": [{"type": ..., <field>: ...}]}``
against a schema built from the step's settings: ``type`` restricted to the configured rewrite types,
every rewritten field required and non-empty, at most ``max_cases`` cases. A reply that breaks the
schema is re-asked by the gateway (``json_retries``) and, if it never complies, the record fails with
the raw reply in ``failures.jsonl``.

Cases that pass the schema are still checked one by one, because a schema cannot say "different from
the original" or "not the same as the case before": blank, unchanged, duplicate and over-quota cases
are dropped and counted (``dropped:<reason>``), and so are cases that fail the shared text checks
(``text_checks``: a bare number, JSON debris, a loop, the prompt's labels; ``text_check:<rule>``). A record left with no usable case is a failure, not an
empty output. Each kept case becomes its own record: the parent's fields, the rewritten ones on top,
``rewrite_type``, ``parent_id`` and an id ``<parent_id>:rw<k>`` (set here, not by the executor, so that
rewriting records that are themselves fan-out children still gives unique, traceable ids). A thinking model's
trace of the reply is kept on each case as ``rewrite_reasoning`` (``keep_reasoning``); the checks read the cases
alone.
"""

from __future__ import annotations

import copy
from typing import Any

from ...engine.prompted import PromptedStep, add_call_meta, call_meta, keep_reasoning, reasoning_field
from ...engine.step import Record, StepContext, source_id_of
from ...errors import InputError, StepError
from ...text.sanity import TextSanity
from .config import RewriteConfig

TRACE_FIELD = reasoning_field("rewrite")
"""``rewrite_reasoning``: a thinking model's trace of the reply that wrote a record's cases, kept on each case."""


def _is_trace(name: str, record: Record) -> bool:
    """A reasoning trace kept beside another field (``target_reasoning``): not part of the case the model
    rewrites, and often longer than all of it."""
    return name.endswith("_reasoning") and (name[: -len("_reasoning")] in record or name == TRACE_FIELD)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class Rewrite(PromptedStep):
    """Rewrite each record into several cases, one output record per case (settings: :class:`RewriteConfig`).

    The reply's schema is built once, from the settings; the checks a schema cannot express (not the
    original, not a repeat, within the type quota) run per case in :meth:`_usable`.
    """

    Config = RewriteConfig
    config: RewriteConfig

    def setup(self) -> None:
        super().setup()
        self.fields = list(self.config.fields)
        self.types = self.config.type_table()
        self.per_type = self.config.per_type
        self.max_cases = self.config.case_cap()
        self.min_cases = self.config.min_cases
        self.drop_fields = set(self.config.drop_fields)
        # Not copied to the cases: the dropped fields and their traces, the traces of the fields a case rewrites
        # (they led to the original text) and the parent's own rewrite trace.
        self._not_copied = self.drop_fields | {reasoning_field(f) for f in [*self.drop_fields, *self.fields]}
        self._not_copied.add(TRACE_FIELD)
        self.max_chars = self.config.max_chars
        self.show_fields = list(self.config.show_fields) if self.config.show_fields is not None else None
        self.sanity = TextSanity(self.config.text_checks)
        self.schema = self._build_schema()

    def _build_schema(self) -> dict[str, Any]:
        text: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.max_chars:
            text["maxLength"] = self.max_chars
        case = {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": list(self.types)},
                **{f: dict(text) for f in self.fields},
            },
            "required": ["type", *self.fields],
        }
        return {
            "type": "object",
            "properties": {"cases": {"type": "array", "items": case, "minItems": 1, "maxItems": self.max_cases}},
            "required": ["cases"],
        }

    def required_fields(self) -> set[str]:
        return super().required_fields() | set(self.fields)

    def _render_options(self) -> dict[str, Any]:
        return {
            **self.options,
            "types": [{"name": k, "description": v} for k, v in self.types.items()],
            "fields": self.fields,
            "per_type": self.per_type,
            "max_cases": self.max_cases,
            "max_chars": self.max_chars,
        }

    async def run(self, record: Record, ctx: StepContext) -> list[Record]:
        for field in self.fields:
            if not isinstance(record.get(field), str):
                problem = "is missing" if field not in record else f"must be text, not {type(record[field]).__name__}"
                raise InputError(f"step '{self.name}': field to rewrite {problem}", None, field)
        view = {
            k: v
            for k, v in record.items()
            if not k.startswith("_")
            and k != "id"
            and (self.show_fields is None or k in self.show_fields)
            and not _is_trace(k, record)
        }
        messages = self.template(ctx).render(view, self._render_options())
        value, completion = await ctx.model(self.model).chat_json(messages, self.schema, **self.params)
        self.counters["calls"] += 1
        cases = value["cases"]
        self.counters["cases_returned"] += len(cases)
        kept = self._usable(record, cases, self.template(ctx))
        if len(kept) < self.min_cases:
            self.counters["records_too_few_cases"] += 1
            raise StepError(
                f"step '{self.name}': {len(kept)} usable rewritten case(s) of {len(cases)} returned, "
                f"min_cases is {self.min_cases}",
                raw=completion.text,
            )
        parent_id = str(record.get("id") or source_id_of(record))
        meta = call_meta(self.name, self.model, completion, self.template(ctx))
        outputs = []
        for k, case in enumerate(kept):
            child = {key: copy.deepcopy(v) for key, v in record.items() if key not in self._not_copied}
            child.update({f: case[f] for f in self.fields})
            child.update(id=f"{parent_id}:rw{k}", parent_id=parent_id, rewrite_type=case["type"])
            keep_reasoning(child, "rewrite", completion, self.config.keep_reasoning)
            add_call_meta(child, dict(meta))
            outputs.append(child)
            self.counters[f"type:{case['type']}"] += 1
        self.counters["cases_out"] += len(outputs)
        return outputs

    def _usable(self, record: Record, cases: list[dict[str, Any]], template: Any = None) -> list[dict[str, Any]]:
        """Cases that say something new: not blank, passing the text checks (``text_check:<rule>``), not the
        original, not a repeat, within the type quota."""
        original = tuple(_norm(record[f]) for f in self.fields)
        seen: set[tuple[str, ...]] = set()
        per_type: dict[str, int] = {}
        kept = []
        for case in cases:
            case = {**case, **{f: case[f].strip() for f in self.fields}}
            key = tuple(_norm(case[f]) for f in self.fields)
            reason = None
            problem = self.sanity.first_problem([case[f] for f in self.fields], template)
            if any(not any(ch.isalnum() for ch in v) for v in key):
                reason = "blank"  # empty, or punctuation only
            elif problem is not None:  # counted under the shared name, as every generating step does
                self.counters[problem.counter] += 1
                continue
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
