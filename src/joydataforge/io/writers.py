"""Durable JSONL output, crash repair for resume, and JSONL -> Parquet conversion.

The output JSONL file is the source of truth for resume: a record is done when its line is in the
file. So a write must never leave half a record that a later append glues onto, and a crash must
cost at most the records in flight. :class:`JsonlAppender` writes each batch with one ``os.write``
on an ``O_APPEND`` descriptor (no user-space buffer that a kill could lose in part) and fsyncs on a
timer; :func:`repair_tail` cuts whatever a crash left torn or uncommitted at the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, JoyForgeError, Location
from .readers import PARQUET_META_KEY

log = logging.getLogger(__name__)

_TAIL_CHUNK = 1 << 16


BOOKKEEPING_COLUMN = "_meta"


def dumps_line(record: dict[str, Any]) -> bytes:
    """One record as one JSONL line: UTF-8, not ASCII-escaped (Chinese stays readable), ending in \\n.

    ``json.dumps`` escapes ``\\n`` inside strings, so a line can never be split by its content.
    """
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class JsonlAppender:
    """Append-only JSONL writer whose batches reach the file whole or (after a crash) torn only at the end.

    ``fsync_every``: a write fsyncs when at least that many seconds passed since the last fsync (0:
    every write; ``None``: only :meth:`sync` and :meth:`close` do). Without fsync a ``kill -9`` loses
    nothing -- the kernel has the bytes -- only a power cut or OS crash can; the timer bounds that loss
    without paying an fsync per batch. Call :meth:`sync` when a run goes idle.
    """

    def __init__(self, path: str | Path, *, fsync_every: float | None = 1.0):
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._check_tail()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self._last_sync = time.monotonic()
        self._dirty = False

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` with one write call. All are serialised first, so a record that is not
        JSON-serialisable raises ``TypeError`` before anything of the batch reaches the file."""
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        if not records:
            return
        data = b"".join(dumps_line(record) for record in records)
        view = memoryview(data)
        while view:  # a regular file takes it all at once; the loop only guards against a short write
            written = os.write(self._fd, view)
            view = view[written:]
        self._dirty = True
        if self.fsync_every is not None and time.monotonic() - self._last_sync >= self.fsync_every:
            self.sync()

    def sync(self) -> None:
        """Force written lines to disk."""
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_tail(self) -> None:
        """Refuse to append after a torn line: the next record would be glued onto it and both lost.

        A last line that lacks only its newline (written by another tool) gets one.
        """
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            start, last = _last_line(handle, size)
        try:
            json.loads(last)
        except ValueError:
            raise JoyForgeError(
                f"{self.path} ends with a torn line (byte {start + 1} on); run repair_tail() on it before appending"
            ) from None
        os.write(self._fd, b"\n")


def repair_tail(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Cut the end of a JSONL file back to its last committed record; return the number of lines cut.

    From the end, lines are removed while they are torn (a ``kill -9`` in the middle of a write), not
    JSON, blank, or rejected by ``keep`` (say, records of a batch whose commit marker was never
    written). The first line ``keep`` accepts stops the scan: everything before it stays, so the cost
    is proportional to the damage, not to the file. A missing file needs no repair (0).
    """
    file = Path(path)
    if not file.exists():
        return 0
    removed = 0
    with open(file, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        needs_newline = False
        while end > 0:
            start, line = _last_line(handle, end)
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and keep(record):
                    # a complete record that only lost its newline is kept and given one
                    needs_newline = end == size and not line.endswith(b"\n")
                    break
            removed += 1
            end = start
        if end < size:
            handle.truncate(end)
        if needs_newline:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    if removed:
        log.info("repair_tail: removed %d line(s) from the end of %s", removed, file)
    return removed


def _last_line(handle: Any, end: int) -> tuple[int, bytes]:
    """The line that ends at byte ``end`` (its newline included, if it has one) and its start offset.

    Reads backwards in chunks, so a huge file costs only the length of its last lines.
    """
    search_end = end - 1 if end > 0 else 0  # the newline ending this line is not its start
    position = search_end
    while position > 0:
        chunk_start = max(0, position - _TAIL_CHUNK)
        handle.seek(chunk_start)
        chunk = handle.read(position - chunk_start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            start = chunk_start + newline + 1
            break
        position = chunk_start
    else:
        start = 0
    handle.seek(start)
    return start, handle.read(end - start)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a JSONL file this package wrote (UTF-8, one object per line).

    Strict, unlike :func:`~joydataforge.io.readers.iter_records`: a bad line in an output file means
    it was damaged, so it raises :class:`InputError` with its line (run :func:`repair_tail` first
    when reading a file after a crash).
    """
    name = str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as error:
                raise InputError(f"not a valid JSONL line: {error}", Location(name, number)) from None
            if not isinstance(record, dict):
                raise InputError("expected a JSON object", Location(name, number))
            yield record


# --- Parquet -----------------------------------------------------------------------------------------


def jsonl_to_parquet(jsonl_path: str | Path, parquet_path: str | Path, *, batch_size: int = 10_000) -> int:
    """Convert a JSONL file to Parquet in two streaming passes; return the number of rows written.

    Pass one infers one Arrow type per column across all batches (ints and floats widen to float,
    missing fields and nulls are allowed, nested lists and objects become list/struct columns); pass
    two writes the batches with that schema, so memory holds one batch, never the file.

    A column whose values have no common Arrow type -- ``history`` as pairs in some records and as a
    string in others, a label that is sometimes a number and sometimes text -- is stored as JSON text
    instead of failing the conversion. Such columns are named in the file's schema metadata
    (``joydataforge`` -> ``json_columns``) and decoded back by
    :func:`~joydataforge.io.readers.iter_records`; a warning names them too.

    ``_meta`` (the run's bookkeeping: its objects differ from step to step and call to call) is always JSON text,
    so it reads back exactly. Known loss elsewhere: Parquet has no "absent" distinct from null, so a field missing
    from a record reads back as ``None`` (likewise a key missing from one object of a struct column).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns, json_columns = _infer_columns(jsonl_path, batch_size)
    names = list(columns)
    fields = [pa.field(name, pa.string() if name in json_columns else columns[name]) for name in names]
    metadata = {PARQUET_META_KEY: json.dumps({"json_columns": sorted(json_columns)}).encode()} if json_columns else None
    schema = pa.schema(fields, metadata=metadata)
    mixed = sorted(json_columns - {BOOKKEEPING_COLUMN})
    if mixed:
        log.warning("%s: column(s) %s have mixed types; stored as JSON text", jsonl_path, mixed)

    destination = Path(parquet_path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + ".tmp")
    rows = 0
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            for batch in _batches(jsonl_path, batch_size):
                arrays = []
                for field in fields:
                    values = [record.get(field.name) for record in batch]
                    if field.name in json_columns:
                        values = [None if value is None else json.dumps(value, ensure_ascii=False) for value in values]
                    arrays.append(pa.array(values, type=field.type))
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                rows += len(batch)
        os.replace(temporary, destination)  # readers never see a half-written Parquet file
    finally:
        temporary.unlink(missing_ok=True)
    return rows


def _infer_columns(jsonl_path: str | Path, batch_size: int) -> tuple[dict[str, Any], set[str]]:
    import pyarrow as pa

    types: dict[str, pa.DataType] = {}
    json_columns: set[str] = set()
    for batch in _batches(jsonl_path, batch_size):
        names = dict.fromkeys(name for record in batch for name in record)
        for name in names:
            types.setdefault(name, pa.null())
            if name in json_columns:
                continue
            try:
                inferred = pa.array([record.get(name) for record in batch]).type
                types[name] = _unify(types[name], inferred)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                json_columns.add(name)
    for name, data_type in types.items():
        if _has_empty_struct(data_type):
            json_columns.add(name)  # Parquet cannot store a struct without fields ({} everywhere)
    if BOOKKEEPING_COLUMN in types:
        json_columns.add(BOOKKEEPING_COLUMN)
    return types, json_columns


def _unify(old: Any, new: Any) -> Any:
    import pyarrow as pa

    if old == new:
        return new
    merged = pa.unify_schemas([pa.schema([("c", old)]), pa.schema([("c", new)])], promote_options="permissive")
    result = merged.field("c").type
    if pa.types.is_string(result) and not (pa.types.is_string(old) or pa.types.is_null(old)):
        # permissive promotion would turn numbers into text; mixed like that means JSON column
        raise TypeError(f"{old} and {new} have no common type")
    return result


def _has_empty_struct(data_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(data_type):
        return data_type.num_fields == 0 or any(
            _has_empty_struct(data_type.field(i).type) for i in range(data_type.num_fields)
        )
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        return _has_empty_struct(data_type.value_type)
    return False


def _batches(jsonl_path: str | Path, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in read_jsonl(jsonl_path):
        batch.append(record)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
