"""Generation without seed data: topics in, N generated records per topic out (YAML kind ``seedless``).

How it plugs into a pipeline: the *input* is the topic list itself, one record per topic, in any format
the readers take (JSONL, JSON, CSV, XLSX, Parquet)::

    {"id": "cooking", "topic": "home cooking", "subtopics": ["baking", "knife skills"], "n": 4}

``subtopics`` (a list, or one string split on ``|`` / ``;``), ``personas``, ``difficulties`` and ``n``
are optional per topic; missing ones come from the step's settings. The step fans out: each topic
becomes up to ``n_per_topic`` records, with ids ``<topic id>:g<k>``, so resume, failures and provenance
work per topic like for any other record.

Diversity controls: every call draws its own sub-topics, persona and difficulty from a generator seeded
by the run seed, the step and the topic (``ctx.rng``), so two runs ask the same questions, and calls
with the same controls still get distinct samples (``sample=i``). Each record keeps the controls it was
made with (``subtopics``, ``persona``, ``difficulty``), which lets a later report measure coverage.

Near-duplicates: what comes back is MinHash-deduplicated (the ``evaluate`` package's ``MinHasher`` and
``LSHIndex``, plus an exact check for texts too short to shingle) *before* it is kept, and the step tops
up with extra calls (up to ``max_calls`` per topic) until the topic has its N records. Scope:

- ``dedup_scope: topic`` (default): within each topic's records. Deterministic and resume-safe, since a
  topic's records are produced by one ``run`` call from seeded draws.
- ``dedup_scope: run``: also against every record this step object has kept in this process, via one
  shared index. Checking and inserting involve no ``await``, so under asyncio they are atomic and no
  lock is needed; but "first" then means *first to finish*, which depends on concurrency, and records
  kept before a resume are not in the index. For an exact, order-stable cross-topic pass, run
  ``minhash_dedup`` (or the batch ``deduplicate``) over the output afterwards: a sequential dedup step
  cannot follow this fan-out step in the same pipeline, since sequential steps must come first.

A topic that yields fewer than N usable records within its call budget keeps what it got
(``short_topics`` counts them); a topic that yields none fails with the last raw reply.
"""

from __future__ import annotations

import asyncio
import copy
import math
import re
from typing import Any

from ...engine.prompted import PromptedStep, add_call_meta, call_meta, keep_reasoning
from ...engine.step import Record, StepContext, source_id_of
from ...errors import InputError, ModelError, StepError
from ...text.lsh import LSHIndex
from ...text.minhash import MinHasher
from ...text.minhash_dedup import record_text
from ...text.sanity import TextSanity
from .config import CONTROL_FIELDS, SeedlessConfig

_SPLIT = re.compile(r"\s*[|;；]\s*")


class NearDuplicateIndex:
    """MinHash LSH over kept texts, plus exact matching of normalised text.

    The exact check covers what MinHash cannot see: texts with no shingles (a few characters or
    punctuation only) have empty signatures, which never match anything.
    """

    def __init__(self, threshold: float, num_perm: int, method: str):
        self.method = method
        self.hasher = MinHasher(num_perm=num_perm) if method == "minhash" else None
        self.index = LSHIndex(threshold, num_perm) if method == "minhash" else None
        self.exact: set[str] = set()

    def add_if_new(self, text: str) -> bool:
        """Insert ``text`` unless it (nearly) duplicates one already in; True when inserted."""
        if self.method == "none":
            return True
        key = " ".join(text.split()).casefold()
        if key in self.exact:
            return False
        if self.hasher is not None and self.index is not None:
            signature = self.hasher.signatures([text])
            if self.index.query_verified(signature[0]):
                return False
            self.index.add(signature)
        self.exact.add(key)
        return True


def _choices(value: Any, where: str, field: str) -> list[str]:
    """A list of non-empty strings from a list or a ``|``/``;``-separated string (spreadsheet cells)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        items = _SPLIT.split(value.strip())
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise InputError(f"{where}: must be a list of strings or a '|'-separated string", None, field)
    return [i for i in items if i]


class Seedless(PromptedStep):
    """Generate ``n_per_topic`` records per input topic (settings: :class:`SeedlessConfig`).

    One ``run`` call makes all of a topic's records: it plans each call's controls from the topic's
    seeded generator before awaiting anything, sends the calls of a wave concurrently, and keeps
    what passes the blank, text and duplicate checks until the topic has its N records or its budget is spent.
    """

    Config = SeedlessConfig
    config: SeedlessConfig

    def setup(self) -> None:
        super().setup()
        config = self.config
        self.n_per_topic = config.n_per_topic
        self.per_call = config.per_call
        self.fields = list(config.fields)
        self.personas = list(config.personas or [])
        self.difficulties = list(config.difficulties or [])
        self.subtopics_per_call = config.subtopics_per_call
        self.max_calls = config.max_calls
        self.dedup = config.dedup
        self.dedup_scope = config.dedup_scope
        self.threshold = float(config.threshold)
        self.num_perm = config.num_perm
        self.max_chars = config.max_chars
        self.sanity = TextSanity(config.text_checks)
        self._run_index = (
            NearDuplicateIndex(self.threshold, self.num_perm, self.dedup) if self.dedup_scope == "run" else None
        )

    def required_fields(self) -> set[str]:
        return {"topic"}

    def schema(self, count: int) -> dict[str, Any]:
        text: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.max_chars:
            text["maxLength"] = self.max_chars
        item = {"type": "object", "properties": {f: dict(text) for f in self.fields}, "required": list(self.fields)}
        return {
            "type": "object",
            "properties": {"records": {"type": "array", "items": item, "minItems": 1, "maxItems": count}},
            "required": ["records"],
        }

    def _topic(self, record: Record) -> dict[str, Any]:
        where = f"step '{self.name}'"
        topic = record.get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise InputError(
                f"{where}: every input record is a topic and needs a non-empty text 'topic'", None, "topic"
            )
        n = record.get("n", self.n_per_topic)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(f"{where}: 'n' must be a non-negative integer", None, "n")
        return {
            "topic": topic.strip(),
            "n": n,
            "subtopics": _choices(record.get("subtopics"), where, "subtopics"),
            "personas": _choices(record.get("personas"), where, "personas") or self.personas,
            "difficulties": _choices(record.get("difficulties"), where, "difficulties") or self.difficulties,
        }

    async def run(self, record: Record, ctx: StepContext) -> list[Record]:
        spec = self._topic(record)
        n = spec["n"]
        if n == 0:
            self.counters["empty_topics"] += 1
            return []
        topic_id = str(record.get("id") or source_id_of(record))
        rng = ctx.rng(topic_id, self.name)
        budget = self.max_calls or 2 * math.ceil(n / self.per_call)
        local = NearDuplicateIndex(self.threshold, self.num_perm, self.dedup)
        base = {k: v for k, v in record.items() if k not in CONTROL_FIELDS and k != "id"}
        kept: list[Record] = []
        calls = 0
        last_error: ModelError | None = None
        last_rejected: tuple[str, str] | None = None  # (why, raw reply) of the last item not kept
        while len(kept) < n and calls < budget:
            missing = n - len(kept)
            wave = min(math.ceil(missing / self.per_call), budget - calls)
            # Draw every call's controls before awaiting anything: the draws stay in call order.
            plans = [self._plan(spec, rng, min(self.per_call, missing - i * self.per_call), kept) for i in range(wave)]
            results = await asyncio.gather(
                *(self._call(ctx, record, spec, plan, calls + i) for i, plan in enumerate(plans)),
                return_exceptions=True,
            )
            calls += wave
            for plan, result in zip(plans, results):
                if isinstance(result, BaseException):
                    if not isinstance(result, ModelError):
                        raise result
                    self.counters["failed_calls"] += 1
                    last_error = result
                    continue
                items, completion = result
                meta = call_meta(self.name, self.model, completion, self.template(ctx))
                for item in items:  # the schema's maxItems keeps a wave within the n still missing
                    rejected = self._rejected(item, local, self.template(ctx))
                    if rejected:
                        self.counters[rejected] += 1
                        last_rejected = (rejected, completion.text)
                        continue
                    out = {
                        **base,
                        "topic": spec["topic"],
                        **{f: item[f].strip() for f in self.fields},
                        "subtopics": plan["subtopics"],
                        "persona": plan["persona"],
                        "difficulty": plan["difficulty"],
                        "id": f"{topic_id}:g{len(kept)}",
                    }
                    # The trace of the reply, apart: dedup and the text checks above read the fields alone.
                    keep_reasoning(out, "seedless", completion, self.config.keep_reasoning)
                    out["_meta"] = copy.deepcopy(record.get("_meta") or {})
                    add_call_meta(out, dict(meta))
                    kept.append(out)
        self.counters["calls"] += calls
        self.counters["generated"] += len(kept)
        if not kept:
            raise StepError(
                f"step '{self.name}': topic {spec['topic']!r} gave no usable record in {calls} call(s)"
                + (f"; last error: {last_error}" if last_error else "")
                + (f"; last item not kept: {last_rejected[0]}" if last_rejected else ""),
                raw=last_error.raw if last_error else last_rejected[1] if last_rejected else None,
            )
        if len(kept) < n:
            self.counters["short_topics"] += 1
        return kept

    def _plan(self, spec: dict[str, Any], rng: Any, count: int, kept: list[Record]) -> dict[str, Any]:
        subtopics = spec["subtopics"]
        k = min(self.subtopics_per_call, len(subtopics))
        return {
            "count": count,
            "subtopics": sorted(rng.sample(subtopics, k), key=subtopics.index) if k else [],
            "persona": rng.choice(spec["personas"]) if spec["personas"] else None,
            "difficulty": rng.choice(spec["difficulties"]) if spec["difficulties"] else None,
            # Top-up calls see a few records already kept, so the model steers away from them.
            "avoid": [record_text(r, self.fields) for r in kept[-5:]],
        }

    async def _call(
        self, ctx: StepContext, record: Record, spec: dict[str, Any], plan: dict[str, Any], sample: int
    ) -> tuple[list[dict[str, Any]], Any]:
        view = {k: v for k, v in record.items() if not k.startswith("_")}
        view["topic"] = spec["topic"]
        options = {**self.options, **plan, "fields": self.fields, "max_chars": self.max_chars}
        messages = self.template(ctx).render(view, options)
        value, completion = await ctx.model(self.model).chat_json(
            messages, self.schema(plan["count"]), sample=sample, **self.params
        )
        return value["records"], completion

    def _rejected(self, item: dict[str, Any], local: NearDuplicateIndex, template: Any) -> str | None:
        """Why a generated item is not kept (a counter name), or None to keep it."""
        text = record_text({f: item[f] for f in self.fields}, self.fields)
        if not any(ch.isalnum() for ch in text):
            return "blank"  # empty, or punctuation only (a small model's '}{')
        problem = self.sanity.first_problem([item[f].strip() for f in self.fields], template)
        if problem is not None:
            return problem.counter
        if not local.add_if_new(text):
            return "near_duplicates"
        if self._run_index is not None and not self._run_index.add_if_new(text):
            return "near_duplicates_in_run"
        return None
