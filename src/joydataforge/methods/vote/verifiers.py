"""A ``verify`` step's verdict as one more voter: what a passed or failed check votes for.

Kept apart from the model voters' code: a verifier is read from the record, never asked, and its vote is a
fixed label per outcome (``verifiers`` in :class:`~.config.VoteConfig`).
"""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from ..verify.config import VerifierVoter


def verifier_vote(record: dict[str, Any], voter: VerifierVoter) -> dict[str, Any]:
    """The voter's entry in ``votes``: ``{label, reason, verifier, status}``, or ``{error, ...}`` when it does not
    vote (a check that could not decide, or a failed one without ``fail_label``)."""
    verdict = record.get(voter.verdict_field)
    if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
        raise InputError("needs a verify step's verdict (run a 'verify' step first)", field=voter.verdict_field)
    status = verdict.get("status", "passed" if verdict["passed"] else "failed")
    entry = {"verifier": voter.verdict_field, "status": status}
    reason = str(verdict.get("reason", ""))
    if verdict["passed"]:
        return {"label": voter.pass_label, "reason": reason, **entry}
    if status == "failed" and voter.fail_label is not None:
        return {"label": voter.fail_label, "reason": reason, **entry}
    why = "the check could not decide" if status != "failed" else "a failed check does not vote (no fail_label)"
    return {"error": f"{why}: {reason}", "raw": None, **entry}
