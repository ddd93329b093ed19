"""The viewer's reading side: pages of rows from the index, records read by offset, lookups for lineage.

:class:`ViewIndex` opens the index of a dataset (building it first, in a worker thread, when it is
missing or stale: see :mod:`.build`) and answers the server's questions. A page is one SQL query (the
filters' rid set, :mod:`.query`, then the first rows of it) plus one ``pread`` per row of the page; the
data file is never read sequentially after the build. The review's state is mirrored in a temporary
table of this connection, so ``review=accepted`` is a filter like any other.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import IndexBuilder, Progress, index_path, is_current, split_repeat
from .dataset import Dataset
from .query import Condition, Field, RidSet, rid_set
from .review import Review, ReviewStore
from .schema import KIND_SEP, connect

Record = dict[str, Any]
ROW_COLUMNS = "rows.rid, rows.fid, rows.line, rows.off, rows.len, rows.status, rows.id, rows.n, rows.kinds, rows.err"
MAX_PAGE = 500


@dataclass(frozen=True)
class Row:
    """Where one record is, and what the index knows of it without reading it."""

    rid: int
    fid: int
    line: int
    offset: int
    length: int
    status: str
    id: str
    n: int
    kinds: tuple[str, ...]
    error: str | None

    @classmethod
    def from_sql(cls, values: tuple[Any, ...]) -> Row:
        rid, fid, line, offset, length, status, id_, n, kinds, error = values
        return cls(rid, fid, line, offset, length, status, id_, n, tuple(kinds.split(KIND_SEP)) if kinds else (), error)


@dataclass
class Page:
    rows: list[tuple[Row, Record | None]]
    total: int
    offset: int


class ViewIndex:
    """One dataset's index, its files and its review: everything the server reads."""

    def __init__(self, dataset: Dataset, *, rebuild: bool = False):
        self.dataset = dataset
        self.path = index_path(dataset)
        self.progress = Progress()
        self.builder: IndexBuilder | None = None
        self.signature = dataset.signature()  # the sources as indexed: a change later is shown as stale
        if rebuild or not is_current(self.path, self.signature):
            self.builder = IndexBuilder(dataset, self.path, self.progress)
            self.builder.prepare()
        else:
            self._mark_ready()
        self.db = connect(str(self.path))
        self.db.execute("CREATE TEMP TABLE reviews(id TEXT, n INTEGER, status TEXT, edited INTEGER, noted INTEGER)")
        self.db.execute("CREATE UNIQUE INDEX temp.reviews_key ON reviews(id, n)")
        self.review = ReviewStore(dataset.review)
        self._mirror(self.review)
        self._fds: dict[int, int] = {}

    def _mark_ready(self) -> None:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
            self.progress.rows = db.execute("SELECT count(*) FROM rows").fetchone()[0]
        finally:
            db.close()
        self.progress.phase = "done"
        self.progress.search = "ready" if meta.get("search") == "fts" else "scan"
        self.progress.rows_seconds = self.progress.seconds = 0.0

    def start(self) -> None:
        """Start the build (when one is needed) in its worker thread."""
        if self.builder is not None and self.builder.thread is None:
            self.builder.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the build is finished (tests, the bench); True when it is."""
        if self.builder is not None and self.builder.thread is not None:
            self.builder.thread.join(timeout)
        return self.progress.finished

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.db.close()

    # ------------------------------------------------------------------ fields and counts

    def fields(self) -> dict[str, Field]:
        return {
            path: Field(path, table, kind, bool(multi))
            for path, table, kind, multi in self.db.execute("SELECT path, tab, kind, multi FROM fields")
        }

    def field_menu(self) -> list[dict[str, Any]]:
        """Every field with its kind and whether it can be filtered (free text cannot: search it)."""
        return [
            {"path": path, "kind": kind, "filterable": table is not None, "multi": bool(multi)}
            for path, table, kind, multi in self.db.execute(
                "SELECT path, tab, kind, multi FROM fields ORDER BY tab IS NULL, seen DESC, path"
            )
        ]

    def values(self, path: str, limit: int = 40) -> dict[str, Any]:
        """A field's commonest values with the number of records that have each (a number field: its
        range), read from its value table in key order."""
        if path == "status":
            sql = "SELECT status, count(*) FROM rows GROUP BY status ORDER BY 2 DESC, 1 LIMIT ?"
            return {"path": path, "values": [list(r) for r in self.db.execute(sql, (limit,))], "range": None}
        known = self.fields().get(path)
        table = "kinds" if path == "kind" else (known.table if known else None)
        if table is None:
            return {"path": path, "values": [], "range": None}
        if known is not None and known.kind == "number":
            low, high, count = self.db.execute(
                f"SELECT min(v), max(v), count(DISTINCT rid) FROM {table} WHERE typeof(v) IN ('integer', 'real')"
            ).fetchone()
            return {"path": path, "values": [], "range": {"min": low, "max": high, "count": count}}
        ranked = self.db.execute(f"SELECT v, count(*) FROM {table} GROUP BY v ORDER BY 2 DESC, 1 LIMIT ?", (limit,))
        return {"path": path, "values": [list(r) for r in ranked], "range": None}

    def counts(self) -> dict[str, int]:
        counts = {"kept": 0, "failed": 0, "dropped": 0, "bad": 0}
        counts.update(dict(self.db.execute("SELECT status, count(*) FROM rows GROUP BY status").fetchall()))
        return counts

    def kinds(self) -> dict[str, int]:
        """How many rows of each kind."""
        return dict(self.db.execute("SELECT v, count(*) FROM kinds GROUP BY v").fetchall())

    # ------------------------------------------------------------------ pages

    def matching(self, conditions: list[Condition], search: str = "") -> RidSet:
        """The rows the filters and the search match (a SQL set, not read yet)."""
        return rid_set(conditions, self.fields(), search, fts=self.progress.search == "ready")

    def page(
        self,
        conditions: list[Condition],
        search: str = "",
        *,
        offset: int = 0,
        limit: int = 50,
        sort: str | None = None,
        descending: bool = False,
        count: bool = True,
    ) -> Page:
        """One page of rows matching the filters and the search, with their records read from disk.

        Sorted by a field (one value per record), the page lists the records that have that field, in the
        order of its value table's key.
        """
        rids = self.matching(conditions, search)
        limit = max(1, min(limit, MAX_PAGE))
        known = self.fields().get(sort) if sort else None
        if known is not None and known.table and not known.multi:
            keep = "" if rids.everything else f"WHERE s.rid IN ({rids.sql})"
            sql = (
                f"SELECT {ROW_COLUMNS} FROM {known.table} AS s JOIN rows ON rows.rid = s.rid {keep} "
                f"ORDER BY s.v {'DESC' if descending else 'ASC'}, s.rid LIMIT ? OFFSET ?"
            )
            counted = f"SELECT count(*) FROM {known.table} AS s {keep}"
        else:
            keep = "" if rids.everything else f"WHERE rows.rid IN ({rids.sql})"
            sql = f"SELECT {ROW_COLUMNS} FROM rows {keep} ORDER BY rows.rid LIMIT ? OFFSET ?"
            counted = "SELECT count(*) FROM rows" if rids.everything else f"SELECT count(*) FROM ({rids.sql})"
        rows = [Row.from_sql(values) for values in self.db.execute(sql, (*rids.params, limit, max(0, offset)))]
        total = self.db.execute(counted, rids.params).fetchone()[0] if count else -1
        return Page([(row, self.read(row)) for row in rows], total, offset)

    def row(self, rid: int) -> Row | None:
        values = self.db.execute(f"SELECT {ROW_COLUMNS} FROM rows WHERE rid = ?", (rid,)).fetchone()
        return Row.from_sql(values) if values else None

    def neighbours(self, rid: int, conditions: list[Condition], search: str = "") -> tuple[int | None, int | None]:
        """The rows before and after ``rid`` among those the filters match (the record page's arrows)."""
        where, params = self.matching(conditions, search).where()
        before = self.db.execute(f"SELECT max(rid) FROM rows WHERE rid < ? AND {where}", (rid, *params)).fetchone()[0]
        after = self.db.execute(f"SELECT min(rid) FROM rows WHERE rid > ? AND {where}", (rid, *params)).fetchone()[0]
        return before, after

    # ------------------------------------------------------------------ reading records

    def _fd(self, fid: int) -> int:
        fd = self._fds.get(fid)
        if fd is None:
            path = self.db.execute("SELECT path FROM files WHERE fid = ?", (fid,)).fetchone()[0]
            fd = self._fds[fid] = os.open(path, os.O_RDONLY)
        return fd

    def raw(self, fid: int, offset: int, length: int) -> bytes:
        return os.pread(self._fd(fid), length, offset)

    def read(self, row: Row) -> Record | None:
        """The record (or failure line, or ledger entry) of a row; None when its line is not an object."""
        if row.status == "bad":
            return None
        try:
            value = json.loads(self.raw(row.fid, row.offset, row.length))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def file_path(self, fid: int) -> Path:
        return Path(self.db.execute("SELECT path FROM files WHERE fid = ?", (fid,)).fetchone()[0])

    def file_role(self, fid: int) -> str:
        return self.db.execute("SELECT role FROM files WHERE fid = ?", (fid,)).fetchone()[0]

    # ------------------------------------------------------------------ lookups for the record page

    def by_id(self, record_id: str, statuses: Iterable[str] = ("kept",), limit: int = 20) -> list[tuple[Row, Record]]:
        wanted = tuple(statuses)
        marks = ",".join("?" * len(wanted))
        rows = [
            Row.from_sql(v)
            for v in self.db.execute(
                f"SELECT {ROW_COLUMNS} FROM rows WHERE id = ? AND status IN ({marks}) ORDER BY rid LIMIT ?",
                (record_id, *wanted, limit),
            )
        ]
        return [(row, record) for row in rows if (record := self.read(row)) is not None]

    def where(self, path: str, value: Any, limit: int = 50) -> list[tuple[Row, Record]]:
        """Rows whose field ``path`` has ``value`` (siblings, dedup clusters, Evol trees): one key lookup."""
        if value is None:
            return []
        known = self.fields().get(path)
        if known is None or known.table is None:
            return []
        page = self.page([Condition(path, "=", str(value))], limit=limit, count=False)
        return [(row, record) for row, record in page.rows if record is not None]

    def input_record(self, source: str | None) -> Record | None:
        """The run's input record with the id the run gave it (needs ``--input``)."""
        if not source:
            return None
        found = self.db.execute("SELECT fid, off, len FROM inputs WHERE id = ? AND n = 1", (source,)).fetchone()
        if found is None:
            base, n = split_repeat(source)
            found = self.db.execute("SELECT fid, off, len FROM inputs WHERE id = ? AND n = ?", (base, n)).fetchone()
        if found is None:
            return None
        try:
            value = json.loads(self.raw(*found))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def has_inputs(self) -> bool:
        return self.dataset.input is not None

    # ------------------------------------------------------------------ review

    def _mirror(self, store: ReviewStore) -> None:
        self.db.execute("DELETE FROM reviews")
        self.db.executemany(
            "INSERT INTO reviews(id, n, status, edited, noted) VALUES(?, ?, ?, ?, ?)",
            [(r.id, r.n, r.status, int(r.edited is not None), int(bool(r.note))) for r in store],
        )
        self.db.commit()

    def refresh_review(self) -> None:
        """Pick up what another viewer of the same data appended to the sidecar."""
        if self.review.refresh():
            self._mirror(self.review)

    def put_review(self, row: Row, **state: Any) -> Review:
        review = self.review.put(row.id, row.n, **state)
        self.db.execute("DELETE FROM reviews WHERE id = ? AND n = ?", (row.id, row.n))
        if not review.empty:
            self.db.execute(
                "INSERT INTO reviews(id, n, status, edited, noted) VALUES(?, ?, ?, ?, ?)",
                (review.id, review.n, review.status, int(review.edited is not None), int(bool(review.note))),
            )
        self.db.commit()
        return review

    def review_of(self, row: Row) -> Review | None:
        return self.review.get(row.id, row.n)
