"""Near-duplicate removal for a whole dataset: signatures -> LSH candidates -> verified pairs -> clusters.

:func:`deduplicate` is the library entry point behind ``joyforge dedup``; :func:`near_duplicate_clusters`
is the same machinery on plain texts, for callers (the benchmark, the report) that do not need records.

Policies, per cluster of near-duplicates:
  * ``first``: keep the earliest record, remove the others (``duplicate_of`` = the kept record's id);
  * ``longest``: keep the record with the longest dedup text (ties: the earliest), remove the others;
  * ``tag``: remove nothing; every record gets ``cluster_id`` (id of the cluster's earliest record, or
    ``None`` when it has no near-duplicate) and ``duplicate_of`` (the same id, ``None`` for the earliest
    record itself and for records without near-duplicates).
With a ``reference`` dataset (earlier outputs), reference records are indexed first and are never output:
any input record in a cluster that contains a reference record is a duplicate of that (earliest)
reference record, whatever the policy.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..records import IdAssigner, TextFields, record_text
from .clusters import UnionFind, clusters_from_roots
from .lsh import DEDUP_WEIGHTS, LSHIndex
from .minhash import MinHasher
from .shingles import DEFAULT_MODE, Mode

Record = dict[str, Any]
Policy = Literal["first", "longest", "tag"]
POLICIES = ("first", "longest", "tag")


@dataclass
class ClusterResult:
    """Clusters over ``reference + texts`` ids (reference ids first) and what it took to find them."""

    roots: np.ndarray  # root id of every id: the earliest id of its cluster
    empty: np.ndarray  # bool per id: no shingles, never a duplicate
    lengths: np.ndarray  # characters of each id's text
    n_reference: int
    candidate_pairs: int
    verified_pairs: int
    bands: int
    rows: int
    index_bytes: int
    seconds: float


def near_duplicate_clusters(
    texts: Iterable[str],
    *,
    threshold: float = 0.8,
    hasher: MinHasher | None = None,
    reference: Iterable[str] | None = None,
    workers: int = 1,
    chunk_size: int = 2048,
    false_positive_weight: float = DEDUP_WEIGHTS[0],
    false_negative_weight: float = DEDUP_WEIGHTS[1],
) -> ClusterResult:
    """Cluster texts by estimated Jaccard similarity >= ``threshold``; texts are read in chunks."""
    started = time.perf_counter()
    hasher = hasher or MinHasher()
    index = LSHIndex(
        threshold,
        hasher.num_perm,
        false_positive_weight=false_positive_weight,
        false_negative_weight=false_negative_weight,
    )
    lengths = array("q")  # 8 bytes per text, not a Python int object each

    def measured(items: Iterable[str]) -> Iterator[str]:
        for text in items:
            lengths.append(len(text))
            yield text

    n_reference = 0
    if reference is not None:
        for block in hasher.iter_signatures(measured(reference), chunk_size=chunk_size, workers=workers):
            index.add(block)
        n_reference = len(index)
    for block in hasher.iter_signatures(measured(texts), chunk_size=chunk_size, workers=workers):
        index.add(block)
    candidates = index.candidate_pairs()
    verified, _ = index.verify(candidates)
    sets = UnionFind(len(index))
    sets.union_pairs(verified.left.tolist(), verified.right.tolist())
    return ClusterResult(
        roots=sets.roots(),
        empty=index.empty_mask(),
        lengths=np.frombuffer(lengths, dtype=np.int64) if lengths else np.zeros(0, np.int64),
        n_reference=n_reference,
        candidate_pairs=len(candidates),
        verified_pairs=len(verified),
        bands=index.bands,
        rows=index.rows,
        index_bytes=index.nbytes,
        seconds=time.perf_counter() - started,
    )


@dataclass
class DedupResult:
    """What :func:`deduplicate` kept and removed, and why.

    ``clusters`` lists the record ids of each cluster of two or more, its representative (the kept
    record, or the reference record) first; ``stats`` holds counts and timings for the run summary.
    """

    kept: list[Record]
    removed: list[Record]
    clusters: list[list[str]]
    stats: dict[str, Any] = field(default_factory=dict)


def _representative(members: list[int], lengths: np.ndarray, n_reference: int, policy: Policy) -> int:
    if members[0] < n_reference:  # members are ascending: the earliest reference record wins
        return members[0]
    if policy == "longest":
        return max(members, key=lambda i: (lengths[i], -i))
    return members[0]


def deduplicate(
    records: Iterable[Record],
    text_fields: TextFields = "input",
    threshold: float = 0.8,
    policy: Policy = "first",
    reference: Iterable[Record] | None = None,
    workers: int = 1,
    *,
    num_perm: int = 128,
    ngram: int | None = None,
    mode: Mode = DEFAULT_MODE,
    seed: int = 1,
    id_field: str = "id",
    chunk_size: int = 2048,
    clusterer: Callable[..., ClusterResult] | None = None,
) -> DedupResult:
    """Remove (or tag) near-duplicate records, within ``records`` and against ``reference``.

    Records are never modified: kept records are returned as they came (``tag`` returns copies with
    the two fields added), removed records as copies with ``duplicate_of`` and ``cluster_id``. Order is
    the input order. See the module docstring for the policies. ``clusterer`` replaces
    :func:`near_duplicate_clusters` (same arguments and result), e.g. by its Ray version.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold!r}")
    records = list(records)
    reference_records = list(reference) if reference is not None else []
    reference_ids = IdAssigner(id_field)
    input_ids = IdAssigner(id_field)
    ids = [reference_ids(r) for r in reference_records] + [input_ids(r) for r in records]
    hasher = MinHasher(num_perm=num_perm, ngram=ngram, mode=mode, seed=seed)
    found = (clusterer or near_duplicate_clusters)(
        (record_text(r, text_fields) for r in records),
        threshold=threshold,
        hasher=hasher,
        reference=(record_text(r, text_fields) for r in reference_records) if reference_records else None,
        workers=workers,
        chunk_size=chunk_size,
    )
    n_ref = found.n_reference
    groups = clusters_from_roots(found.roots)
    keep_of: dict[int, int] = {}  # member -> representative, for members of clusters only
    clusters: list[list[str]] = []
    for members in groups:
        if members[-1] < n_ref:
            continue  # a cluster of reference records only: nothing of ours to decide
        rep = _representative(members, found.lengths, n_ref, policy)
        for m in members:
            keep_of[m] = rep
        clusters.append([ids[rep]] + [ids[m] for m in members if m != rep])

    kept: list[Record] = []
    removed: list[Record] = []
    by_reference = 0
    for offset, record in enumerate(records):
        i = n_ref + offset
        rep = keep_of.get(i)
        if policy == "tag":
            tagged = dict(record)
            tagged["cluster_id"] = ids[rep] if rep is not None else None
            tagged["duplicate_of"] = ids[rep] if rep is not None and rep != i else None
            by_reference += rep is not None and rep < n_ref
            kept.append(tagged)
        elif rep is None or rep == i:
            kept.append(record)
        else:
            copy = dict(record)
            copy["duplicate_of"] = ids[rep]
            copy["cluster_id"] = ids[rep]
            removed.append(copy)
            by_reference += rep < n_ref
    seconds = found.seconds
    stats = {
        "records_in": len(records),
        "reference_records": len(reference_records),
        "kept": len(kept),
        "removed": len(removed),
        "removed_as_reference_duplicates": by_reference if policy != "tag" else 0,
        "tagged_reference_duplicates": by_reference if policy == "tag" else 0,
        "clusters": len(clusters),
        "largest_cluster": max((len(c) for c in clusters), default=0),
        "empty_texts": int(found.empty[n_ref:].sum()),
        "candidate_pairs": found.candidate_pairs,
        "verified_pairs": found.verified_pairs,
        "threshold": threshold,
        "num_perm": num_perm,
        "bands": found.bands,
        "rows": found.rows,
        "policy": policy,
        "seconds": round(seconds, 3),
        "docs_per_second": round((len(records) + len(reference_records)) / seconds, 1) if seconds > 0 else None,
    }
    return DedupResult(kept=kept, removed=removed, clusters=clusters, stats=stats)
