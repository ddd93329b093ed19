"""A small topic taxonomy in YAML, turned into the topic records the ``seedless`` step reads.

The format (``examples/topics.yaml``)::

    personas: [a student, a nurse]      # defaults for every topic (optional)
    difficulties: [simple, tricky]
    n: 3                                # records per topic (optional; else the step's n_per_topic)
    topics:
      - id: cooking                     # optional; default: a slug of the topic
        topic: home cooking
        subtopics:
          - baking bread
          - sauces: [emulsions, reductions]   # nested: flattened to "sauces / emulsions", ...
      - fitness for beginners          # a bare name: a topic without sub-topics
      - topic: taxes
        personas: [a freelancer]       # overrides the defaults for this topic

Why a module of its own: a taxonomy is authored by hand as a tree with shared defaults, while steps
want flat records (one per topic); this is the one place that knows the tree. :func:`read_taxonomy`
follows the readers' protocol (items after ``skip``, with the YAML line of each topic as location),
so the readers can serve ``.yaml`` input with it; :func:`load_taxonomy` returns the records directly.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError, Location
from .source import SourceItem

_DEFAULT_KEYS = ("personas", "difficulties", "n")
_TOPIC_KEYS = {"id", "topic", "subtopics", *_DEFAULT_KEYS}
_SLUG = re.compile(r"[^\w]+", re.UNICODE)


def _flatten(subtopics: Any, where: str, prefix: str = "") -> list[str]:
    if subtopics is None:
        return []
    if not isinstance(subtopics, list):
        raise ValueError(f"{where}: 'subtopics' must be a list")
    flat: list[str] = []
    for item in subtopics:
        if isinstance(item, str) and item.strip():
            flat.append(prefix + item.strip())
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
            name, children = next(iter(item.items()))
            flat.extend(_flatten(children, where, f"{prefix}{name.strip()} / ") or [prefix + name.strip()])
        else:
            raise ValueError(f"{where}: a sub-topic is a name or {{name: [sub-topics]}}, not {item!r}")
    return flat


def _strings(value: Any, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of non-empty strings")
    return [v.strip() for v in value]


def topic_record(item: Any, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """One topic entry (a name or a mapping) as a flat record; raises ValueError naming the problem."""
    if isinstance(item, str):
        item = {"topic": item}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a topic is a name or a mapping with 'topic:'")
    unknown = set(item) - _TOPIC_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(_TOPIC_KEYS))})")
    topic = item.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise ValueError(f"{where}: 'topic' must be a non-empty string")
    record: dict[str, Any] = {
        "id": str(item.get("id") or _SLUG.sub("-", topic.strip().lower()).strip("-")),
        "topic": topic.strip(),
    }
    subtopics = _flatten(item.get("subtopics"), where)
    if subtopics:
        record["subtopics"] = subtopics
    for key in ("personas", "difficulties"):
        value = item.get(key, defaults.get(key))
        if value is not None:
            record[key] = _strings(value, key, where)
    n = item.get("n", defaults.get("n"))
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{where}: 'n' must be a non-negative integer")
        record["n"] = n
    return record


def read_taxonomy(
    path: Path, encoding: str | None = None, sheet: str | None = None, skip: int = 0
) -> Generator[SourceItem, None, int]:
    """Yield one topic record per topic after the first ``skip``; returns how many were skipped.

    A file that is not a taxonomy at all is one error item; a bad topic is an error item at its line.
    """
    where = Location(str(path))
    try:
        text = path.read_text(encoding or "utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        if skip:
            return 0
        yield SourceItem(where, None, InputError(f"not a readable YAML taxonomy: {exc}", where))
        return 0
    if isinstance(data, list):
        data, topics_node = {"topics": data}, root
    elif isinstance(data, dict) and isinstance(data.get("topics"), list):
        topics_node = next(v for k, v in root.value if k.value == "topics")  # type: ignore[union-attr]
    else:
        if not skip:
            yield SourceItem(
                where, None, InputError("a taxonomy is a list of topics or a mapping with 'topics:'", where)
            )
        return 0
    unknown = set(data) - {"topics", *_DEFAULT_KEYS}
    if unknown and not skip:
        yield SourceItem(where, None, InputError(f"unknown top-level keys {sorted(unknown)}", where))
        return 0
    defaults = {k: data[k] for k in _DEFAULT_KEYS if k in data}
    skipped = 0
    for index, (item, node) in enumerate(zip(data["topics"], topics_node.value)):  # type: ignore[union-attr]
        if skipped < skip:
            skipped += 1
            continue
        location = Location(str(path), node.start_mark.line + 1)
        try:
            yield SourceItem(location, topic_record(item, defaults, f"topics[{index}]"))
        except ValueError as exc:
            yield SourceItem(location, None, InputError(str(exc), location))
    return skipped


def load_taxonomy(path: str | Path) -> list[dict[str, Any]]:
    """All topic records of a taxonomy file; the first problem raises :class:`InputError` with its line."""
    records = []
    for item in read_taxonomy(Path(path)):
        if item.error is not None:
            raise item.error
        assert item.record is not None
        records.append(item.record)
    return records
