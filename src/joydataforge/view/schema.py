"""The viewer's SQLite index: its tables, and why they are shaped so.

``rows`` has one narrow row per record line: where the line is (file, line number, byte offset, length),
its status (``kept`` in data.jsonl, ``failed`` in failures.jsonl, ``dropped`` by a filter step per the
ledger, ``bad`` when the line is not a JSON object), its id and occurrence ``n`` (the review's key, see
:mod:`.review`) and its kinds (:mod:`.shapes`) for display.

Each filterable field has a table of its own, ``v<N>(v, rid)`` keyed by value then row (``fields`` maps
the dotted path to it), holding one row per value a record has: a list field (``task_label``) gives one
row per element. A filter is then a range of one small B-tree (``label=BMI``, ``score>=90``), several
filters the intersection of their rid sets, a count the size of that set: no filter scans the records or
a wide table, which is what keeps a filtered page of a million records far under a second. The values of
one field are also its menu (``GROUP BY v`` walks the key order). Kinds have the same shape (``kinds``).

``texts`` holds each record's search text (:func:`~.fields.search_text`) and ``search`` is an FTS5 trigram
index over it (substring search in any script, Chinese included); without FTS5 the viewer scans ``texts``.
``inputs`` maps the ids of the run's input records (``--input``) to their lines.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = "2"
MAX_FIELDS = 1000  # field paths beyond this many get no table (they stay visible, not filterable)

ROW_COLUMNS = ("rid", "fid", "line", "off", "len", "status", "id", "n", "kinds", "err")
KIND_SEP = " "  # kinds are identifiers: a space-separated list for display

TABLES = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS files(fid INTEGER PRIMARY KEY, role TEXT, path TEXT);
CREATE TABLE IF NOT EXISTS rows(
    rid INTEGER PRIMARY KEY, fid INTEGER, line INTEGER, off INTEGER, len INTEGER,
    status TEXT, id TEXT, n INTEGER, kinds TEXT, err TEXT
);
CREATE INDEX IF NOT EXISTS rows_id ON rows(id, n);
CREATE INDEX IF NOT EXISTS rows_status ON rows(status);
CREATE TABLE IF NOT EXISTS fields(
    path TEXT PRIMARY KEY, tab TEXT, kind TEXT, seen INTEGER, many INTEGER, multi INTEGER
);
CREATE TABLE IF NOT EXISTS kinds(v TEXT, rid INTEGER, PRIMARY KEY(v, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS texts(rid INTEGER PRIMARY KEY, t TEXT);
CREATE TABLE IF NOT EXISTS inputs(id TEXT, n INTEGER, fid INTEGER, off INTEGER, len INTEGER, PRIMARY KEY(id, n))
    WITHOUT ROWID;
"""


def value_table_sql(table: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table}(v, rid INTEGER, PRIMARY KEY(v, rid)) WITHOUT ROWID"


def connect(path: str) -> sqlite3.Connection:
    """A connection in WAL mode, so that pages are served while the builder writes."""
    db = sqlite3.connect(path, check_same_thread=False, cached_statements=512)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # a cache: a crash means a rebuild, never lost data
    db.execute("PRAGMA temp_store=MEMORY")
    db.execute("PRAGMA cache_size=-65536")  # 64 MiB
    return db


def fts5_trigram_available() -> bool:
    """FTS5 with the trigram tokenizer (SQLite >= 3.34, compiled with FTS5): substring search, any script."""
    try:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE VIRTUAL TABLE probe USING fts5(t, tokenize='trigram')")
        db.close()
        return True
    except sqlite3.Error:
        return False


def stored(value: object) -> object:
    """A scalar as its value table keeps it (booleans as 1/0), or None when it is not kept (null)."""
    if value is True:
        return 1
    if value is False:
        return 0
    return value
