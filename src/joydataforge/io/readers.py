"""Read input records from JSONL, JSON, CSV, Parquet and XLSX files, or a folder of them, lazily.

Every reader yields :class:`SourceItem` objects: a record with the place it came from, or an
:class:`~joydataforge.errors.InputError` saying what is wrong with that place. A bad line never stops
the stream; whether to skip it or stop the run is the caller's policy, not the reader's. Problems that
make the whole request meaningless (a missing file, an unsupported extension, an unknown sheet) raise
:class:`InputError` instead.

Locations (``Location.line``, always 1-based):

- JSONL / NDJSON, and JSONL saved as ``.json``: the physical line in the file.
- JSON array: the element's index + 1 (a single top-level object is element 1).
- CSV and XLSX: the line/row of the file where the record starts, so the header is line 1 and the
  first record is line 2 -- what a user sees in an editor or in Excel.
- Parquet: the row number, 1-based.

Window (``start`` / ``limit``): both count *items*, good and bad alike -- every non-blank JSONL line,
array element, CSV/XLSX row or Parquet row is one item, whether it parses or not. The window is thus a
fixed slice of the input (like the seed's ``threshold_low``/``threshold``) that does not move when a
line is fixed, and ``limit`` is the exact number of items yielded. Blank lines and empty rows are not
items. Skipped items are not parsed, so skipping a million JSONL lines only costs reading them, and
Parquet row groups before ``start`` are not read at all. A file that cannot be parsed at all (a broken
JSON document, a corrupt workbook) is one error item.

Values: JSON and JSONL keep their JSON types; Parquet keeps its (nested) types, with dates and times as
ISO strings; XLSX keeps numbers and booleans, dates become ISO strings; CSV values are all strings.
A CSV or XLSX cell that holds JSON (say, a ``history`` column written as ``[["hi", "hello"]]``) stays
a string: spreadsheets have no lists, and guessing which strings were meant as JSON would silently
change data. Decode such a column in a step if you need it.

Hub paths: ``hf://datasets/OWNER/NAME[@REVISION][/PATH]`` (a file, a folder, a glob, or the whole repo) is read
like a local path, streamed from the Hugging Face Hub (see :mod:`.hub_files`); locations name the ``hf://``
file. Counting a Hub JSONL file would mean reading it whole, so :func:`count_records` gives ``None`` for one.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as _dt
import decimal
import io
import json
import zipfile
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import InputError, Location
from .encodings import describe_decode_error, resolve_encoding
from .hub_files import HubFile, hub_files, is_hub_path
from .source import SourceItem
from .taxonomy import read_taxonomy

#: Key of the Parquet schema metadata in which :func:`~joydataforge.io.writers.jsonl_to_parquet`
#: lists the columns it had to store as JSON text; the reader decodes them back.
PARQUET_META_KEY = b"joydataforge"

_PARQUET_BATCH_ROWS = 1024  # rows can be long prompts: small batches keep memory flat


# A local file, or a file on the Hugging Face Hub (read through the same readers).
InputFile = Path | HubFile

# A format reader yields the items after the first ``skip`` ones and returns how many it skipped, so a
# folder can carry the rest of the window over to the next file.
_Reader = Callable[[InputFile, "str | None", "str | None", int], Generator[SourceItem, None, int]]


def iter_records(
    path: str | Path,
    *,
    start: int = 0,
    limit: int | None = None,
    encoding: str | None = None,
    sheet: str | None = None,
) -> Iterator[SourceItem]:
    """Yield the records of a file or of every supported file in a folder, as one lazy stream.

    ``start`` skips that many items and ``limit`` caps how many are yielded; both count good and bad
    items alike (see the module docstring). ``encoding`` overrides detection for text formats;
    ``sheet`` names the XLSX sheet (default: the first). A missing path, an unsupported extension or
    an empty folder raises :class:`InputError` here, before iteration starts.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, not {start}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, not {limit}")
    files = input_files(path)
    return _windowed(files, start, limit, encoding, sheet)


def count_records(
    path: str | Path,
    *,
    start: int = 0,
    limit: int | None = None,
    encoding: str | None = None,
    sheet: str | None = None,
) -> int | None:
    """How many items :func:`iter_records` will yield with the same arguments, when that is cheap.

    JSONL (and JSONL named ``.json``) costs one pass over the bytes without parsing; Parquet reads only
    the footer. CSV (quoted fields may span lines), JSON arrays and XLSX would need a full parse, so
    they give ``None`` -- and so does a folder containing any of them.
    """
    total = 0
    for file in input_files(path):
        count = _count_file(file, encoding)
        if count is None:
            return None
        total += count
    total = max(0, total - start)
    return total if limit is None else min(total, limit)


def input_files(path: str | Path) -> list[InputFile]:
    """The files ``path`` stands for: itself, or the supported files of a folder in name order.

    Folders are walked recursively; files and folders whose name starts with ``.`` (``.DS_Store``,
    ``.ipynb_checkpoints``) or ``~$`` (Excel's lock files) are ignored, and so are files of other types
    (a README beside the data), so that pointing at a data folder just works. An ``hf://`` path lists the
    Hub's files by the same rules (:func:`~joydataforge.io.hub_files.hub_files`).
    """
    if is_hub_path(path):
        return list(hub_files(path, SUPPORTED_SUFFIXES))
    root = Path(path)
    if not root.exists():
        raise InputError("no such file or folder", Location(str(root)))
    if root.is_dir():
        files = [
            file
            for file in root.rglob("*")
            if file.is_file()
            and file.suffix.lower() in _READERS
            and not any(part.startswith((".", "~$")) for part in file.relative_to(root).parts)
        ]
        if not files:
            raise InputError(f"the folder holds no input files ({_supported()})", Location(str(root)))
        return sorted(files, key=lambda file: file.relative_to(root).parts)
    if root.suffix.lower() not in _READERS:
        raise InputError(f"unsupported file type {root.suffix or '(none)'!r}; use {_supported()}", Location(str(root)))
    return [root]


def _windowed(
    files: list[InputFile], start: int, limit: int | None, encoding: str | None, sheet: str | None
) -> Iterator[SourceItem]:
    to_skip, left = start, limit
    if left == 0:
        return
    for file in files:
        reader = _READERS[file.suffix.lower()](file, encoding, sheet, to_skip)
        try:
            while True:
                try:
                    item = next(reader)
                except StopIteration as done:
                    to_skip -= done.value
                    break
                yield item
                if left is not None:
                    left -= 1
                    if left == 0:
                        return
        finally:
            reader.close()  # closes the file now, also when the consumer stops early


# --- JSONL -----------------------------------------------------------------------------------------


def _read_jsonl(
    path: InputFile, encoding: str | None, sheet: str | None, skip: int
) -> Generator[SourceItem, None, int]:
    """Stream a JSONL file line by line in binary, so memory does not grow with the file.

    Splitting bytes on ``\\n`` is safe for UTF-8 and GB18030 alike: neither uses byte 0x0A inside a
    multi-byte character.
    """
    codec = _encoding(path, encoding)
    name = str(path)
    skipped = 0
    with _open(path) as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # whatever the codec: a BOM is never data
            if not raw.strip():
                continue
            if skipped < skip:
                skipped += 1
                continue
            yield _parse_json_line(raw, codec, Location(name, number))
    return skipped


def _parse_json_line(raw: bytes, codec: str, location: Location) -> SourceItem:
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as error:
        return _bad(location, describe_decode_error(error, codec))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return _bad(location, f"not valid JSON: {error.msg} at column {error.colno}")
    if not isinstance(value, dict):
        return _bad(location, f"expected a JSON object, got {_kind(value)}")
    return SourceItem(location, value)


# --- JSON ------------------------------------------------------------------------------------------


def _read_json(path: InputFile, encoding: str | None, sheet: str | None, skip: int) -> Generator[SourceItem, None, int]:
    """A JSON array of objects, one object, or JSONL under a ``.json`` name (the seed has such files).

    The array form is parsed whole (the standard library has no streaming parser); use JSONL for
    inputs too large for memory.
    """
    codec = _encoding(path, encoding)
    if _looks_like_jsonl(path, codec):
        return (yield from _read_jsonl(path, codec, sheet, skip))
    name = str(path)
    data = path.read_bytes()
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return (
            yield from _one_error(
                Location(name), f"line {line} of the file: {describe_decode_error(error, codec)}", skip
            )
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return (
            yield from _one_error(
                Location(name), f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", skip
            )
        )
    del data, text
    elements = value if isinstance(value, list) else [value]
    skipped = min(skip, len(elements))
    for index in range(skipped, len(elements)):
        element = elements[index]
        location = Location(name, index + 1)
        if isinstance(element, dict):
            yield SourceItem(location, element)
        else:
            what = f"array element {index + 1}" if isinstance(value, list) else "the document"
            yield _bad(location, f"{what} is {_kind(element)}, expected a JSON object")
    return skipped


def _looks_like_jsonl(path: InputFile, codec: str) -> bool:
    """True when the file starts with a line that is a whole JSON object on its own.

    A pretty-printed object spans lines, so its first line (``{``) does not parse; JSONL's does. The
    second non-blank line is tried too, so that JSONL whose first line is broken is still read as
    JSONL and its bad line reported, instead of the whole file being one error.
    """
    tried = 0
    with _open(path) as handle:
        for raw in handle:
            stripped = raw.strip().removeprefix(codecs.BOM_UTF8).strip()
            if not stripped:
                continue
            if tried == 0 and not stripped.startswith(b"{"):
                return False  # an array, or a scalar that will be reported as not an object
            try:
                if isinstance(json.loads(stripped.decode(codec)), dict):
                    return True
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
            tried += 1
            if tried == 2:
                return False
    return False


# --- CSV -------------------------------------------------------------------------------------------

_CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: InputFile, encoding: str | None, sheet: str | None, skip: int) -> Generator[SourceItem, None, int]:
    """A CSV with a header row; every value is a string, empty cells are ``""``.

    Bytes are decoded line by line here rather than by ``open(encoding=...)`` so that a bad byte
    becomes an error on its record instead of an exception that ends the file.
    """
    codec = _encoding(path, encoding)
    name = str(path)
    bad_lines: dict[int, str] = {}
    # Long prompts exceed the csv module's 128 KiB default field limit; the limit is process-wide.
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)

    def lines(handle: Iterable[bytes]) -> Iterator[str]:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode(codec)
            except UnicodeDecodeError as error:
                bad_lines[number] = describe_decode_error(error, codec)
                yield raw.decode(codec, errors="replace")

    skipped = 0
    header: list[str] | None = None
    with _open(path) as handle:
        reader = csv.reader(lines(handle))
        line_end = 0
        while True:
            line_start = line_end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                if reader.line_num == line_end:
                    break  # no progress: nothing more can be read
                line_end = reader.line_num
                if header is not None:
                    if skipped < skip:
                        skipped += 1
                        continue
                yield _bad(Location(name, line_start), f"not valid CSV: {error}")
                continue
            line_end = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
                if bad := _header_problem(header):
                    yield _bad(Location(name, line_start), bad)
                    return skipped
                continue
            if skipped < skip:
                skipped += 1
                continue
            location = Location(name, line_start)
            decode_errors = [bad_lines.pop(n) for n in range(line_start, line_end + 1) if n in bad_lines]
            if decode_errors:
                yield _bad(location, decode_errors[0])
            elif len(row) != len(header):
                yield _bad(location, f"the row has {len(row)} fields but the header has {len(header)}")
            else:
                yield _row_item(header, row, location)
    return skipped


# --- XLSX ------------------------------------------------------------------------------------------


def _read_xlsx(path: InputFile, encoding: str | None, sheet: str | None, skip: int) -> Generator[SourceItem, None, int]:
    """The first sheet (or ``sheet``) of a workbook; its first non-empty row is the header.

    Read-only mode streams rows from the zip instead of building the whole workbook in memory.
    Formulas give their cached values (``data_only``), which is what the user sees in Excel.
    """
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    name = str(path)
    try:
        source = io.BytesIO(path.read_bytes()) if isinstance(path, HubFile) else path  # a zip wants to seek
        workbook = openpyxl.load_workbook(source, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as error:
        return (yield from _one_error(Location(name), f"not a readable XLSX workbook: {error}", skip))
    try:
        if sheet is None:
            worksheet = workbook.worksheets[0]
        elif sheet in workbook.sheetnames:
            worksheet = workbook[sheet]
        else:
            raise InputError(f"no sheet named {sheet!r}; the workbook has {workbook.sheetnames}", Location(name))
        skipped = 0
        header: list[str] | None = None
        for number, cells in enumerate(worksheet.iter_rows(values_only=True), 1):
            if all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in cells):
                continue
            if header is None:
                header = ["" if cell is None else str(cell) for cell in cells]
                if bad := _header_problem(header):
                    yield _bad(Location(name, number), bad)
                    return skipped
                continue
            if skipped < skip:
                skipped += 1
                continue
            values = [_jsonable(cell) for cell in cells]
            values += [None] * (len(header) - len(values))  # read-only rows may stop at the last filled cell
            yield _row_item(header, values, Location(name, number))
        return skipped
    finally:
        workbook.close()


# --- CSV and XLSX rows -----------------------------------------------------------------------------


def _header_problem(header: list[str]) -> str | None:
    named = [cell.strip() for cell in header if cell.strip()]
    duplicates = sorted({cell for cell in named if named.count(cell) > 1})
    if duplicates:
        return f"the header repeats the column name(s) {duplicates}; every column needs its own name"
    return None


def _row_item(header: list[str], values: list[Any], location: Location) -> SourceItem:
    """Pair a row with its header. Unnamed columns (Excel's trailing empty ones) are dropped, unless a
    row has a value there: that value would be lost, so it is an error instead."""
    record: dict[str, Any] = {}
    for index, value in enumerate(values):
        column = header[index].strip() if index < len(header) else ""
        if column:
            record[column] = value
        elif value not in (None, ""):
            return _bad(location, f"column {index + 1} has a value but no name in the header row")
    return SourceItem(location, record)


# --- Parquet ---------------------------------------------------------------------------------------


def _read_parquet(
    path: InputFile, encoding: str | None, sheet: str | None, skip: int
) -> Generator[SourceItem, None, int]:
    """Read row group by row group in small batches; row groups before the window are not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    remote = path.open(stream=False) if isinstance(path, HubFile) else None  # read by ranges: footer, then groups
    try:
        parquet = pq.ParquetFile(remote if remote is not None else path)
    except (pa.ArrowException, OSError) as error:
        if remote is not None:
            remote.close()
        return (yield from _one_error(Location(name), f"not a readable Parquet file: {error}", skip))
    with parquet, remote or contextlib.nullcontext():
        json_columns = _parquet_json_columns(parquet.schema_arrow.metadata)
        first_group, row = 0, 0
        metadata = parquet.metadata
        while first_group < metadata.num_row_groups and row + metadata.row_group(first_group).num_rows <= skip:
            row += metadata.row_group(first_group).num_rows
            first_group += 1
        groups = list(range(first_group, metadata.num_row_groups))
        batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=groups) if groups else []
        for batch in batches:
            for values in batch.to_pylist():
                row += 1
                if row <= skip:
                    continue
                location = Location(name, row)
                record = {key: _jsonable(value) for key, value in values.items()}
                for column in json_columns:
                    if isinstance(record.get(column), str):
                        try:
                            record[column] = json.loads(record[column])
                        except json.JSONDecodeError as error:
                            record = None
                            yield _bad(location, f"column stored as JSON does not parse: {error.msg}", column)
                            break
                if record is not None:
                    yield SourceItem(location, record)
        return min(skip, row)


def _parquet_json_columns(metadata: dict[bytes, bytes] | None) -> list[str]:
    if not metadata or PARQUET_META_KEY not in metadata:
        return []
    try:
        return list(json.loads(metadata[PARQUET_META_KEY]).get("json_columns", []))
    except (ValueError, AttributeError):
        return []


# --- shared ----------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Turn the non-JSON values Parquet and Excel produce into JSON ones, so every record can be
    written back as JSONL and hashed for its id."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)  # str, not float: no silent loss of digits
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return str(value)


def _one_error(location: Location, message: str, skip: int) -> Generator[SourceItem, None, int]:
    """A file that cannot be parsed at all counts as one item of the window."""
    if skip > 0:
        return 1
    yield _bad(location, message)
    return 0


def _bad(location: Location, message: str, field: str | None = None) -> SourceItem:
    return SourceItem(location, None, InputError(message, location, field))


def _kind(value: Any) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _count_file(path: InputFile, encoding: str | None) -> int | None:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            if isinstance(path, HubFile):
                with path.open(stream=False) as remote:
                    return pq.ParquetFile(remote).metadata.num_rows
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # a broken file is reported by the reader; the count just gives up
            return None
    if isinstance(path, HubFile):
        return None  # counting lines would read the whole file over the network
    if suffix == ".json" and not _looks_like_jsonl(path, resolve_encoding(path, encoding)):
        return None
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, "rb") as handle:
            return sum(1 for raw in handle if raw.strip())
    return None


def _read_yaml(path: InputFile, encoding: str | None, sheet: str | None, skip: int) -> Generator[SourceItem, None, int]:
    """A YAML input is a topic taxonomy (seedless generation): one record per topic, located at its line."""

    return (yield from read_taxonomy(path, encoding, sheet, skip))  # type: ignore[arg-type]  # HubFile reads text too


def _open(path: InputFile) -> IO[bytes]:
    """A binary stream of a local file or a Hub file (one GET, buffered)."""
    return path.open() if isinstance(path, HubFile) else open(path, "rb")


def _encoding(path: InputFile, encoding: str | None) -> str:
    return path.encoding(encoding) if isinstance(path, HubFile) else resolve_encoding(path, encoding)


def _supported() -> str:
    return ", ".join(sorted(_READERS))


_READERS: dict[str, _Reader] = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".xlsx": _read_xlsx,
    ".parquet": _read_parquet,
    ".yaml": _read_yaml,
    ".yml": _read_yaml,
}

#: The file extensions :func:`iter_records` reads.
SUPPORTED_SUFFIXES = frozenset(_READERS)
