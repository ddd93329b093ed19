"""Pydantic's validation errors, said in our words: one line per problem, naming where and what to change.

A user who writes ``rounds: two`` must read ``pipeline.yaml: steps[2] (critique_revise).rounds: must be an
integer (got 'two')``, never Python's exception text. Everything that turns a :class:`ValidationError` into
text for a user goes through :func:`describe_errors`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

# What a value of each type is called, for "must be X (got Y)".
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
    "none": "null",
    "tuple": "a list",
    "set": "a list",
    "model": "a mapping",
}
_TYPE_OF_ERROR = {
    "int_type": "int",
    "int_parsing": "int",
    "int_from_float": "int",
    "float_type": "float",
    "float_parsing": "float",
    "string_type": "str",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "list_type": "list",
    "dict_type": "dict",
    "none_required": "none",
    "tuple_type": "tuple",
    "set_type": "set",
    "model_type": "model",
    "model_attributes_type": "model",
    "mapping_type": "dict",
}
_UNION_TAGS = {
    "int",
    "float",
    "str",
    "bool",
    "list",
    "dict",
    "none",
    "tuple",
    "set",
    "literal",
    "constrained-str",
    "constrained-int",
    "constrained-float",
    "is-instance",
    "json-or-python",
}
_COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def shown(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it in YAML, cut short: ``'two'``, ``0``, ``[1, 2]``, ``null``."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_union_tag(part: Any) -> bool:
    """Pydantic puts the union member it tried into ``loc`` (``list[str]``, ``function-after[...]``)."""
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


def dotted(loc: Iterable[Any]) -> str:
    """``('models', 1, 'weight')`` -> ``models[1].weight``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _is_union_tag(part):
            text += f".{part}" if text else str(part)
    return text


def _one(error: dict[str, Any], known: Sequence[str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        return "required setting is missing"
    if kind == "extra_forbidden":
        field = str(error["loc"][-1]) if error["loc"] else ""
        close = difflib.get_close_matches(field, list(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown setting ({hint}known: {', '.join(known)})" if known else "unknown setting"
    if kind in _COMPARISONS:
        limit = next(iter(ctx.values())) if ctx else "?"
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        return f"must be {_COMPARISONS[kind]} {limit} (got {shown(value)})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')} (got {shown(value)})"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"must have {word} {bound} item(s) (got {shown(value)})"
    if kind in ("string_too_short", "string_too_long"):
        if kind == "string_too_short" and ctx.get("min_length") == 1:
            return "must not be empty"
        bound = ctx.get("min_length") if kind == "string_too_short" else ctx.get("max_length")
        word = "at least" if kind == "string_too_short" else "at most"
        return f"must have {word} {bound} character(s) (got {shown(value)})"
    if kind in _TYPE_OF_ERROR:
        return f"must be {_TYPE_WORDS[_TYPE_OF_ERROR[kind]]} (got {shown(value)})"
    if kind in ("value_error", "assertion_error"):
        cause = ctx.get("error")
        return str(cause) if cause is not None else error["msg"].removeprefix("Value error, ")
    return f"{error['msg']} (got {shown(value)})"


def _field_of(error: dict[str, Any]) -> str:
    cause = (error.get("ctx") or {}).get("error")
    field = getattr(cause, "field", None)  # a SettingError names the setting its cross-field check is about
    return field if field else dotted(error["loc"])


def _nested_model(model: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The settings class at ``loc`` inside ``model`` (``cleaning`` -> CleaningConfig), if there is one."""
    for part in loc:
        if model is None or not isinstance(part, str):
            return None
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        info = fields.get(part)
        candidates = [info.annotation] + list(getattr(info.annotation, "__args__", ())) if info else []
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def describe_errors(
    exc: ValidationError, where: str, known: Sequence[str] = (), model: type[BaseModel] | None = None
) -> list[str]:
    """One line per problem: ``<where>.<field>: <what is wrong> (got <value>)``.

    Errors of one field that come from the members of a union (``models`` may be a list or a mapping) are
    merged into one line listing what would have been accepted.
    """
    by_field: dict[str, list[dict[str, Any]]] = {}
    for error in exc.errors(include_url=False):
        by_field.setdefault(_field_of(error), []).append(error)
    lines = []
    for field, errors in by_field.items():
        prefix = f"{where}.{field}" if field else where
        type_errors = [e for e in errors if e["type"] in _TYPE_OF_ERROR]
        if len(errors) > 1 and len(type_errors) == len(errors):
            words = list(dict.fromkeys(_TYPE_WORDS[_TYPE_OF_ERROR[e["type"]]] for e in errors))
            lines.append(f"{prefix}: must be {' or '.join(words)} (got {shown(errors[0].get('input'))})")
            continue
        # A union member that got past the type check says more than the members that did not.
        specific = [e for e in errors if e["type"] not in _TYPE_OF_ERROR] or errors
        for message in dict.fromkeys(_one(e, _known_for(e, known, model)) for e in specific):
            lines.append(f"{prefix}: {message}")
    return lines


def _known_for(error: dict[str, Any], known: Sequence[str], model: type[BaseModel] | None) -> Sequence[str]:
    """The settings an unknown one is compared with: those of the nested settings it was written in."""
    if error["type"] != "extra_forbidden" or len(error["loc"]) < 2:
        return known
    nested = _nested_model(model, [p for p in error["loc"][:-1] if not _is_union_tag(p)])
    return field_names(nested) if nested is not None else known


def field_names(model: type[BaseModel]) -> list[str]:
    """The setting names a user writes (a field's alias when it has one: ``schema``, not ``schema_``)."""
    return sorted(info.alias or name for name, info in model.model_fields.items())


class SettingError(ValueError):
    """Raised by a cross-field check to blame one setting: ``SettingError("quorum", "can never be reached")``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
