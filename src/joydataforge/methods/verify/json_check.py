"""The ``json`` checker: the answer parses as JSON and validates against a JSON Schema (from settings or record).

The answer may already be a parsed value (a ``label`` step's ``output_field``); text is parsed, and with
``extract`` the JSON may sit in a fenced block or in prose. Every schema violation is listed (up to five), each
with the path inside the answer where it is.
"""

from __future__ import annotations

from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from ...engine.step import Record
from ...errors import InputError
from .config import CheckSettings
from .extract import NoJSON, extract_json
from .verdict import Verdict, error, failed, passed

CHECKER = "json"
SHOWN_ERRORS = 5


def _where(path: Any) -> str:
    """``$.items[0].name``: where in the answer a violation is."""
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


class JsonChecker:
    """Parses the answer and validates it; the schema's validator is built once per schema."""

    def __init__(self, settings: CheckSettings):
        self.schema = settings.schema_
        self.schema_field = settings.schema_field
        self.extract = settings.extract

    def schema_of(self, record: Record) -> dict[str, Any] | None:
        if self.schema_field is None:
            return self.schema
        schema = record.get(self.schema_field)
        if not isinstance(schema, dict):
            raise InputError("must be a JSON Schema (an object)", field=self.schema_field)
        return schema

    async def check(self, answer: Any, record: Record, reference: Any = None) -> Verdict:
        """``reference``: a schema to use instead of the settings' or the record's."""
        schema = reference if reference is not None else self.schema_of(record)
        try:
            value, found_in = extract_json(answer, extract=self.extract)
        except NoJSON as exc:
            return failed(CHECKER, f"the answer is not JSON: {exc}")
        if schema is None:
            return passed(CHECKER, "the answer parses as JSON", found_in=found_in)
        try:
            validator = validator_for(schema)(schema)
            validator.check_schema(schema)
        except SchemaError as exc:
            return error(CHECKER, f"the record's schema is not a valid JSON Schema: {exc.message}")
        problems = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
        if not problems:
            return passed(CHECKER, "the answer validates against the schema", found_in=found_in)
        shown = [f"{_where(p.absolute_path)}: {p.message}"[:300] for p in problems[:SHOWN_ERRORS]]
        return failed(
            CHECKER,
            f"{len(problems)} schema violation(s); first: {shown[0]}",
            found_in=found_in,
            violations=shown,
        )
