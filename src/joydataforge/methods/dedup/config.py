"""Settings of the streaming near-duplicate filter (``minhash_dedup``)."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError
from ...config.tables import one_or_more_names

#: No LSH band may hold more rows than this (:class:`~joydataforge.text.lsh.LSHIndex`); a band never holds
#: more rows than the signature has positions, so shorter signatures always fit.
MAX_BAND_ROWS = 256


def banding_problem(threshold: float, num_perm: int) -> str | None:
    """Why no LSH index can be built for ``threshold`` and ``num_perm`` (``None`` when one can).

    The bands follow from both settings (a threshold near 1 wants one band of ``num_perm`` rows), so
    neither alone has a range that says it. The index module (numpy) is imported only for the
    signature lengths that can fail, which keeps validating a pipeline light.
    """
    if num_perm <= MAX_BAND_ROWS:
        return None
    from ...text.lsh import LSHIndex

    try:
        LSHIndex(threshold, num_perm)
    except ValueError as exc:
        return (
            f"too long for threshold {threshold}: the LSH bands it needs are too wide ({exc}); "
            f"lower num_perm or threshold (got {num_perm})"
        )
    return None


class MinHashDedupConfig(StepConfig):
    """Drop (or tag) records that are near-duplicates of earlier records of the same run.

    Each record's text (its ``fields``, joined) is compared with every record before it, by MinHash
    signatures and an LSH index; a record whose estimated Jaccard similarity to an earlier one reaches
    ``threshold`` is a duplicate. With ``policy: first`` duplicates are dropped; with ``policy: tag`` every
    record passes with ``cluster_id`` and ``duplicate_of`` (the id of the cluster's first record; both null
    for a record that matches nothing). "First" means first in input order: the step sees records one at a
    time, in order, so it comes before the other steps of a pipeline. To keep the longest record of each
    cluster instead, deduplicate the finished dataset with ``joyforge dedup --policy longest``.

    With ``reference`` (earlier outputs: files or folders, an earlier run's output folder included), the
    reference records are indexed before the first input record, so an input record that is a near-duplicate
    of one of them is dropped (or tagged with the reference record's id) and counted as
    ``reference_duplicates``. Reference records themselves are never output. The reference is read again at
    the start of every run, a resumed one included, and its content is part of the run's fingerprint: a
    reference that changed since an interrupted run refuses to resume that run's folder.
    """

    kind: ClassVar[str] = "minhash_dedup"
    positional: ClassVar[tuple[str, ...]] = (
        "threshold",
        "num_perm",
        "fields",
        "ngram",
        "policy",
        "seed",
        "mode",
        "id_field",
        "name",
    )
    summary: ClassVar[str] = "drop (or tag) near-duplicates of earlier records (MinHash LSH, keeps the first)"
    example: ClassVar[dict[str, Any]] = {"fields": ["input"], "threshold": 0.8}

    threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        strict=True,
        description=(
            "Estimated Jaccard similarity (of the records' shingle sets) from which two records are near-duplicates."
        ),
    )
    num_perm: int = Field(
        default=128,
        ge=1,
        strict=True,
        description=(
            "MinHash signature length: the similarity estimate's standard error shrinks as 1/sqrt(num_perm) "
            "(about 0.035 at similarity 0.8 with 128)."
        ),
    )
    fields: str | list[str] = Field(
        default_factory=lambda: ["input"],
        description=(
            "The field (one name) or fields (a list, e.g. `[input, history]`) whose text is compared; a missing "
            "field counts as empty text."
        ),
    )
    ngram: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=("Shingle size in tokens; null: 3 for word shingles, 4 for character shingles."),
    )
    policy: Literal["first", "tag"] = Field(
        default="first",
        description=(
            "`first`: drop a duplicate, keeping the first record of its cluster; `tag`: keep every record, "
            "with `cluster_id` and `duplicate_of`."
        ),
    )
    seed: int = Field(
        default=1,
        strict=True,
        description=("Picks the MinHash hash functions; equal seeds give equal results on every machine."),
    )
    mode: Literal["mixed", "auto", "word", "char"] = Field(
        default="mixed",
        description=(
            "Shingles: `mixed` (every Han/kana character and every run of other letters or digits is a token, "
            "one stream for every record, so Chinese, English and text mixing both compare alike), `word` (the "
            "same; its older name), `char` (every letter a token, 4-grams) or `auto` (word or char per record "
            "by a 30% share of CJK characters: the old default, kept for comparing with earlier runs)."
        ),
    )
    reference: str | list[str] | None = Field(
        default=None,
        description=(
            "Earlier outputs whose near-duplicates are dropped (or tagged) too: a file or folder (JSONL, "
            "Parquet, any readable input; an earlier run's output folder gives its kept records), or a list of "
            "them, relative to the pipeline file. Counted as `reference_records` and `reference_duplicates`."
        ),
    )
    id_field: str = Field(
        default="id",
        min_length=1,
        description=("Field holding a record's id, which `duplicate_of` and `cluster_id` refer to."),
    )

    @field_validator("fields", mode="before")
    @classmethod
    def _one_or_more_fields(cls, value: Any) -> Any:
        return one_or_more_names(value, "fields")

    @field_validator("fields")
    @classmethod
    def _some_field(cls, fields: list[str]) -> list[str]:  # a list: see _one_or_more_fields
        if not fields:
            raise SettingError("fields", "must name at least one field (got [])")
        return fields

    @field_validator("reference", mode="before")
    @classmethod
    def _one_or_more_paths(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):  # the Python API may hand in pathlib paths
            value = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        return one_or_more_names(value, "reference")

    @field_validator("reference")
    @classmethod
    def _some_path(cls, paths: list[str] | None) -> list[str] | None:
        if paths is not None and not paths:
            raise SettingError("reference", "must name at least one file or folder (got []); leave it out for none")
        return paths

    @field_validator("policy", mode="before")
    @classmethod
    def _streaming_policy(cls, value: Any) -> Any:
        if value == "longest":
            raise SettingError(
                "policy",
                (
                    "'longest' needs the whole dataset; a streaming step can only use 'first' or 'tag'. Use "
                    "`joyforge dedup DATA -o OUT --policy longest` (or joydataforge.text.minhash_dedup.deduplicate) "
                    "instead"
                ),
            )
        return value

    @model_validator(mode="after")
    def _bands_fit(self) -> "MinHashDedupConfig":
        problem = banding_problem(self.threshold, self.num_perm)
        if problem:
            raise SettingError("num_perm", problem)
        return self
