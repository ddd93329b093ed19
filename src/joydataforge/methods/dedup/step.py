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

Reference data (``reference:``, earlier outputs) is indexed before the first record, in :meth:`check`,
which every executor calls before it reads the input. A resumed run rebuilds the same state: the
reference is read again, and the executor feeds the records done before the crash through this step
again (their verdicts are not committed twice). The reference's content joins the step's settings in
the run fingerprint, so a reference that changed since the crash refuses to resume instead of silently
giving another answer.

Streaming cannot keep the longest record (it would have to take back records already passed on), so
``policy: longest`` is refused with a pointer to ``joyforge dedup``. Batch and stream agree except
where a later record bridges two clusters that were separate when their records went by.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from ...engine.step import Record, Step, StepContext
from ...errors import ConfigError, InputError
from ...io.reference import iter_reference
from ...records import IdAssigner
from ...text.clusters import UnionFind
from ...text.lsh import LSHIndex
from ...text.minhash import MinHasher
from ...text.minhash_dedup import record_text
from .config import MinHashDedupConfig

_REFERENCE_CHUNK = 2048  # reference records hashed per batch: memory stays flat however large it is


def resolve_reference(path: str, ctx: StepContext) -> Path:
    """A relative reference path is relative to the pipeline file, like prompt files.

    The run context knows the pipeline's folder only as the prompt library's search paths (its own
    folder, after ``run.prompts_dir``); the first of them that holds ``path`` wins, and a path found
    in none is taken against the last one (the pipeline's folder), so the error names where it looked.
    """
    written = Path(path).expanduser()
    if written.is_absolute():
        return written
    bases = [Path(base) for base in getattr(ctx.prompts, "search_paths", None) or []]
    for base in bases:
        if (base / written).exists():
            return base / written
    return bases[-1] / written if bases else written


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
        self._reference_digest: str | None = None
        self._reference_read = False  # the `reference:` files, read once (check may be called again)

    def required_fields(self) -> set[str]:
        return set()  # a missing field counts as empty text, like in batch dedup

    def check(self, ctx: StepContext) -> None:
        """Index the ``reference`` files before the run, so that a bad path stops it before any record."""
        super().check(ctx)
        if self.config.reference and not self._reference_read:
            self._reference_read = True
            paths = [resolve_reference(path, ctx) for path in self.config.reference]
            try:
                self.add_reference(iter_reference(paths))
            except InputError as exc:
                raise ConfigError(
                    f"step '{self.name}': reference: {exc} (fix or remove that file, or leave it out of reference)"
                ) from None

    def settings(self) -> dict[str, Any]:
        """The written settings, plus a digest of the reference's content once it is read (see the module)."""
        written = super().settings()
        if self._reference_digest is not None:
            written["reference_content"] = self._reference_digest
        return written

    def add_reference(self, records: Iterable[Record]) -> int:
        """Index earlier outputs before the run, so input records that duplicate them are dropped.

        The caller (:meth:`check`, or a program) reads the records; they are hashed in chunks and not
        kept, only their ids. Returns the number of records indexed.
        """
        if self._ids and self._n_reference != len(self._ids):
            raise RuntimeError("add_reference must be called before the first record is processed")
        assign = IdAssigner(self._assign_id.id_field)
        digest = hashlib.blake2b(digest_size=16)
        if self._reference_digest is not None:
            digest.update(self._reference_digest.encode())
        added = 0
        iterator = iter(records)
        while chunk := list(itertools.islice(iterator, _REFERENCE_CHUNK)):
            texts = [record_text(r, self.fields) for r in chunk]
            for record, text in zip(chunk, texts):
                record_id = assign(record)
                self._ids.append(record_id)
                self._sets.add()
                digest.update(f"{len(record_id)}:{record_id}{len(text)}:{text}".encode())
            self.index.add(self.hasher.signatures(texts))
            added += len(chunk)
        self._n_reference = len(self._ids)
        self._reference_digest = digest.hexdigest()
        self.counters["reference_records"] += added
        return added

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
