"""Turning a model's reply into a validated JSON value, or a clear failure with the raw text.

Small models wrap JSON in prose or code fences; servers without grammar support may too. We take the
first complete JSON value in the reply, then validate it against the step's schema.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from ..errors import ValidationFailed

_DECODER = json.JSONDecoder()


def extract_json(text: str) -> Any:
    """The first JSON object or array in ``text``; raises ValueError when there is none."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    for index, char in enumerate(stripped):
        if char in "{[":
            try:
                value, _ = _DECODER.raw_decode(stripped, index)
                return value
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON value found in the reply")


def check_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)


def parse_and_validate(text: str, schema: dict[str, Any], model: str) -> Any:
    try:
        value = extract_json(text)
    except ValueError as exc:
        raise ValidationFailed(f"model '{model}': reply is not JSON ({exc})", model=model, raw=text) from None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise ValidationFailed(
            f"model '{model}': reply does not match the schema at {where}: {first.message}", model=model, raw=text
        )
    return value
