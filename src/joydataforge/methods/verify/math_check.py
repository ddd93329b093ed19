"""The ``math`` checker: is the reply's final answer equal, as a value, to the reference? (HuggingFace math-verify)

math-verify parses LaTeX and plain expressions into SymPy and compares them the ways answers differ in form:
``\\frac{1}{2}`` = ``0.5`` = ``50%``, ``\\{1,2\\}`` = ``\\{2,1\\}``, intervals, ``x = 2`` = ``2``, units dropped
(``5 cm`` = ``5``), floats rounded to ``precision`` places. The final answer is found first (:mod:`.extract`:
``\\boxed{}``, "答案：", "the answer is", else math-verify's own pick, the last expression); the comparison runs in
a worker process (:mod:`.math_pool`), within a time limit.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ...engine.step import Record
from ...errors import InputError
from .config import CheckSettings
from .extract import as_latex, final_math_answer, strip_thinking
from .math_pool import compare
from .verdict import Verdict

CHECKER = "math"


def answer_candidates(answer: Any) -> list[list[str]]:
    """``[text, where it came from]`` to read the final answer from, best first: the extracted part, then the
    whole reply (when the extracted part holds no math math-verify can read)."""
    text = answer if isinstance(answer, str) else str(answer)
    extracted, where = final_math_answer(text)
    candidates = [[extracted, where]]
    whole = as_latex(strip_thinking(text))
    if where != "text" and whole != extracted:
        candidates.append([whole, "text"])
    return candidates


def reference_forms(reference: Any) -> list[str]:
    """A reference is an answer, not prose: read as written, else as LaTeX (``(x+1)^2`` -> ``$(x+1)^2$``) when it
    has no words (read as LaTeX, ``no answer`` would be the product of eight variables)."""
    text = as_latex(str(reference))
    forms = [text]
    words = re.search(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+", "", text))
    if not words and not any(mark in text for mark in ("$", "\\(", "\\[")):
        forms.append(f"${text}$")
    return forms


class MathChecker:
    """Compares a reply's final answer with the record's reference (or with a given one: agreement checks)."""

    def __init__(self, settings: CheckSettings):
        self.reference_field = settings.reference_field
        self.precision = settings.precision
        self.timeout_s = max(1, math.ceil(settings.timeout_s))  # signal.alarm counts whole seconds

    def reference_of(self, record: Record) -> Any:
        if self.reference_field is None:
            return None
        value = record.get(self.reference_field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError("missing or empty (the math checker compares answers with it)", field=self.reference_field)
        return value

    async def check(self, answer: Any, record: Record, reference: Any = None) -> Verdict:
        """``reference`` given: compare with it; else with the record's reference; with neither (evolved
        instructions), the answer passes when it holds a final answer that parses."""
        reference = reference if reference is not None else self.reference_of(record)
        return await self._compare(reference_forms(reference) if reference is not None else None, answer)

    async def agree(self, answer: Any, other: Any) -> Verdict:
        """Whether two replies have the same final answer (the second read as the reference)."""
        return await self._compare([text for text, _ in answer_candidates(other)], answer)

    async def _compare(self, reference: list[str] | None, answer: Any) -> Verdict:
        request = {
            "reference": reference,
            "candidates": answer_candidates(answer),
            "precision": self.precision,
            "timeout_s": self.timeout_s,
        }
        budget = 3 * self.timeout_s + 5  # parse the reference, parse the answer, compare; then a margin
        result = await compare(request, budget)
        status, reason = result.pop("status"), result.pop("reason")
        return Verdict(status, CHECKER, reason, result)
