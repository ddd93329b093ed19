"""Error types that tell the user exactly where a problem is and what to change."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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


class EndpointDown(JoyForgeError):
    """A model's endpoint is declared down (its circuit breaker opened): the run stops cleanly, resumable.

    Raised for the call that opened the breaker and, at once, for every later call to that model. The record
    whose call raised it is not finished: it gets no ledger line and is redone when the run is resumed.
    Deliberately not a :class:`ModelError`: steps that record a failed call and go on (a voter that failed,
    a judge that failed) must not turn "the endpoint is down" into a finished record with degraded content.
    """

    def __init__(self, message: str, *, model: str | None = None, raw: str | None = None):
        super().__init__(message)
        self.model = model
        self.raw = raw


class RunStopped(JoyForgeError):
    """The run stopped before its end on purpose (endpoint down, too many failures, budget, Ctrl-C).

    Everything finished is kept; re-running the same command resumes. ``reason`` is one line for the user.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BudgetExceeded(RunStopped):
    """A model call would take the run past ``run.budget``: it is not made, and the run stops cleanly (exit 5).

    Raised by the gateway when a call's reservation (its prompt tokens, its completion up to ``max_tokens``,
    priced) would cross a limit; the executor treats it like :class:`EndpointDown`: the record is unfinished
    (no ledger line, redone on resume), no more records are started, those in flight finish. Not a
    :class:`ModelError`, so steps that tolerate a failed call cannot turn "out of budget" into a finished
    record with degraded content. The fields say which limit: ``measure`` (``cost`` or ``tokens``), ``model``
    (``None`` for the limit of the whole run), the ``limit`` and what was ``spent`` under it so far.
    """

    def __init__(
        self, reason: str, *, measure: str = "cost", limit: float = 0.0, spent: float = 0.0, model: str | None = None
    ):
        super().__init__(reason)
        self.measure = measure
        self.limit = limit
        self.spent = spent
        self.model = model

    def detail(self) -> dict[str, object]:
        """The fields as plain data (they travel back from Ray workers inside a stop request)."""
        return {"measure": self.measure, "limit": self.limit, "spent": self.spent, "model": self.model}

    def __reduce__(self) -> tuple[object, ...]:  # pickled with its fields, not only the message
        return (_budget_exceeded, (self.reason, self.detail()))


def _budget_exceeded(reason: str, detail: dict[str, object]) -> BudgetExceeded:
    return BudgetExceeded(reason, **detail)  # type: ignore[arg-type]


class ExitCode(IntEnum):
    """What ``joyforge`` exits with, so scripts and CI can tell a run's verdict (README, ``--help``)."""

    OK = 0
    """Every record done (written, or filtered out on purpose)."""
    INTERNAL = 1
    """An unexpected error inside joyforge (a bug): the traceback is printed."""
    CONFIG = 2
    """A configuration, command-line or input problem: nothing (more) was run."""
    SOME_FAILED = 3
    """The run finished, but some records failed: they are in failures.jsonl (``--retry-failed`` redoes them)."""
    ALL_FAILED = 4
    """The run finished and no record succeeded."""
    STOPPED = 5
    """The run stopped early (endpoint down, --max-failures, budget, Ctrl-C); re-run the command to resume."""
