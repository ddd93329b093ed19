"""What ``critique_revise`` costs before it runs (``joyforge plan``).

A draft (unless ``answer_field`` supplies the answer), then per round a critique and, unless the critic
approves, a revision. How many rounds run depends on the critic: ``critique.approve_rate`` is the share of
critiques that approve (default 0: every round runs, the most calls). Approval is a reply, so the count is marked
inexact; for a critic that cannot approve (rounds fixed) it is what the run makes.
"""

from __future__ import annotations

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import CritiqueReviseConfig
from .step import CritiqueRevise

APPROVE_RATE = Assumption(
    "critique.approve_rate", 0.0, "share of critiques that approve the answer, ending its critique rounds early"
)


def rounds_expected(rounds: int, approve_rate: float) -> tuple[float, float]:
    """Expected (critiques, revisions) per record: round r runs when the r-1 critiques before it did not approve."""
    keep = 1.0 - approve_rate
    critiques = sum(keep**r for r in range(rounds))
    return critiques, critiques * keep


def fan_out(config: CritiqueReviseConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    approve = assume[APPROVE_RATE.name]
    critiques, revisions = rounds_expected(config.rounds, approve)
    exact = False  # whether a critic approves is a reply
    calls = []
    if config.answer_field is None:
        calls.append(Calls("draft", config.model, 1, params=config.params))
    calls.append(Calls("critique", config.critic, critiques, exact=exact, json=True, params=config.critic_params))
    if revisions:
        calls.append(Calls("revise", config.model, revisions, exact=exact, params=config.params))
    outputs = 1.0
    if config.on_not_approved != "keep":
        outputs = 1.0 - (1.0 - approve) ** config.rounds
    kept_all = config.on_not_approved == "keep"  # every record goes on, approved or not
    return FanOut(calls, outputs, kept_all, adds={config.output_field: "revise" if revisions else "draft"})


def requests(step: CritiqueRevise, ctx: StepContext, record: Record) -> list[Request]:
    out = []
    if step.answer_field is None:
        messages = step.prompt(ctx, step.draft_prompt).render(record, step.options)
        out.append(Request("draft", step.model, messages, params=step.params))
        answer_role = "draft"
    else:
        answer_role = ""
    critic = step.prompt(ctx, step.critique_prompt)
    options = {**step.options, "answer": "", "round": 1}
    inserts = {answer_role: 1.0} if answer_role else {}
    critique = critic.render(record, options)
    out.append(
        Request("critique", step.critic, critique, params=step.critic_params, schema=critic.schema, inserts=inserts)
    )
    revise_options = {**options, "critique": {"issues": [], "verdict": "revise", "score": 1}}
    revise = step.prompt(ctx, step.revise_prompt).render(record, revise_options)
    revise_inserts = {**inserts, "critique": 1.0}
    out.append(Request("revise", step.model, revise, params=step.params, inserts=revise_inserts or {"critique": 1.0}))
    return out


CRITIQUE = MethodPlan(fan_out, requests, (APPROVE_RATE,))  # type: ignore[arg-type]
