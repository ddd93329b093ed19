"""The filterable values of a record, the statistics of each field, and the text that search looks in.

Any field can be a filter: every scalar of a record down to :data:`MAX_DEPTH` levels of objects is a
value under its dotted path (``vote.outcome``, ``votes.gpt.label``, ``dpo.scorer``), a list of scalars is a
multi-valued field (``task_label``: a record matches when one of its labels does), and the model calls in
``_meta.calls`` give two derived fields, ``model`` and ``step`` (for a failure, ``step`` is the step that
failed). A failure line is filtered by its input record's fields plus its own ``step``, ``error_type`` and
``location``. Lists of objects (history, rationales, drafts) are shown on the record page, not filtered.

Long strings (over :data:`MAX_VALUE_CHARS`) are text, not filter values: the index does not store them,
and search finds them instead. Search looks at a bounded text per record (:func:`search_text`): the id
and the first :data:`SEARCH_CHARS` characters of the prompt and of the answer, so that the search index of
a million records stays a fraction of the data's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .shapes import Record, is_failure, main_input, main_output

MAX_DEPTH = 3  # vote.counts.<label>, votes.<model>.label: three levels
MAX_LIST_ITEMS = 64
MAX_VALUE_CHARS = 120
SEARCH_CHARS = 240
PROBATION = 200  # values of a field looked at to tell labels from free text
FREE_TEXT_SHARE = 0.5  # more distinct strings than this share of those seen: free text
# Fields the record page follows to other records: always stored, however many distinct values they have.
LINEAGE_PATHS = frozenset(("source_id", "parent_id", "cluster_id", "duplicate_of", "evol.root_id", "evol.parent_id"))

Scalar = str | int | float | bool | None
_SCALARS = (str, int, float, bool)
_SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))


def field_values(record: Record) -> dict[str, Scalar | list[Scalar]]:
    """Path -> scalar, or list of scalars for a multi-valued field, for one record or failure line."""
    out: dict[str, Scalar | list[Scalar]] = {}
    if is_failure(record):
        inner = record.get("record")
        if isinstance(inner, dict):
            _walk("", inner, 0, out)
        for name in ("step", "error_type", "location", "source_id"):
            value = record.get(name)
            if value is None or isinstance(value, _SCALARS):
                out[name] = value
        return out
    _walk("", record, 0, out)
    meta = record.get("_meta")
    if isinstance(meta, dict):
        calls = meta.get("calls")
        if isinstance(calls, list):
            models: set[str] = set()
            steps: set[str] = set()
            for call in calls:
                if type(call) is dict:
                    models.add(str(call.get("model")))
                    steps.add(str(call.get("step")))
            models.discard("None")
            steps.discard("None")
            out["model"] = sorted(models)
            out["step"] = sorted(steps)
        if isinstance(meta.get("source_id"), str):
            out["source_id"] = meta["source_id"]
    return out


def _walk(prefix: str, value: dict[str, Any], depth: int, out: dict[str, Scalar | list[Scalar]]) -> None:
    """Scalars and scalar lists under dotted paths. Written flat (one loop, a type check per value): it runs
    once per field of every record of a million-record file."""
    scalars = _SCALAR_TYPES
    for key, item in value.items():
        kind = type(item)
        if kind in scalars:
            out[prefix + key if prefix else key] = item
        elif kind is list:
            if item and type(item[0]) in scalars:
                head = item[:MAX_LIST_ITEMS] if len(item) > MAX_LIST_ITEMS else item
                if all(type(x) in scalars for x in head):
                    out[prefix + key if prefix else key] = head
        elif kind is dict and depth + 1 < MAX_DEPTH and (prefix or key != "_meta"):
            _walk((prefix + key if prefix else key) + ".", item, depth + 1, out)


def search_text(record: Record, record_id: str | None) -> str:
    """What search looks in: the id, the start of the prompt and of the answer (a failure: its error)."""
    parts = [record_id or "", main_input(record)[:SEARCH_CHARS], main_output(record)[:SEARCH_CHARS]]
    return "\n".join(part for part in parts if part)


@dataclass
class FieldStats:
    """What one field's first :data:`PROBATION` values look like: its kind, and whether it is free text.

    Only a field's first values are looked at, so that a million records cost one dict lookup per value
    after that. A field of short strings that are nearly all different (a prompt, a reason, a hash) is
    *free text*: storing it would make every filter scan slower for a filter nobody writes (``input=...``);
    search finds such text instead. Numbers, booleans, lists and the lineage fields are always kept.
    """

    path: str
    seen: int = 0
    numbers: int = 0
    bools: int = 0
    texts: int = 0
    long_texts: int = 0
    lists: int = 0
    nulls: int = 0
    distinct: set = field(default_factory=set)

    def add(self, value: Scalar | list[Scalar]) -> None:
        self.seen += 1
        if isinstance(value, list):
            self.lists += 1
        elif value is None:
            self.nulls += 1
        elif isinstance(value, bool):
            self.bools += 1
        elif isinstance(value, (int, float)):
            self.numbers += 1
        elif len(value) > MAX_VALUE_CHARS:
            self.long_texts += 1
        else:
            self.texts += 1
            self.distinct.add(value)

    @property
    def settled(self) -> bool:
        return self.seen >= PROBATION

    @property
    def free_text(self) -> bool:
        """Mostly strings, and (once enough were seen) mostly different ones."""
        if self.path in LINEAGE_PATHS or self.lists or self.numbers + self.bools > self.texts:
            return False
        if self.long_texts > self.texts:
            return True
        return self.texts >= PROBATION // 2 and len(self.distinct) > self.texts * FREE_TEXT_SHARE

    @property
    def kind(self) -> str:
        """``number``, ``bool``, ``list``, ``text`` (free text: search only) or ``label``."""
        if self.lists:
            return "list"
        if self.free_text:
            return "text"
        if self.numbers and self.numbers >= self.texts + self.bools:
            return "number"
        if self.bools and not self.texts and not self.numbers:
            return "bool"
        return "label"
