"""One object that checks answers by the settings' checker: what the ``verify`` step, ``dpo`` and ``evol_instruct``
call. Each checker lives in its own module; this picks one and keeps the step code free of checker details.
"""

from __future__ import annotations

from typing import Any, Protocol

from ...engine.step import Record
from .code_check import CodeChecker
from .config import CheckSettings
from .json_check import JsonChecker
from .math_check import MathChecker
from .text_check import TextChecker
from .verdict import Verdict


class Checker(Protocol):
    async def check(self, answer: Any, record: Record, reference: Any = None) -> Verdict: ...


CHECKERS: dict[str, type[Checker]] = {
    "math": MathChecker,
    "code": CodeChecker,
    "json": JsonChecker,
    "text": TextChecker,
}


class Verifier:
    """Checks one answer against what the record (or the caller) gives as its reference."""

    def __init__(self, settings: CheckSettings, *, from_record: bool = True):
        """``from_record``: whether answers come with a record holding their reference or tests; without one (an
        evolved instruction's answer) a program only has to run to its end."""
        self.settings = settings
        self.from_record = from_record
        self.checker_name = settings.checker
        self.checker: Checker = CHECKERS[settings.checker](settings)

    async def verify(self, answer: Any, record: Record, *, reference: Any = None) -> Verdict:
        """The verdict on ``answer``. ``reference`` replaces what the record holds (an agreement check compares one
        answer with another); a record without its reference raises :class:`~joydataforge.errors.InputError`."""
        if not self.from_record and reference is None and self.checker_name == "code":
            reference = ""  # no tests: the program (with its own asserts) only has to run to its end
        return await self.checker.check(answer, record, reference)

    async def agree(self, answer: Any, other: Any) -> Verdict:
        """Whether two answers agree (``math`` only: the settings refuse ``samples`` for other checkers)."""
        if not isinstance(self.checker, MathChecker):
            raise TypeError(f"checker {self.checker_name} cannot compare two answers")
        return await self.checker.agree(answer, other)


def answer_text(item: Any) -> Any:
    """One answer of a list: a string, or an object with ``text`` (or ``content``), as ``dpo`` candidates are."""
    if isinstance(item, dict):
        return item.get("text", item.get("content"))
    return item
