"""Build the viewer's index once, streaming, in a worker thread, while the first pages are already served.

One pass over each file: every line's offset and length, its filterable values (:mod:`.fields`) in their
value tables (:mod:`.schema`), its search text. The first :data:`FIRST_BATCH` lines are committed at once
and the rest every :data:`BATCH` lines, so the table shows while the build runs, whatever the size.
Memory stays flat: only the batch and each field's first :data:`~.fields.PROBATION` values are held; the
occurrence number of a repeated id is looked up in the index being built, not in a set of every id.

Phases, reported through :class:`Progress` (the page polls it): ``copying`` (a Parquet or other non-JSONL
file is written out as JSONL in the cache once), ``rows`` (data.jsonl, failures.jsonl, then the ledger's
dropped ids), ``inputs`` (the run's input file, with ``--input``), ``search`` (the FTS5 index, built by
SQLite from ``texts`` in one statement), ``done``. The index is reused while its sources' sizes and
modification times stay the same (:meth:`~.dataset.Dataset.signature`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.readers import iter_records
from ..io.writers import dumps_line
from ..records import record_id
from .dataset import Dataset
from .fields import MAX_VALUE_CHARS, PROBATION, FieldStats, field_values, search_text
from .schema import (
    KIND_SEP,
    MAX_FIELDS,
    ROW_COLUMNS,
    SCHEMA_VERSION,
    TABLES,
    connect,
    fts5_trigram_available,
    stored,
    value_table_sql,
)
from .shapes import is_failure, kinds_of, source_id

log = logging.getLogger(__name__)

BATCH = 5000
FIRST_BATCH = 100
STATUS_OF_ROLE = {"data": "kept", "failures": "failed"}
_NEW = object()  # a field path met for the first time
_INSERT_ROW = f"INSERT INTO rows({', '.join(ROW_COLUMNS)}) VALUES({', '.join('?' * len(ROW_COLUMNS))})"
_REPEAT = re.compile(r"^(.*)#(\d+)$")


@dataclass
class Progress:
    """Where the build is; read by the server thread (plain attributes: each write is atomic)."""

    phase: str = "starting"
    total_bytes: int = 0
    done_bytes: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    rows_seconds: float | None = None  # when the table and its filters were complete
    seconds: float | None = None  # when everything (search included) was
    search: str = "pending"  # pending | ready | scan (no FTS5: search scans the texts)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    def as_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "total_bytes": self.total_bytes,
            "done_bytes": self.done_bytes,
            "rows": self.rows,
            "rows_seconds": self.rows_seconds,
            "seconds": self.seconds,
            "search": self.search,
            "error": self.error,
            "elapsed": round(time.monotonic() - self.started, 3),
        }


def index_path(dataset: Dataset) -> Path:
    name = "index.sqlite" if dataset.run else f"{dataset.data.name}.sqlite"  # type: ignore[union-attr]
    return dataset.cache / name


def is_current(path: Path, signature: str) -> bool:
    """Whether ``path`` is a finished index of the sources as they are now."""
    if not path.exists():
        return False
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return meta.get("version") == SCHEMA_VERSION and meta.get("signature") == signature and meta.get("state") == "done"


def remove_index(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


class IndexBuilder:
    """Builds the index of ``dataset`` at ``path``; :meth:`start` runs :meth:`build` in a daemon thread."""

    def __init__(self, dataset: Dataset, path: Path, progress: Progress | None = None):
        self.dataset = dataset
        self.path = path
        self.progress = progress or Progress()
        self.signature = dataset.signature()
        self.stats: dict[str, FieldStats] = {}  # every field met, with what its first values looked like
        self.probation: dict[str, FieldStats] = {}  # fields whose first values are still being looked at
        self.tables: dict[str, str | None] = {}  # path -> its value table; None: not kept (free text, cap)
        self._table_count = 0
        self._orphans: list[str] = []  # tables of fields that turned out to be free text
        self.multi: set[str] = set()  # paths that held a list at least once
        self._pending: dict[str, list[tuple[Any, int]]] = {}  # value table -> (value, rid) of this batch
        self._batches = 0
        self.thread: threading.Thread | None = None
        self.db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Create an empty index (tables, files) synchronously, so readers can open it at once."""
        remove_index(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(str(self.path))
        db.executescript(TABLES)
        db.executemany(
            "INSERT INTO meta(k, v) VALUES(?, ?)",
            [("version", SCHEMA_VERSION), ("state", "building"), ("signature", self.signature)],
        )
        for fid, (role, path) in enumerate(self.dataset.sources(), start=1):
            db.execute("INSERT INTO files(fid, role, path) VALUES(?, ?, ?)", (fid, role, str(path)))
        db.commit()
        self.db = db
        self.progress.total_bytes = sum(path.stat().st_size for _, path in self.dataset.sources())

    def start(self) -> threading.Thread:
        if self.db is None:
            self.prepare()
        self.thread = threading.Thread(target=self.build, name="joyforge-view-index", daemon=True)
        self.thread.start()
        return self.thread

    def build(self) -> None:
        """All phases; an error ends the build with ``progress.error`` set (the viewer shows it)."""
        if self.db is None:
            self.prepare()
        assert self.db is not None
        progress = self.progress
        try:
            files = {
                role: (fid, Path(path)) for fid, role, path in self.db.execute("SELECT fid, role, path FROM files")
            }
            for role in ("data", "failures"):
                if role in files:
                    fid, path = files[role]
                    self._index_lines(fid, self._as_jsonl(role, path), STATUS_OF_ROLE[role])
            if "ledger" in files:
                self._index_dropped(*files["ledger"])
            self._save_fields()
            self._drop_free_text()
            progress.rows_seconds = round(time.monotonic() - progress.started, 3)
            if "input" in files:
                progress.phase = "inputs"
                fid, path = files["input"]
                self._index_inputs(fid, self._as_jsonl("input", path))
            self._build_search()
            self.db.execute("UPDATE meta SET v = 'done' WHERE k = 'state'")
            self.db.commit()
            progress.seconds = round(time.monotonic() - progress.started, 3)
            progress.phase = "done"
        except Exception as exc:  # the thread's only report is the progress the page shows
            log.exception("building the view index failed")
            progress.error = f"{type(exc).__name__}: {exc}"
            progress.phase = "failed"
        finally:
            self.db.close()
            self.db = None

    # ------------------------------------------------------------------ sources

    def _as_jsonl(self, role: str, path: Path) -> Path:
        """The file itself when it is JSONL, else its JSONL copy in the cache (written once per index)."""
        if self.dataset.is_jsonl(path):
            return path
        self.progress.phase = "copying"
        copy = self.dataset.cache / f"{role}.{path.name}.jsonl"
        temporary = copy.with_name(copy.name + ".tmp")
        with open(temporary, "wb") as out:
            for item in iter_records(path):
                if item.error is not None:
                    out.write(dumps_line({"_view_error": str(item.error)}))
                else:
                    out.write(dumps_line(item.record or {}))
        os.replace(temporary, copy)
        assert self.db is not None
        self.db.execute("UPDATE files SET path = ? WHERE role = ?", (str(copy), role))
        self.db.commit()
        return copy

    # ------------------------------------------------------------------ rows

    def _index_lines(self, fid: int, path: Path, status: str) -> None:
        self.progress.phase = "rows"
        batch: list[tuple[int, int, int, bytes]] = []
        position = 0
        size = FIRST_BATCH if self.progress.rows == 0 else BATCH  # the first page shows before the rest is read
        with open(path, "rb") as handle:
            for line, raw in enumerate(handle, start=1):
                length = len(raw)
                if raw.strip():
                    batch.append((line, position, length, raw))
                position += length
                if len(batch) >= size:
                    size = BATCH
                    self._flush(fid, status, batch)
                    self.progress.done_bytes += sum(item[2] for item in batch)
                    batch = []
        if batch:
            self._flush(fid, status, batch)
            self.progress.done_bytes += sum(item[2] for item in batch)

    def _flush(self, fid: int, status: str, batch: list[tuple[int, int, int, bytes]]) -> None:
        """Index one batch of lines. Each record is parsed, turned into its row and values and let go before
        the next is parsed: holding a batch of parsed records doubles the cost of parsing them."""
        assert self.db is not None
        failed = status == "failed"
        first_rid = self.progress.rows + 1
        rows: list[list[Any]] = []
        texts: list[tuple[int, str]] = []
        kinds_rows: list[tuple[str, int]] = []
        for k, (line, offset, length, raw) in enumerate(batch):
            rid = first_rid + k
            record, error = _parse(raw)
            record_key = self._id_of(record, status, line)
            kinds: list[str] = []
            if record is not None:
                self._keep_values(rid, field_values(record))
                kinds = kinds_of(record, failed=failed)
                kinds_rows.extend((kind, rid) for kind in kinds)
                texts.append((rid, search_text(record, record_key)))
            else:
                texts.append((rid, record_key))
            rows.append(
                [rid, fid, line, offset, length, "bad" if error else status, record_key, 1, KIND_SEP.join(kinds), error]
            )
        for row, n in zip(rows, self._occurrences([row[6] for row in rows])):
            row[7] = n
        self.db.executemany(_INSERT_ROW, rows)
        self.db.executemany("INSERT OR IGNORE INTO kinds(v, rid) VALUES(?, ?)", kinds_rows)
        self.db.executemany("INSERT INTO texts(rid, t) VALUES(?, ?)", texts)
        for table, values in self._pending.items():
            if values:
                self.db.executemany(f"INSERT OR IGNORE INTO {table}(v, rid) VALUES(?, ?)", values)
        self._pending = {}
        self.db.commit()
        self.progress.rows += len(batch)
        self._batches += 1
        if self._batches % 20 == 1:  # the filter bar's field list fills while the build runs
            self._save_fields()

    def _id_of(self, record: dict[str, Any] | None, status: str, line: int) -> str:
        if record is None:
            return f"line {line}"
        if status == "failed" and is_failure(record):
            return str(record.get("id") or source_id(record) or record_id(record))
        return record_id(record)

    def _occurrences(self, ids: list[str]) -> list[int]:
        """Each id's occurrence number: 1, or one more than the rows already indexed with it (in this file
        or an earlier one: a failure's id is its input's, which no kept record of a run shares)."""
        assert self.db is not None
        known: dict[str, int] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(
                self.db.execute(f"SELECT id, max(n) FROM rows WHERE id IN ({marks}) GROUP BY id", chunk).fetchall()
            )
        out = []
        for record_key in ids:
            known[record_key] = known.get(record_key, 0) + 1
            out.append(known[record_key])
        return out

    def _keep_values(self, rid: int, values: dict[str, Any]) -> None:
        """Queue ``(value, rid)`` for each field's table. A field's first values also decide whether it is
        kept at all (:class:`~.fields.FieldStats`); after that it costs one dict lookup per record."""
        tables, probation, stats, pending = self.tables, self.probation, self.stats, self._pending
        for path, value in values.items():
            table = tables.get(path, _NEW)
            if table is None:
                continue
            if path in probation or path not in stats:
                entry = probation.get(path)
                if entry is None:
                    entry = probation[path] = stats[path] = FieldStats(path)
                entry.add(value)
                if entry.settled:
                    del probation[path]
                    if entry.free_text:
                        if isinstance(table, str):
                            self._orphans.append(table)
                        tables[path] = None
                        continue
            if type(value) is list:
                self.multi.add(path)
                items = value
            else:
                items = (value,)
            for item in items:
                if item is None or (type(item) is str and len(item) > MAX_VALUE_CHARS):
                    continue
                if table is _NEW:
                    table = self._add_table(path)
                    if table is None:
                        break
                queue = pending.get(table)
                if queue is None:
                    queue = pending[table] = []
                queue.append((stored(item), rid))

    def _add_table(self, path: str) -> str | None:
        assert self.db is not None
        if self._table_count >= MAX_FIELDS:
            self.tables[path] = None
            return None
        self._table_count += 1
        table = f"v{self._table_count}"
        self.db.execute(value_table_sql(table))
        self.tables[path] = table
        return table

    def _index_dropped(self, fid: int, path: Path) -> None:
        """Ledger ids whose last status is ``filtered``: records a filter step dropped (no line of their own)."""
        assert self.db is not None
        dropped: dict[str, tuple[int, int, int]] = {}
        position = 0
        with open(path, "rb") as handle:
            for line, raw in enumerate(handle, start=1):
                length = len(raw)
                try:
                    entry = json.loads(raw)
                    rid_, status = str(entry["id"]), entry["status"]
                except (ValueError, KeyError, TypeError):
                    position += length
                    continue
                if status == "filtered":
                    dropped.pop(rid_, None)
                    dropped[rid_] = (line, position, length)
                else:
                    dropped.pop(rid_, None)
                position += length
        self.progress.done_bytes += position
        rows = []
        next_rid = self.progress.rows + 1
        for k, (rid_, (line, offset, length)) in enumerate(dropped.items()):
            rows.append((next_rid + k, fid, line, offset, length, "dropped", rid_, 1, "", None))
        self.db.executemany(_INSERT_ROW, rows)
        self.db.executemany("INSERT INTO texts(rid, t) VALUES(?, ?)", [(row[0], row[6]) for row in rows])
        self.db.commit()
        self.progress.rows += len(rows)

    def _save_fields(self) -> None:
        assert self.db is not None
        self.db.execute("DELETE FROM fields")
        self.db.executemany(
            "INSERT INTO fields(path, tab, kind, seen, many, multi) VALUES(?, ?, ?, ?, ?, ?)",
            [
                (
                    path,
                    self.tables.get(path),
                    stats.kind,
                    stats.seen,
                    int(len(stats.distinct) >= PROBATION // 2),
                    int(path in self.multi),
                )
                for path, stats in self.stats.items()
            ],
        )
        self.db.commit()

    def _drop_free_text(self) -> None:
        """The tables of fields found to be free text after their first values were kept: freed."""
        assert self.db is not None
        for table in self._orphans:
            self.db.execute(f"DROP TABLE IF EXISTS {table}")
        self._orphans.clear()
        self.db.commit()

    # ------------------------------------------------------------------ inputs and search

    def _index_inputs(self, fid: int, path: Path) -> None:
        """The run's input records by the ids the run gave them (their own id, ``#n`` for repeats)."""
        assert self.db is not None
        batch: list[tuple[str, int, int, int, int]] = []
        position = 0
        with open(path, "rb") as handle:
            for raw in handle:
                length = len(raw)
                if raw.strip():
                    try:
                        value = json.loads(raw)
                    except ValueError:
                        value = None
                    if isinstance(value, dict) and "_view_error" not in value:
                        batch.append((record_id(value), 0, fid, position, length))
                position += length
                if len(batch) >= BATCH:
                    self._insert_inputs(fid, batch)
                    batch = []
        self._insert_inputs(fid, batch)
        self.progress.done_bytes += position

    def _insert_inputs(self, fid: int, batch: list[tuple[str, int, int, int, int]]) -> None:
        assert self.db is not None
        if not batch:
            return
        known: dict[str, int] = {}
        unique = list(dict.fromkeys(item[0] for item in batch))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(self.db.execute(f"SELECT id, max(n) FROM inputs WHERE id IN ({marks}) GROUP BY id", chunk))
        rows = []
        for rid_, _, fid_, offset, length in batch:
            known[rid_] = known.get(rid_, 0) + 1
            rows.append((rid_, known[rid_], fid_, offset, length))
        self.db.executemany("INSERT OR REPLACE INTO inputs(id, n, fid, off, len) VALUES(?, ?, ?, ?, ?)", rows)
        self.db.commit()

    def _build_search(self) -> None:
        """The FTS5 trigram index over ``texts``, by SQLite itself; without FTS5 search scans ``texts``."""
        assert self.db is not None
        if not fts5_trigram_available():
            self.progress.search = "scan"
            self.db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES('search', 'scan')")
            self.db.commit()
            return
        self.progress.phase = "search"
        self.db.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(t, content='texts', content_rowid='rid', "
            "tokenize='trigram', detail='full')"
        )
        self.db.execute("INSERT INTO search(search) VALUES('rebuild')")
        self.db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES('search', 'fts')")
        self.db.commit()
        self.progress.search = "ready"


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)``, or ``(None, why the line is not a record)``."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    if "_view_error" in value and len(value) == 1:  # a bad item of a copied Parquet/CSV/... file
        return None, str(value["_view_error"])
    return value, None


def split_repeat(source: str) -> tuple[str, int]:
    """An assigned id ``abc#2`` -> (``abc``, 2): the second input record whose own id was ``abc``."""
    match = _REPEAT.match(source)
    return (match.group(1), int(match.group(2))) if match else (source, 1)
