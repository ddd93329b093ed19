"""The pure rules that turn per-model labels into one decision: majority, agreement, quorum, ties.

Kept apart from the step so the rules can be read (and tested) without a model in sight. Three outcomes,
never a silent guess:

- ``majority``: one label has strictly more weight than every other, and that weight meets the quorum.
- ``tie``: two or more labels share the top weight. No label wins; "the first label seen" is never used.
- ``no_quorum``: one label leads, but with less weight than the quorum asks for.

Failed voters (an error, or an empty label) do not vote. They still count in the denominator of a
fractional quorum, so a failure can make a quorum harder to reach but never easier: with three voters and
quorum 2/3, one failure and one dissent leave 1/3 and no quorum, where dividing by the valid votes would
have crowned a single model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAJORITY, TIE, NO_QUORUM = "majority", "tie", "no_quorum"


def required_support(quorum: int | float | None, total_weight: float) -> tuple[float, bool]:
    """The weight the winning label needs, and whether it must be strictly more than that.

    ``None`` means more than half of all voters' weight (the seed's rule: 2 of 3, 3 of 4, 3 of 5). An int
    is a number of (weighted) votes; a float is a share of all voters' weight, failed ones included.
    """
    if quorum is None:
        return total_weight / 2, True
    if isinstance(quorum, int):
        return float(quorum), False
    return quorum * total_weight, False


@dataclass
class VoteResult:
    """The aggregate of one record's votes, ready to be stored on the record with :meth:`as_dict`."""

    outcome: str
    label: str | None
    agreement: float  # share of the valid (weighted) votes that went to the top label(s)
    support: float  # weight behind the top label
    required: float  # weight the quorum asked for
    strict: bool  # True: support must exceed ``required`` (majority rule); False: reach it
    counts: dict[str, float]  # label -> weight, most first
    voters: int
    valid: int
    failed: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "outcome": self.outcome,
            "agreement": round(self.agreement, 4),
            "support": _number(self.support),
            "required": f"{'>' if self.strict else '>='}{_number(self.required)}",
            "counts": {k: _number(v) for k, v in self.counts.items()},
            "voters": self.voters,
            "valid": self.valid,
            "failed_voters": list(self.failed),
        }
        if self.tied:
            out["tied"] = list(self.tied)
        return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 4)


def aggregate(
    labels: Mapping[str, str | None], weights: Mapping[str, float], quorum: int | float | None = None
) -> VoteResult:
    """Aggregate ``labels`` (model -> label, ``None`` for a failed voter) into one :class:`VoteResult`.

    Callers must not pass an all-failed vote: there is nothing to aggregate, and the vote step turns it
    into a record failure instead.
    """
    counts: dict[str, float] = {}
    failed: list[str] = []
    for model, label in labels.items():
        if label is None or (isinstance(label, str) and not label.strip()):
            failed.append(model)
            continue
        key = label.strip()
        counts[key] = counts.get(key, 0.0) + weights.get(model, 1.0)
    if not counts:
        raise ValueError("aggregate() needs at least one valid vote")
    total = sum(weights.get(model, 1.0) for model in labels)
    valid_weight = sum(counts.values())
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    top = max(counts.values())
    leaders = [label for label, weight in ordered.items() if abs(weight - top) < 1e-9]
    required, strict = required_support(quorum, total)
    common = {
        "agreement": top / valid_weight,
        "support": top,
        "required": required,
        "strict": strict,
        "counts": ordered,
        "voters": len(labels),
        "valid": len(labels) - len(failed),
        "failed": failed,
    }
    if len(leaders) > 1:
        return VoteResult(outcome=TIE, label=None, tied=leaders, **common)
    reached = top > required + 1e-9 if strict else top + 1e-9 >= required
    if not reached:
        return VoteResult(outcome=NO_QUORUM, label=None, **common)
    return VoteResult(outcome=MAJORITY, label=leaders[0], **common)
