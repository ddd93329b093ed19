"""What ``vote`` and ``cascade`` cost before they run (``joyforge plan``).

``vote``: one call per voter per record, all with the same prompt: exact. ``cascade``: one call per record
the gate sends on; which records those are depends on the votes, so the share is the ``cascade.gate_rate``
assumption (exact only with ``gate: all``).
"""

from __future__ import annotations

from typing import Any

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import CascadeConfig, VoteConfig
from .step import Cascade, Vote

GATE_RATE = Assumption(
    "cascade.gate_rate",
    0.5,
    "share of voted records a cascade sends to its stronger model (its gate labels, ties, missed quorums)",
)
NO_MAJORITY_RATE = Assumption(
    "vote.no_majority_rate",
    0.0,
    "share of votes that end in a tie or miss the quorum (dropped by on_no_majority: drop)",
    0.0,
    0.5,
)


def vote_fan_out(config: VoteConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    calls = [Calls("vote", model, 1, json=True, params=config.params) for model in config.voters()]
    outputs, exact = 1.0, True
    if config.on_no_majority == "drop":
        outputs, exact = 1.0 - assume[NO_MAJORITY_RATE.name], False
    return FanOut(calls, outputs, exact, adds={config.votes_field: "vote", config.output_field: "vote"})


def vote_requests(step: Vote, ctx: StepContext, record: Record) -> list[Request]:
    labeler = step._labeler
    messages = labeler.template(ctx).render(record, step.options)
    schema = labeler.schema(ctx)
    return [Request("vote", model, messages, params=step.params, schema=schema) for model in step.models]


def cascade_fan_out(config: CascadeConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    if config.gate == "all":
        rate, exact = 1.0, True
    else:
        rate, exact = assume[GATE_RATE.name], False
    calls = [Calls("cascade", config.model, rate, exact=exact, json=True, params=config.params)]
    return FanOut(calls, adds={config.output_field or f"{config.prefix}label": "cascade"})


def cascade_requests(step: Cascade, ctx: StepContext, record: Record) -> list[Request]:
    """The request a gated record sends; the vote it shows is the record's when it has one (a stand-in
    majority otherwise: the plan counts the prompt's own words, the voters' reasons are not known)."""
    vote: Any = record.get(step.vote_field)
    votes: Any = record.get(step.votes_field)
    known = isinstance(vote, dict) and "outcome" in vote
    options = {
        **step.options,
        "vote": vote if known else {"label": None, "outcome": "majority"},
        "votes": votes if isinstance(votes, dict) else {},
    }
    messages = step.template(ctx).render(record, options)
    return [Request("cascade", step.model, messages, params=step.params, schema=step.schema(ctx), keyed=known)]


VOTE = MethodPlan(vote_fan_out, vote_requests, (NO_MAJORITY_RATE,))  # type: ignore[arg-type]
CASCADE = MethodPlan(cascade_fan_out, cascade_requests, (GATE_RATE,))  # type: ignore[arg-type]
