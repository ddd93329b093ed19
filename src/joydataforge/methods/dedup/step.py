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

from typing import ClassVar, Iterable, Sequence

from ...errors import ConfigError
from ...text.lsh import LSHIndex
from ...text.minhash import MinHasher
from ...text.clusters import UnionFind
from ...text.minhash_dedup import record_text
from ...text.shingles import Mode
from ...records import IdAssigner
from ...engine.step import Record, Step, StepContext


class MinHashDedupStep(Step):
    """Drop (or tag) records that are near-duplicates of earlier records of the same run.

    Args (the YAML keys): ``threshold`` (estimated Jaccard similarity from which two records are
    duplicates), ``num_perm``, ``fields`` (field name or list of names, e.g. ``[input, history]``),
    ``ngram`` (``None``: 3 words / 4 characters), ``mode`` (``auto``/``word``/``char``), ``policy``
    (``first`` or ``tag``), ``seed``, ``id_field``.
    """

    kind: ClassVar[str] = "minhash_dedup"
    sequential: ClassVar[bool] = True

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        fields: str | Sequence[str] = "input",
        ngram: int | None = None,
        policy: str = "first",
        seed: int = 1,
        mode: Mode = "auto",
        id_field: str = "id",
        name: str | None = None,
    ):
        super().__init__(name)
        if policy == "longest":
            raise ConfigError(
                f"step '{self.name}': policy 'longest' needs the whole dataset; a streaming step can only "
                "use 'first' or 'tag'. Use `joyforge dedup DATA -o OUT --policy longest` (or "
                "joydataforge.text.minhash_dedup.deduplicate) instead."
            )
        if policy not in ("first", "tag"):
            raise ConfigError(f"step '{self.name}': policy must be 'first' or 'tag', not {policy!r}")
        if not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise ConfigError(f"step '{self.name}': threshold must be a number in (0, 1], not {threshold!r}")
        if isinstance(fields, str):
            fields = [fields]
        if not fields or not all(isinstance(f, str) for f in fields):
            raise ConfigError(f"step '{self.name}': fields must be a field name or a list of field names")
        try:
            self.hasher = MinHasher(num_perm=num_perm, ngram=ngram, mode=mode, seed=seed)
        except ValueError as exc:
            raise ConfigError(f"step '{self.name}': {exc}") from exc
        self.threshold = float(threshold)
        self.fields = list(fields)
        self.policy = policy
        self.index = LSHIndex(self.threshold, num_perm)
        self._sets = UnionFind()
        self._ids: list[str] = []
        self._assign_id = IdAssigner(id_field)
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
