"""Turning a model's reply into a validated JSON value, or a clear failure naming the real cause.

Replies that must be JSON are often not quite JSON. llama.cpp's server writes raw newlines inside strings;
small models wrap the value in prose or a code fence; a reply cut off by ``max_tokens`` ends mid-value;
models without a grammar write single quotes, trailing commas, unescaped inner quotes. Re-asking costs a
call, so the reply is read leniently first, in this order, and the first way that works is recorded:

1. ``strict``: the reply is one JSON value.
2. ``lenient``: one JSON value inside a code fence, or with control characters inside its strings
   (``json.loads(strict=False)``), or surrounded by prose.
3. ``cut``: the reply was cut off before its outermost value ended: the items it finished are kept, the
   one it was writing is dropped (never kept half-written), each shallower cut tried until one fits the schema.
4. ``repaired``: the well-kept ``json-repair`` library fixes what is left (quotes, commas, comments).

Whatever way it was read, the value must span most of the reply (:data:`MIN_COVERAGE`): a ``{}`` met
inside a string of a longer reply, or a small object inside a paragraph of prose, is never taken as the
answer. When nothing fits, the error says why (no JSON at all, cut off, mostly prose, the parser's own
message), and a schema error is reported only for a value that was really the reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

from ..errors import ValidationFailed

MIN_COVERAGE = 0.5
"""Share of the reply (code fence and surrounding whitespace aside) a JSON value must span to be the answer."""

_LENIENT = json.JSONDecoder(strict=False)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)
_OPENERS = "{["
_CLOSER = {"{": "}", "[": "]"}


@dataclass(frozen=True)
class Parsed:
    """A JSON value read from a reply, and how (``strict``, ``lenient``, ``cut``, ``repaired``)."""

    value: Any
    how: str
    note: str = ""


class NotJSON(ValueError):
    """The reply holds no JSON value that is the answer; the message says why."""


def _body(text: str) -> str:
    """The reply without its code fence: the first fenced block that holds a JSON opener, else the reply."""
    for match in _FENCE.finditer(text):
        inner = match.group(2).strip()
        if inner and inner[0] in _OPENERS:
            return inner
    return text.strip()


def _span_share(start: int, end: int, body: str) -> float:
    return (end - start) / len(body) if body else 0.0


def _dense_share(value: Any, body: str) -> float:
    """How much of the reply ``value`` accounts for, whitespace ignored: for values whose span is unknown."""
    dense = len(re.sub(r"\s", "", body))
    written = len(re.sub(r"\s", "", json.dumps(value, ensure_ascii=False)))
    return min(1.0, written / dense) if dense else 0.0


@dataclass
class _Scan:
    """Where an unfinished JSON text could be cut: after each complete item, at each depth."""

    closed_at: int | None  # index just past the outermost value, when it does end
    stack: list[str]  # openers still open at the end
    in_string: bool
    cuts: list[tuple[int, list[str]]]  # (index of a separating comma, openers open there)


def _scan(text: str, start: int) -> _Scan:
    stack: list[str] = []
    cuts: list[tuple[int, list[str]]] = []
    in_string = escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in _OPENERS:
            stack.append(char)
        elif char in "}]":
            if not stack:
                return _Scan(index, [], False, cuts)
            stack.pop()
            if not stack:
                return _Scan(index + 1, [], False, cuts)
        elif char == "," and stack:
            cuts.append((index, list(stack)))
    return _Scan(None, stack, in_string, cuts)


def _regions(body: str) -> list[tuple[int, int, _Scan]]:
    """The stretches of ``body`` that start at a top-level ``{``/``[`` and run to its matching bracket (or to
    the end, when the reply was cut off), as ``(start, end, scan)``. Brackets inside strings do not count, so a
    ``{}`` inside a string is never a region of its own, nor is an item inside a value that was cut off."""
    regions = []
    index = next((i for i, c in enumerate(body) if c in _OPENERS), None)
    while index is not None:
        scan = _scan(body, index)
        end = scan.closed_at if scan.closed_at is not None else len(body)
        regions.append((index, end, scan))
        index = next((i for i in range(end, len(body)) if body[i] in _OPENERS), None)
    return regions


def _decoded(body: str, regions: list[tuple[int, int, _Scan]]) -> list[tuple[int, int, Any]]:
    """The regions that are complete JSON values as they stand, as ``(start, end, value)``."""
    found = []
    for start, _, scan in regions:
        if scan.closed_at is None:
            continue
        try:
            value, end = _LENIENT.raw_decode(body, start)
        except json.JSONDecodeError:
            continue
        found.append((start, end, value))
    return found


def _closed(text: str, stack: list[str]) -> Any:
    """``text`` with its open brackets closed, parsed; raises ValueError when that is not JSON."""
    return _LENIENT.decode(text.rstrip() + "".join(_CLOSER[o] for o in reversed(stack)))


def _cut_candidates(body: str, start: int, scan: _Scan) -> Iterator[Parsed]:
    """The finished part of a reply cut off mid-value: its complete array items, never a half-written one.

    An array item is complete when its own closing bracket (or quote) came; the item being written when the
    reply stopped is dropped, never kept half-written: a string cut mid-word is not data, an object cut
    between two keys lacks the rest. So the reply is cut only after an array item, and the brackets still
    open are closed: first right at the end when it stops just after an item, then at each array's last
    separating comma, the deepest first (``{"cases": [{..}, {"q": "hal`` keeps the first case). A reply
    with no complete array item (a flat object cut mid-value) has no candidate.
    """
    tail = body[start:].rstrip()
    tail = tail[:-1].rstrip() if tail.endswith(",") else tail
    if (
        not scan.in_string
        and scan.stack
        and (tail.endswith(("}", "]")) or (tail.endswith('"') and scan.stack[-1] == "["))
    ):
        try:
            yield Parsed(_closed(tail, scan.stack), "cut", "the reply was cut off; closed after its last item")
        except ValueError:
            pass
    tried: set[int] = set()
    for comma, stack in reversed(scan.cuts):
        if stack[-1] != "[" or len(stack) in tried:
            continue
        tried.add(len(stack))
        try:
            value = _closed(body[start:comma], stack)
        except ValueError:
            continue
        yield Parsed(value, "cut", "the reply was cut off; the item it was writing is dropped")


def _repaired(text: str) -> Any:
    """``json-repair``'s reading of ``text``, or None when it finds no object or array in it."""
    import json_repair  # imported on first need: most replies never get here

    try:
        value = json_repair.loads(text)
    except Exception:  # a repair library failing on odd text means a reply that is not JSON
        return None
    return value if isinstance(value, (dict, list)) and value else None


def json_candidates(text: str) -> Iterator[Parsed]:
    """The readings of ``text`` that may be its JSON answer, best first; raises :class:`NotJSON` when none.

    Callers validate each against their schema and take the first that fits (:func:`parse_and_validate`);
    a plain caller takes the first (:func:`extract_json`).
    """
    body = _body(text)
    if not body:
        raise NotJSON("the reply is empty")
    fenced = body != text.strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        pass
    else:
        yield Parsed(value, "lenient", "inside a code fence") if fenced else Parsed(value, "strict")
        return
    try:
        yield Parsed(_LENIENT.decode(body), "lenient", "control characters inside strings")
        return
    except json.JSONDecodeError as exc:
        first_error = exc
    regions = _regions(body)
    if not regions:
        raise NotJSON("no JSON object or array in the reply")
    values = _decoded(body, regions)
    if values:
        start, end, value = max(values, key=lambda v: v[1] - v[0])
        if _span_share(start, end, body) >= MIN_COVERAGE:
            yield Parsed(value, "lenient", "prose around the JSON")
            return
    opener, end, scan = max(regions, key=lambda r: r[1] - r[0])
    if scan.closed_at is None:
        if _span_share(opener, end, body) < MIN_COVERAGE:
            raise NotJSON("the reply is mostly prose, and the JSON in it is cut off")
        produced = False
        for candidate in _cut_candidates(body, opener, scan):
            produced = True
            yield candidate
        raise NotJSON(
            "the reply was cut off before its JSON ended"
            + (" and no complete item came before the cut" if not produced else " and its complete part does not fit")
            + " (raise max_tokens, or ask for less)"
        )
    repaired = _repaired(body[opener:end])
    if repaired is not None and _dense_share(repaired, body) >= MIN_COVERAGE:
        yield Parsed(repaired, "repaired", "repaired by json-repair")
        return
    if values:
        start, end, value = max(values, key=lambda v: v[1] - v[0])
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise NotJSON(
            f"the only complete JSON in the reply ({shown}) spans {_span_share(start, end, body):.0%} of it; "
            "a value inside prose or inside a string is not taken as the answer"
        )
    raise NotJSON(f"{first_error.msg} at line {first_error.lineno} column {first_error.colno}, and repair failed")


def extract_json(text: str) -> Any:
    """The JSON value that is ``text``'s answer (see the module docstring); raises ValueError when there is none."""
    for candidate in json_candidates(text):
        return candidate.value
    raise NotJSON("no JSON value found in the reply")  # unreachable: json_candidates raises first


def check_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)


def _schema_error(value: Any, validator: jsonschema.Draft202012Validator) -> str | None:
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(p) for p in first.path) or "(root)"
    return f"at {where}: {first.message}"


def parse_json_reply(text: str, schema: dict[str, Any], model: str) -> Parsed:
    """The reply's JSON value checked against ``schema``, with how it was read; :class:`ValidationFailed` names
    the cause: not JSON (and why), or the schema error of the value that was the reply."""
    validator = jsonschema.Draft202012Validator(schema)
    first_problem: tuple[Parsed, str] | None = None
    try:
        for candidate in json_candidates(text):
            problem = _schema_error(candidate.value, validator)
            if problem is None:
                return candidate
            if first_problem is None:
                first_problem = (candidate, problem)
    except NotJSON as exc:
        if first_problem is None:
            raise ValidationFailed(f"model '{model}': reply is not JSON ({exc})", model=model, raw=text) from None
    assert first_problem is not None
    candidate, problem = first_problem
    if candidate.how == "cut":
        message = (
            f"reply was cut off before its JSON ended (raise max_tokens, or ask for less), and the items it "
            f"finished do not match the schema {problem}"
        )
    else:
        how = "" if candidate.how == "strict" else f" ({candidate.note})"
        message = f"reply does not match the schema {problem}{how}"
    raise ValidationFailed(f"model '{model}': {message}", model=model, raw=text)


def parse_and_validate(text: str, schema: dict[str, Any], model: str) -> Any:
    """The reply's JSON value, checked against ``schema`` (see :func:`parse_json_reply`)."""
    return parse_json_reply(text, schema, model).value
