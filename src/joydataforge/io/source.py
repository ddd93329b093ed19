"""One item of an input: a record, or why the record at its location could not be read.

Its own module because every reader yields it (files, folders, taxonomies) and the executor consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError, Location


@dataclass(frozen=True)
class SourceItem:
    """One input record, or the reason the record at ``location`` could not be read."""

    location: Location
    record: dict[str, Any] | None
    error: InputError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
