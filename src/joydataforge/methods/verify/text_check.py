"""The ``text`` checker: exact, contained or regular-expression match against a reference or a pattern.

References come from the settings (``pattern``) or the record (``reference_field``: one string, or a list of
acceptable ones, any of which passes). With ``normalize`` both sides are compared after Unicode NFKC (full-width
digits and letters become ASCII), case folding and collapsing whitespace; a regex then ignores case.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from ...engine.step import Record
from ...errors import InputError
from .config import CheckSettings
from .extract import strip_thinking
from .verdict import Verdict, error, failed, passed

CHECKER = "text"


def normalized(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, stripped: how two answers that mean the same are made equal."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class TextChecker:
    def __init__(self, settings: CheckSettings):
        self.match = settings.match
        self.pattern = settings.pattern
        self.reference_field = settings.reference_field
        self.normalize = settings.normalize

    def references_of(self, record: Record) -> list[str]:
        if self.pattern is not None:
            return [self.pattern]
        assert self.reference_field is not None  # the settings require one or the other
        value = record.get(self.reference_field)
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            raise InputError("must be a string, or a list of acceptable strings", field=self.reference_field)
        return [str(v) for v in values]

    async def check(self, answer: Any, record: Record, reference: Any = None) -> Verdict:
        """``reference``: a string (or list of strings) to use instead of the pattern or the record's."""
        if reference is not None:
            references = [str(r) for r in reference] if isinstance(reference, list) else [str(reference)]
        else:
            references = self.references_of(record)
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            return failed(CHECKER, f"the answer is {type(answer).__name__}, not text")
        text = strip_thinking(answer)
        for ref in references:
            if self.match == "regex":
                try:
                    found = re.search(
                        ref,
                        unicodedata.normalize("NFKC", text) if self.normalize else text,
                        re.IGNORECASE if self.normalize else 0,
                    )
                except re.error as exc:
                    return error(CHECKER, f"the reference {ref[:80]!r} is not a valid regular expression: {exc}")
                if found:
                    return passed(CHECKER, f"matches {ref[:80]!r}", matched=found.group(0)[:200])
                continue
            a, r = (normalized(text), normalized(ref)) if self.normalize else (text.strip(), ref.strip())
            if (a == r) if self.match == "exact" else (r in a):
                word = "equals" if self.match == "exact" else "contains"
                return passed(CHECKER, f"the answer {word} {ref[:80]!r}")
        shown = " or ".join(repr(r[:80]) for r in references[:3]) + (" ..." if len(references) > 3 else "")
        verb = {"exact": "does not equal", "contains": "does not contain", "regex": "does not match"}[self.match]
        return failed(CHECKER, f"the answer {verb} {shown}")
