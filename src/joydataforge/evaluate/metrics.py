"""The full metric set of one dataset: what ``joyforge eval`` writes and what the report draws.

The measuring itself lives in the specialised modules (:mod:`.minhash_dedup` for near-duplicates,
:mod:`.vendi` for semantic diversity, :mod:`.entities` for entity diversity); this module only decides
*which* measurements a dataset gets and puts them in one JSON-able dictionary, so that the command,
the report and the ``select`` comparison all read the same numbers. It never reads files nor calls
models: records and (optionally) their vectors come in, numbers go out.

:class:`DatasetEvaluation` also keeps what the report needs beyond the numbers (the clusters' member
indices, the vectors, the texts) so the report does not recompute anything.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..text.clusters import clusters_from_roots
from ..text.minhash_dedup import near_duplicate_clusters, record_text
from ..text.vendi import vendi_scores

Record = dict[str, Any]

#: Fields whose values are treated as labels/tags when the user names none: the seed's own names
#: (``tag``, ``task_label``, ``label`` of the dialogue-intent data) and the usual ones.
DEFAULT_LABEL_FIELDS = ("label", "labels", "tag", "tags", "task_label", "intent", "category", "task")

#: Fields whose length is measured besides the text fields, when present (answers and dialogues).
ANSWER_FIELDS = ("target", "output", "response", "answer", "chosen", "rejected")

VENDI_ORDERS = (1, 2, "inf")


@dataclass(frozen=True)
class EvalOptions:
    """What to measure.

    ``text_fields`` are the fields that make a record's text (joined by newlines) for near-duplicate
    detection and for embedding; ``label_fields=None`` picks the :data:`DEFAULT_LABEL_FIELDS` present
    in the data; ``entity_fields=None`` lets :mod:`.entities` choose its own default (the list-valued
    fields of the records), an empty tuple skips entity metrics.
    """

    text_fields: tuple[str, ...] = ("input",)
    threshold: float = 0.8
    num_perm: int = 128
    shingle_mode: str = "mixed"  # see joydataforge.text.shingles: mixed, auto, word or char
    label_fields: tuple[str, ...] | None = None
    entity_fields: tuple[str, ...] | None = None
    vendi_orders: tuple[float | int | str, ...] = VENDI_ORDERS
    top_values: int = 30
    top_clusters: int = 10


@dataclass
class DatasetEvaluation:
    """The metrics (``metrics``, JSON-able) plus the material the HTML report draws from."""

    metrics: dict[str, Any]
    records: list[Record]
    texts: list[str]
    clusters: list[list[int]] = field(default_factory=list)  # record indices, largest cluster first
    vectors: np.ndarray | None = None
    lengths: dict[str, list[int]] = field(default_factory=dict)
    label_fields: tuple[str, ...] = ()


def length_stats(values: Sequence[int] | np.ndarray) -> dict[str, float | int]:
    """Count, min, max, mean and the 10/50/90/99th percentiles of a list of lengths."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"count": 0}
    p10, p50, p90, p99 = np.percentile(data, [10, 50, 90, 99])
    return {
        "count": int(data.size),
        "min": int(data.min()),
        "max": int(data.max()),
        "mean": round(float(data.mean()), 2),
        "p10": round(float(p10), 2),
        "median": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
    }


def _field_length(value: Any) -> int | None:
    """Characters of a text value, or of the texts inside a list/dict value; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_field_length(v) or 0 for v in value)
    if isinstance(value, dict):
        return sum(_field_length(v) or 0 for v in value.values())
    return len(str(value))


def _history_turns(value: Any) -> int:
    if not value:
        return 0
    if isinstance(value, str):
        return sum(1 for line in value.splitlines() if line.strip())
    return len(value) if isinstance(value, (list, tuple)) else 0


def length_unit(name: str) -> str:
    """What a length counts: dialogue turns for ``history``, characters for every text."""
    return "turns" if name == "history" else "chars"


def collect_lengths(
    records: Sequence[Record], texts: Sequence[str], text_fields: Sequence[str]
) -> dict[str, list[int]]:
    """Lengths per measured quantity, each over the records that have it.

    Keyed by field name: ``text`` is the joined text the other metrics use; then each text field
    (``history`` counts its turns instead, the number that matters when training on dialogues) and each
    answer field present. :func:`length_unit` says which unit a key is in.
    """
    lengths: dict[str, list[int]] = {"text": [len(t) for t in texts]}
    names = list(dict.fromkeys([*text_fields, "history", *ANSWER_FIELDS]))
    for name in names:
        if name == "history":
            if any(r.get("history") for r in records):
                lengths["history"] = [_history_turns(r.get("history")) for r in records]
            continue
        if list(text_fields) == [name] or name == "text":
            continue  # the joined text is this field already (or a field named "text" would overwrite it)
        present = [n for n in (_field_length(r.get(name)) for r in records) if n is not None]
        if any(present):  # a field that is empty everywhere (an unfilled target) has no length to show
            lengths[name] = present
    return lengths


def _label_values(value: Any) -> list[str]:
    """Labels of one record: a list counts each item once, a scalar counts itself; empty counts nothing."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, (list, tuple, set)):
        return list(dict.fromkeys(str(v) for v in value if v is not None and v != ""))
    if isinstance(value, dict):
        return []  # a structured value is not a label
    return [str(value)]


def label_fields_of(records: Sequence[Record], requested: Sequence[str] | None) -> tuple[str, ...]:
    """The label fields to count: the requested ones, or the default names found in the records."""
    if requested is not None:
        return tuple(requested)
    present = {k for r in records for k, v in r.items() if _label_values(v)}  # a field empty everywhere says nothing
    return tuple(name for name in DEFAULT_LABEL_FIELDS if name in present)


def label_distribution(records: Sequence[Record], name: str, top: int) -> dict[str, Any]:
    """How often each value of label field ``name`` occurs, the most frequent first.

    A record with a list of labels counts once per distinct label, so the counts can add up to more
    than the number of records; ``records_with_value`` says how many records have any.
    """
    counts: Counter[str] = Counter()
    having = 0
    for record in records:
        values = _label_values(record.get(name))
        having += bool(values)
        counts.update(values)
    from .entities import count_diversity

    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "records_with_value": having,
        **count_diversity(counts),
        "top": [[value, count] for value, count in ordered[:top]],
        "other": sum(count for _, count in ordered[top:]),
    }


def near_duplicate_stats(
    texts: Sequence[str], threshold: float, num_perm: int, shingle_mode: str = "mixed"
) -> tuple[dict[str, Any], list[list[int]]]:
    """MinHash near-duplicate clusters over the texts, and their summary.

    Returns the summary and the clusters (record indices, earliest first) ordered largest first.
    ``duplicates`` is what ``joyforge dedup --policy first`` would remove: every member but one.
    """
    from ..text.minhash import MinHasher

    hasher = MinHasher(num_perm=num_perm, mode=shingle_mode)  # type: ignore[arg-type]  # checked by ShingleSpec
    result = near_duplicate_clusters(texts, threshold=threshold, hasher=hasher)
    clusters = clusters_from_roots(result.roots)
    clusters.sort(key=lambda c: (-len(c), c[0]))
    exact: Counter[str] = Counter(" ".join(t.split()) for t in texts)
    n = len(texts)
    duplicates = sum(len(c) - 1 for c in clusters)
    summary = {
        "threshold": threshold,
        "num_perm": num_perm,
        "shingle_mode": shingle_mode,
        "clusters": len(clusters),
        "records_in_clusters": sum(len(c) for c in clusters),
        "duplicates": duplicates,
        "duplicate_ratio": round(duplicates / n, 6) if n else 0.0,
        "largest_cluster": len(clusters[0]) if clusters else 0,
        "exact_duplicates": sum(c - 1 for c in exact.values()),
        "empty_texts": int(result.empty.sum()),
    }
    return summary, clusters


def semantic_stats(vectors: np.ndarray, orders: Sequence[float | int | str]) -> dict[str, Any]:
    """Vendi scores (cosine kernel, natural log) of the vectors, and the same per record.

    The per-record share (``q=1`` score divided by n) makes datasets of different sizes comparable:
    1.0 means every record points its own way, 1/n that all say the same thing.
    """
    n, d = vectors.shape
    scores = vendi_scores(vectors, orders)
    main = scores.get("q=1")
    return {
        "vectors": int(n),
        "dim": int(d),
        "vendi": {k: round(v, 6) for k, v in scores.items()},
        "vendi_per_record": round(main / n, 6) if main is not None and n else None,
    }


def entity_stats(entity_maps: Sequence[dict[str, list[str]]], top: int) -> dict[str, Any]:
    """Entity diversity from :mod:`.entities` over one entity map per record."""
    from .entities import entity_metrics

    return entity_metrics(entity_maps, top_k=top)


def entity_maps_of(records: Sequence[Record], fields: Sequence[str] | None) -> list[dict[str, list[str]]]:
    """Entities from the records' own fields (``None``: every list-of-strings field that is not text or label)."""
    from .entities import entities_from_records

    return entities_from_records(records, include=None if fields is None else list(fields))


def evaluate_records(
    records: Sequence[Record],
    options: EvalOptions = EvalOptions(),
    *,
    vectors: np.ndarray | None = None,
    embedder: str | None = None,
    entity_maps: Sequence[dict[str, list[str]]] | None = None,
    entity_source: str | None = None,
) -> DatasetEvaluation:
    """Compute the full metric set of ``records``.

    ``vectors`` (one row per record) enable the Vendi score and the map; ``embedder`` says where they
    came from. ``entity_maps`` (one per record, e.g. from an extractor) replace the entities found in
    the records' fields; ``entity_source`` names their origin.
    """
    records = list(records)
    if vectors is not None and len(vectors) != len(records):
        raise ValueError(f"{len(vectors)} vectors for {len(records)} records: give one vector per record")
    if entity_maps is not None and len(entity_maps) != len(records):
        raise ValueError(f"{len(entity_maps)} entity maps for {len(records)} records")
    texts = [record_text(r, list(options.text_fields)) for r in records]
    lengths = collect_lengths(records, texts, options.text_fields)
    labels = label_fields_of(records, options.label_fields)
    metrics: dict[str, Any] = {
        "records": len(records),
        "text_fields": list(options.text_fields),
        "fields": _field_presence(records),
        "lengths": {name: {"unit": length_unit(name), **length_stats(values)} for name, values in lengths.items()},
        "labels": {name: label_distribution(records, name, options.top_values) for name in labels},
    }
    clusters: list[list[int]] = []
    if records:
        metrics["near_duplicates"], clusters = near_duplicate_stats(
            texts, options.threshold, options.num_perm, options.shingle_mode
        )
    if vectors is not None and len(records):
        metrics["semantic"] = {"embedder": embedder, **semantic_stats(vectors, options.vendi_orders)}
    if entity_maps is None and (options.entity_fields is None or options.entity_fields):
        entity_maps = entity_maps_of(records, options.entity_fields)
        entity_source = "fields: " + (
            ", ".join(options.entity_fields) if options.entity_fields else "auto (list-valued fields)"
        )
    if entity_maps is not None:
        metrics["entities"] = {"source": entity_source, **entity_stats(entity_maps, options.top_values)}
    return DatasetEvaluation(
        metrics=_jsonable(metrics),
        records=records,
        texts=texts,
        clusters=clusters,
        vectors=vectors,
        lengths=lengths,
        label_fields=labels,
    )


def _field_presence(records: Sequence[Record]) -> dict[str, int]:
    """How many records have a non-empty value in each field: spots a field that is mostly missing."""
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(k for k, v in record.items() if v not in (None, "", [], {}))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _jsonable(value: Any) -> Any:
    """Plain JSON types only (numpy scalars and non-finite floats made explicit) for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value
