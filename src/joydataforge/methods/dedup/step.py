"""Streaming near-duplicate filter for a pipeline's records (YAML kind ``minhash_dedup``).

Each record's dedup text is MinHashed, looked up in an LSH index of every record seen before, and the
candidates are verified against the estimated Jaccard similarity. A record that matches one of them
joins that record's cluster (union-find, root = earliest record) and is dropped, or, with
``policy: tag``, passed on with ``cluster_id`` and ``duplicate_of``. Records that match nothing pass
unchanged (with ``tag``: both fields ``None``).

Why the step is ``sequential``: "keep the first" must mean the first in input order, and the index must
contain exactly the records before this one; the executor runs sequential steps one record at a time
in input order. Every record is indexed, dropped ones included, so a later record that resembles only a
dropped copy is recognised as a member of the same cluster, as in batch :func:`deduplicate`.

Streaming cannot keep the longest record (it would have to take back records already passed on), so
``policy: longest`` is refused with a pointer to ``joyforge dedup``. Batch and stream agree except
where a later record bridges two clusters that were separate when their records went by.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from ...engine.step import Record, Step, StepContext
from ...records import IdAssigner
from ...text.clusters import UnionFind
from ...text.lsh import LSHIndex
from ...text.minhash import MinHasher
from ...text.minhash_dedup import record_text
from .config import MinHashDedupConfig


class MinHashDedupStep(Step):
    """Drop (or tag) records that are near-duplicates of earlier records (settings: :class:`MinHashDedupConfig`).

    State: the LSH index of every record seen so far (reference records first), a union-find over
    their positions, and their ids, so a duplicate is reported against its cluster's first record.
    """

    Config = MinHashDedupConfig
    config: MinHashDedupConfig
    sequential: ClassVar[bool] = True

    def setup(self) -> None:
        config = self.config
        self.hasher = MinHasher(num_perm=config.num_perm, ngram=config.ngram, mode=config.mode, seed=config.seed)
        self.threshold = float(config.threshold)
        self.fields = list(config.fields)
        self.policy = config.policy
        self.index = LSHIndex(self.threshold, config.num_perm)
        self._sets = UnionFind()
        self._ids: list[str] = []
        self._assign_id = IdAssigner(config.id_field)
        self._n_reference = 0

    def required_fields(self) -> set[str]:
        return set()  # a missing field counts as empty text, like in batch dedup

    def add_reference(self, records: Iterable[Record]) -> int:
        """Index earlier outputs before the run, so input records that duplicate them are dropped.

        The caller (pipeline or CLI) reads the reference file; steps never open files themselves.
        Returns the number of records indexed.
        """
        if self._ids and self._n_reference != len(self._ids):
            raise RuntimeError("add_reference must be called before the first record is processed")
        records = list(records)
        assign = IdAssigner(self._assign_id.id_field)
        signatures = self.hasher.signatures([record_text(r, self.fields) for r in records])
        for record in records:
            self._ids.append(assign(record))
            self._sets.add()
        self.index.add(signatures)
        self._n_reference = len(self._ids)
        self.counters["reference_records"] += len(records)
        return len(records)

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        self.counters["records_in"] += 1
        signature = self.hasher.signatures([record_text(record, self.fields)])
        if MinHasher.empty_rows(signature)[0]:
            self.counters["empty_texts"] += 1  # no shingles: never a duplicate, passed on
        matches = self.index.query_verified(signature[0])
        me = self._sets.add()
        self.index.add(signature)
        self._ids.append(self._assign_id(record))
        if not matches:
            self.counters["kept"] += 1
            if self.policy == "tag":
                return {**record, "cluster_id": None, "duplicate_of": None}
            return record
        for other, _ in matches:
            self._sets.union(me, other)
        first = self._sets.find(me)
        original = self._ids[first]
        if first < self._n_reference:
            self.counters["reference_duplicates"] += 1
        if self.policy == "tag":
            self.counters["tagged"] += 1
            return {**record, "cluster_id": original, "duplicate_of": original}
        self.counters["removed"] += 1
        return None
