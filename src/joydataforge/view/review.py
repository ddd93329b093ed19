"""Human review: accept, reject or edit a record and leave a note, kept in a sidecar file beside the data.

The data is never rewritten. Each decision appends one JSON line to the sidecar (``review.jsonl`` in a
run folder, ``<name>.review.jsonl`` beside any other file). A line holds the record's *whole* review
state (status, note, edited record), so the last line of a record wins, nothing is ever updated in
place, and the file doubles as the history of who changed their mind. A torn last line (a crash during
the write) is skipped, and the next append starts on a fresh line.

A record is named by its id (its ``id`` field, else a hash of its content: the ids a run assigns, see
:func:`~joydataforge.records.record_id`) and its occurrence ``n`` in the file: 1 for the first record
with that id, 2 for the next, so that two records sharing an id (a copy-pasted line) are reviewed apart.
:class:`ReviewApplier` finds the same names again while streaming the file, which is how
``joyforge export --reviewed`` applies the review: rejected records are dropped, edits replace the
record, notes are kept on request.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import record_id

REVIEW_FILE = "review.jsonl"
STATUSES = ("accepted", "rejected")
_RUN_MARKERS = ("ledger.jsonl", "run.json")


@dataclass(frozen=True)
class Review:
    """One record's review state. ``status`` is ``accepted``, ``rejected`` or None (a note or an edit only)."""

    id: str
    n: int = 1
    status: str | None = None
    note: str = ""
    edited: dict[str, Any] | None = None
    at: str = ""

    @property
    def empty(self) -> bool:
        return self.status is None and not self.note and self.edited is None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "n": self.n,
            "status": self.status,
            "note": self.note,
            "edited": self.edited,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, value: Any) -> Review:
        """A sidecar line; ValueError naming the problem when it is not a review."""
        if not isinstance(value, dict) or not isinstance(value.get("id"), str):
            raise ValueError("a review line must be an object with a string 'id'")
        n = value.get("n", 1)
        status = value.get("status")
        edited = value.get("edited")
        note = value.get("note") or ""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"'n' must be a whole number >= 1, not {n!r}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"'status' must be one of {', '.join(STATUSES)} or null, not {status!r}")
        if edited is not None and not isinstance(edited, dict):
            raise ValueError("'edited' must be a JSON object (the whole edited record) or null")
        if not isinstance(note, str):
            raise ValueError("'note' must be a string")
        return cls(value["id"], n, status, note, edited, str(value.get("at") or ""))


def review_path_for(data: str | Path) -> Path:
    """The sidecar of a run folder or data file: ``review.jsonl`` in a run folder (also for its
    ``data.jsonl``), ``<stem>.review.jsonl`` beside any other file."""
    path = Path(data)
    if path.is_dir():
        return path / REVIEW_FILE
    if path.name == "data.jsonl" and any((path.parent / marker).exists() for marker in _RUN_MARKERS):
        return path.parent / REVIEW_FILE
    return path.with_name(f"{path.stem}.review.jsonl")


class ReviewStore:
    """The reviews of one data file, read from its sidecar and appended to it.

    :meth:`refresh` reads what another process appended since (two viewers of one folder stay in step);
    :meth:`put` appends one line with a single write and fsyncs it: a reviewer's clicks are work that a
    power cut must not take back.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reviews: dict[tuple[str, int], Review] = {}
        self._read_to = 0
        self.bad_lines = 0
        self.refresh()

    def refresh(self) -> bool:
        """Read the lines appended since the last read; True when there were any."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size < self._read_to:  # replaced by a shorter file: read it again from the start
            self._reviews.clear()
            self._read_to = 0
            self.bad_lines = 0
        if size == self._read_to:
            return False
        with self.path.open("rb") as handle:
            handle.seek(self._read_to)
            chunk = handle.read(size - self._read_to)
        end = chunk.rfind(b"\n") + 1  # a torn last line is left for later (or for good)
        for raw in chunk[:end].splitlines():
            if not raw.strip():
                continue
            try:
                review = Review.from_json(json.loads(raw))
            except ValueError:  # json.JSONDecodeError is a ValueError
                self.bad_lines += 1
                continue
            self._store(review)
        self._read_to += end
        return end > 0

    def _store(self, review: Review) -> None:
        key = (review.id, review.n)
        if review.empty:
            self._reviews.pop(key, None)
        else:
            self._reviews[key] = review

    def get(self, record_id: str, n: int = 1) -> Review | None:
        return self._reviews.get((record_id, n))

    def put(
        self,
        record_id: str,
        n: int = 1,
        *,
        status: str | None = None,
        note: str = "",
        edited: dict[str, Any] | None = None,
    ) -> Review:
        """Record a record's new review state (all of it: what is not given is cleared)."""
        at = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        review = Review.from_json({"id": record_id, "n": n, "status": status, "note": note, "edited": edited, "at": at})
        self.refresh()
        line = (json.dumps(review.as_json(), ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # after a torn line: never glue a review onto it
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.refresh()
        return review

    def __len__(self) -> int:
        return len(self._reviews)

    def __iter__(self) -> Iterator[Review]:
        return iter(list(self._reviews.values()))

    def counts(self) -> dict[str, int]:
        counts = Counter({"accepted": 0, "rejected": 0, "edited": 0, "noted": 0})
        for review in self._reviews.values():
            if review.status:
                counts[review.status] += 1
            counts["edited"] += review.edited is not None
            counts["noted"] += bool(review.note)
        return dict(counts)


@dataclass
class ReviewApplier:
    """Apply a review to the records of its file, streamed in file order: ``applier(record)`` is the
    record to export (edited when it was edited) or None when it is dropped.

    Only the ids that have a review are counted while streaming, so memory grows with the review, not
    with the data. ``keep_notes`` adds ``review: {status, note}`` to reviewed records; ``accepted_only``
    drops every record not accepted.
    """

    store: ReviewStore
    keep_notes: bool = False
    accepted_only: bool = False
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._by_id: dict[str, dict[int, Review]] = {}
        for review in self.store:
            self._by_id.setdefault(review.id, {})[review.n] = review
        self._seen: Counter = Counter()

    def __call__(self, record: dict[str, Any]) -> dict[str, Any] | None:
        rid = record_id(record)
        reviews = self._by_id.get(rid)
        review = None
        if reviews is not None:
            self._seen[rid] += 1
            review = reviews.get(self._seen[rid])
        if review is None:
            if self.accepted_only:
                self.stats["dropped_unreviewed"] += 1
                return None
            self.stats["unreviewed"] += 1
            return record
        self.stats["matched"] += 1
        if review.status == "rejected" or (self.accepted_only and review.status != "accepted"):
            self.stats["dropped_rejected" if review.status == "rejected" else "dropped_unreviewed"] += 1
            return None
        out = dict(review.edited) if review.edited is not None else record
        self.stats["edited"] += review.edited is not None
        self.stats["accepted"] += review.status == "accepted"
        if self.keep_notes:
            out = {**out, "review": {"status": review.status, "note": review.note}}
        return out

    def unmatched(self) -> int:
        """Reviews no record of the file matched (the data changed since, or the review is of another file)."""
        return sum(1 for rid, reviews in self._by_id.items() for n in reviews if n > self._seen.get(rid, 0))
