"""Filters and search as SQL over the index: ``vote.outcome=majority``, ``score>=60``, ``task_label=math``.

A filter is ``PATH OP VALUE``. Operators: ``=`` and ``!=`` (a list field matches when one of its values
does), ``>``, ``>=``, ``<``, ``<=`` (numbers only), ``~`` (contains, ASCII case-insensitive), ``?`` (has a
value) and ``!?`` (has none). Four paths are the viewer's own: ``status`` (kept, failed, dropped, bad),
``kind`` (see :mod:`.shapes`), ``id`` and ``review`` (accepted, rejected, edited, noted, reviewed,
unreviewed). Filters are ANDed. Search terms are substrings of the record's search text
(:func:`~.fields.search_text`), ANDed; a term in double quotes may hold spaces.

Each filter and each search term becomes the set of row ids it matches, one ``SELECT rid`` over one small
table (a field's value table, see :mod:`.schema`), and the filters together are the ``INTERSECT`` of those
sets: a page is the first rows of that set, a count its size. A negative filter (``!=``, ``!?``,
``review=unreviewed``) is every row ``EXCEPT`` the positive set, so a record without the field is "not
equal" to any value.

Values are bound as parameters, table names come from the index's own ``fields`` table: nothing a user
types is ever spliced into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

OPERATORS = ("!?", ">=", "<=", "!=", "=", ">", "<", "~", "?")
REVIEW_VALUES = ("accepted", "rejected", "edited", "noted", "reviewed", "unreviewed")
STATUS_VALUES = ("kept", "failed", "dropped", "bad")
SPECIAL = ("status", "kind", "id", "review")
ALL_ROWS = "SELECT rid FROM rows"
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TERMS = re.compile(r'"([^"]+)"|(\S+)')


class FilterError(ValueError):
    """A filter the index cannot answer; the message is for the user."""


@dataclass(frozen=True)
class Condition:
    path: str
    op: str
    value: str = ""

    def __str__(self) -> str:
        return f"{self.path}{self.op}{self.value}"


@dataclass(frozen=True)
class Field:
    """A field of the index (a row of its ``fields`` table)."""

    path: str
    table: str | None
    kind: str
    multi: bool = False


@dataclass(frozen=True)
class RidSet:
    """The rows a set of filters and search terms match, as one SQL compound ``SELECT rid`` (or all rows)."""

    sql: str | None
    params: tuple[Any, ...] = ()

    @property
    def everything(self) -> bool:
        return self.sql is None

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """A ``WHERE`` clause over ``rows`` that keeps the set's rows."""
        return ("1", ()) if self.sql is None else (f"rid IN ({self.sql})", self.params)


def parse_condition(text: str) -> Condition:
    """``"score>=60"`` -> Condition("score", ">=", "60"); the first operator from the left splits."""
    text = text.strip()
    for position in range(1, len(text)):
        for op in OPERATORS:
            if text.startswith(op, position):
                path, value = text[:position].strip(), text[position + len(op) :].strip()
                if op in ("?", "!?") and value:
                    continue
                if not path:
                    break
                return Condition(path, op, value)
    raise FilterError(
        f"cannot read the filter {text!r}: write FIELD=VALUE, FIELD!=VALUE, FIELD>=NUMBER, FIELD~TEXT, FIELD? or FIELD!?"
    )


def number(text: str) -> int | float | None:
    if not _NUMBER.match(text.strip()):
        return None
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def search_terms(text: str) -> list[str]:
    return [quoted or bare for quoted, bare in _TERMS.findall(text or "") if (quoted or bare).strip()]


def rid_set(conditions: list[Condition], fields: dict[str, Field], search: str = "", *, fts: bool = False) -> RidSet:
    """The rows matching every condition and every search term."""
    parts: list[tuple[str, list[Any]]] = [_condition_set(c, fields) for c in conditions]
    terms = search_terms(search)
    long_terms = [t for t in terms if len(t) >= 3] if fts else []
    if long_terms:
        query = " AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms)
        parts.append(("SELECT rowid AS rid FROM search WHERE search MATCH ?", [query]))
    for term in terms:
        if term not in long_terms:  # too short for the trigram index (or no FTS5): scan the search text
            parts.append(("SELECT rid FROM texts WHERE instr(lower(t), lower(?)) > 0", [term]))
    if not parts:
        return RidSet(None)
    sql = " INTERSECT ".join(f"SELECT rid FROM ({part})" for part, _ in parts)
    return RidSet(sql, tuple(value for _, values in parts for value in values))


def _condition_set(condition: Condition, fields: dict[str, Field]) -> tuple[str, list[Any]]:
    path, op, value = condition.path, condition.op, condition.value
    if path == "status":
        if op in ("=", "!=") and value not in STATUS_VALUES:
            raise FilterError(f"{condition}: status is one of {', '.join(STATUS_VALUES)}")
        return _row_column_set("status", condition)
    if path == "id":
        return _row_column_set("id", condition)
    if path == "review":
        return _review_set(op, value)
    if path == "kind":
        return _value_set("kinds", condition)
    known = fields.get(path)
    if known is None:
        close = sorted(p for p in fields if path.lower() in p.lower())[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise FilterError(f"no field {path!r} in these records{hint}")
    if known.table is None:
        raise FilterError(f"{path!r} is free text (or too many fields were found): search it instead")
    return _value_set(known.table, condition)


def _row_column_set(column: str, condition: Condition) -> tuple[str, list[Any]]:
    op, value = condition.op, condition.value
    if op == "=":
        return f"SELECT rid FROM rows WHERE {column} = ?", [value]
    if op == "!=":
        return f"SELECT rid FROM rows WHERE {column} != ?", [value]
    if op == "~":
        return f"SELECT rid FROM rows WHERE instr(lower({column}), lower(?)) > 0", [value]
    raise FilterError(f"{condition}: {condition.path} takes =, != or ~")


def _review_set(op: str, value: str) -> tuple[str, list[Any]]:
    if op not in ("=", "!=") or value not in REVIEW_VALUES:
        raise FilterError(f"review=VALUE or review!=VALUE, with VALUE one of {', '.join(REVIEW_VALUES)}")
    which = {
        "accepted": "v.status = 'accepted'",
        "rejected": "v.status = 'rejected'",
        "edited": "v.edited = 1",
        "noted": "v.noted = 1",
        "reviewed": "1",
        "unreviewed": "1",
    }[value]
    reviewed = (
        "SELECT rows.rid FROM reviews AS v JOIN rows ON rows.id = v.id AND rows.n = v.n "
        f"WHERE rows.status = 'kept' AND {which}"
    )
    negate = (op == "!=") != (value == "unreviewed")
    return (f"{ALL_ROWS} EXCEPT {reviewed}" if negate else reviewed), []


def _equal_values(value: str) -> list[Any]:
    """``value`` as text, as a number when it reads as one, as 1/0 for true/false (how they are stored)."""
    options: list[Any] = [value]
    as_number = number(value)
    if as_number is not None:
        options.append(as_number)
    if value in ("true", "false"):
        options.append(1 if value == "true" else 0)
    return options


def _value_set(table: str, condition: Condition) -> tuple[str, list[Any]]:
    """The rows of a field's value table ``(v, rid)`` that the condition keeps."""
    op, value = condition.op, condition.value
    if op in ("=", "!="):
        options = _equal_values(value)
        positive = f"SELECT rid FROM {table} WHERE v IN ({', '.join('?' * len(options))})"
        return (positive if op == "=" else f"{ALL_ROWS} EXCEPT {positive}"), options
    if op in (">", ">="):
        bound = _bound(condition)
        # numbers sort before every text in the (v, rid) key: '' caps the range at the last number
        return f"SELECT rid FROM {table} WHERE v {op} ? AND v < ''", [bound]
    if op in ("<", "<="):
        return f"SELECT rid FROM {table} WHERE v {op} ? AND typeof(v) IN ('integer', 'real')", [_bound(condition)]
    if op == "~":
        return f"SELECT rid FROM {table} WHERE instr(lower(v), lower(?)) > 0", [value]
    if op == "?":
        return f"SELECT rid FROM {table}", []
    return f"{ALL_ROWS} EXCEPT SELECT rid FROM {table}", []


def _bound(condition: Condition) -> int | float:
    bound = number(condition.value)
    if bound is None:
        raise FilterError(f"{condition}: {condition.op} compares numbers, and {condition.value!r} is not one")
    return bound
