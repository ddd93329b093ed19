"""Error types that tell the user exactly where a problem is and what to change."""
from __future__ import annotations

from dataclasses import dataclass


class JoyForgeError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True)
class Location:
    """Where a record came from, so every message can point at file, line and field."""

    path: str
    line: int | None = None  # 1-based line (JSONL/CSV) or row (Parquet/XLSX) or array index + 1 (JSON)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


class InputError(JoyForgeError):
    """A bad input record: names the file, the line and (when known) the field."""

    def __init__(self, message: str, location: Location | None = None, field: str | None = None):
        super().__init__(message)
        self.location = location
        self.field = field
        self.reason = message

    def __str__(self) -> str:
        # Built on demand: the executor fills in the location when a step raised without knowing it.
        where = str(self.location) if self.location else "<input>"
        if self.field:
            where += f" field '{self.field}'"
        return f"{where}: {self.reason}"


class ConfigError(JoyForgeError):
    """A pipeline or models.yaml problem, with the path of the setting at fault."""


class ModelError(JoyForgeError):
    """A model call that failed after its retries; keeps the raw reply for the failures file."""

    def __init__(self, message: str, *, model: str | None = None, raw: str | None = None, retryable: bool = False):
        self.model = model
        self.raw = raw
        self.retryable = retryable
        super().__init__(message)


class ValidationFailed(ModelError):
    """A reply that was not valid JSON or did not match its schema, even after retries."""


class StepError(JoyForgeError):
    """A step could not turn a record into output; the record goes to the failures file."""

    def __init__(self, message: str, *, raw: str | None = None):
        self.raw = raw
        super().__init__(message)
