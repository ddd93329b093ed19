"""What a check says about one answer: passed, failed (the answer is wrong) or error (the check could not decide).

A verdict is stored on the record as a plain mapping (``verify: {passed, status, checker, reason, details}``), so
the steps that use it (``vote``, ``cascade``, ``dpo``) and the user's own filters read it without this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, ERROR = "passed", "failed", "error"
STATUSES = (PASSED, FAILED, ERROR)


@dataclass
class Verdict:
    """One check's outcome. ``reason`` is one line for a person; ``details`` what it was decided on."""

    status: str
    checker: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "status": self.status,
            "checker": self.checker,
            "reason": self.reason,
            "details": self.details,
        }


def passed(checker: str, reason: str, **details: Any) -> Verdict:
    return Verdict(PASSED, checker, reason, details)


def failed(checker: str, reason: str, **details: Any) -> Verdict:
    return Verdict(FAILED, checker, reason, details)


def error(checker: str, reason: str, **details: Any) -> Verdict:
    return Verdict(ERROR, checker, reason, details)


def verdict_passed(value: Any) -> bool | None:
    """Whether a stored verdict (a mapping) passed; ``None`` when ``value`` is no verdict at all."""
    if isinstance(value, dict) and isinstance(value.get("passed"), bool):
        return value["passed"]
    return None
