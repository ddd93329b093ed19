"""``require_verified``: each candidate's verdict, and the pools the pair rule picks from (chosen passed,
rejected failed).

A candidate's verdict comes from a check run here (the ``verify`` step's checkers, on every usable candidate,
generated ones included) or from an earlier ``verify`` step with ``each: true`` over the record's candidates.
The verdict is kept in the candidate's provenance (``verified``: ``{passed, status, reason}``), so every pair
shows why its chosen answer was allowed to be chosen.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from ...engine.step import Record
from ...errors import InputError
from ..verify.config import RequireVerified
from ..verify.verifier import Verifier


class CandidateVerification:
    def __init__(self, settings: RequireVerified):
        self.verdicts_field = settings.verdicts_field
        self.verifier = Verifier(settings) if settings.checker is not None else None

    def _recorded(self, record: Record, candidates: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """The earlier verify step's per-candidate verdicts; generated candidates have none."""
        verdict = record.get(self.verdicts_field or "")
        items = verdict.get("items") if isinstance(verdict, dict) else None
        if not isinstance(items, list):
            raise InputError("needs a verify step's verdict with each: true (its items)", field=self.verdicts_field)
        from_record = [c for c in candidates if c.get("origin") == "record"]
        if len(items) != len(from_record):
            raise InputError(
                f"holds {len(items)} verdict(s) for {len(from_record)} candidate(s) of the record",
                field=self.verdicts_field,
            )
        by_position = {c["position"]: item for c, item in zip(from_record, items)}
        return [by_position.get(c["position"]) if c.get("origin") == "record" else None for c in candidates]

    async def _checked(self, record: Record, texts: list[str | None]) -> list[dict[str, Any] | None]:
        assert self.verifier is not None
        verifier = self.verifier

        async def one(text: str | None) -> dict[str, Any] | None:
            return None if text is None else (await verifier.verify(text, record)).as_dict()

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def pools(
        self, record: Record, candidates: list[dict[str, Any]], texts: list[str | None], counters: Counter[str]
    ) -> dict[str, set[int]]:
        """``{chosen_from, rejected_from}`` for :func:`~.pairs.select_pairs`; writes ``verified`` on candidates."""
        verdicts = self._recorded(record, candidates) if self.verifier is None else await self._checked(record, texts)
        chosen: set[int] = set()
        rejected: set[int] = set()
        for k, (candidate, verdict, text) in enumerate(zip(candidates, verdicts, texts)):
            if text is None:
                continue  # failed, blank or duplicate: never a pair member anyway
            if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
                counters["verify:none"] += 1
                candidate["verified"] = None
                continue
            status = verdict.get("status", "passed" if verdict["passed"] else "failed")
            counters[f"verify:{status}"] += 1
            candidate["verified"] = {"passed": verdict["passed"], "status": status, "reason": verdict.get("reason")}
            if verdict["passed"]:
                chosen.add(k)
            elif status == "failed":
                rejected.add(k)
        return {"chosen_from": chosen, "rejected_from": rejected}
