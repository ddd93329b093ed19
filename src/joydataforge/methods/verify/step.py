"""Verification (``verify``): each record's answer checked by execution or equivalence, the verdict written on it.

Models are not asked: ``math`` compares values (math-verify), ``code`` runs tests in the sandbox, ``json``
validates against a schema, ``text`` matches a reference. The verdict (``{passed, status, checker, reason,
details}``) is what later steps read: ``vote`` counts it as a voter, ``cascade`` sends failed records to a
stronger model, ``dpo`` pairs passing with failing candidates; ``on_fail: drop`` makes the step a filter.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ...engine.step import Record, Step, StepContext
from ...errors import InputError, StepError
from .config import VerifyConfig
from .verdict import ERROR, FAILED, PASSED, Verdict
from .verifier import Verifier, answer_text


class Verify(Step):
    """Checks ``answer_field`` (or each answer of it, with ``each``); settings in :class:`.config.VerifyConfig`."""

    Config = VerifyConfig
    config: VerifyConfig

    def setup(self) -> None:
        config = self.config
        self.verifier = Verifier(config)
        self.answer_field = config.answer_field
        self.output_field = config.output_field
        self.each = config.each
        self.pass_when = config.pass_when
        self.on_fail = config.on_fail

    def _answer(self, record: Record) -> Any:
        if self.answer_field not in record or record[self.answer_field] is None:
            raise InputError("missing (the answer to verify)", field=self.answer_field)
        answer = record[self.answer_field]
        if self.each and not isinstance(answer, list):
            raise InputError(
                f"must be a list of answers with each: true, not {type(answer).__name__}", field=self.answer_field
            )
        return answer

    async def _over_list(self, answers: list[Any], record: Record) -> dict[str, Any]:
        """One verdict per answer, and the record's: passed when ``pass_when`` says, else failed (or error when
        no answer failed but some could not be checked)."""
        verdicts = await asyncio.gather(*(self.verifier.verify(answer_text(a), record) for a in answers))
        for verdict in verdicts:
            self.counters[f"items_{verdict.status}"] += 1
        count = {s: sum(v.status == s for v in verdicts) for s in (PASSED, FAILED, ERROR)}
        if not answers:
            status = FAILED
        elif self.pass_when == "any":
            status = PASSED if count[PASSED] else (FAILED if count[FAILED] else ERROR)
        else:
            status = PASSED if count[PASSED] == len(answers) else (FAILED if count[FAILED] else ERROR)
        reason = f"{count[PASSED]} of {len(answers)} answer(s) passed ({self.pass_when} must)"
        out = Verdict(status, self.verifier.checker_name, reason, {"counts": count}).as_dict()
        out["items"] = [v.as_dict() for v in verdicts]
        return out

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        answer = self._answer(record)
        if self.each:
            verdict = await self._over_list(answer, record)
        else:
            verdict = (await self.verifier.verify(answer, record)).as_dict()
        self.counters[verdict["status"]] += 1
        if not verdict["passed"]:
            if self.on_fail == "drop":
                self.counters["dropped"] += 1
                return None
            if self.on_fail == "fail":
                raise StepError(
                    f"step '{self.name}': verification {verdict['status']}: {verdict['reason']}",
                    raw=json.dumps(verdict, ensure_ascii=False, default=str)[:20000],
                )
        return {**record, self.output_field: verdict}
