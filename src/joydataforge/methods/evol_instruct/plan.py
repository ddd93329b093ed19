"""What ``evol_instruct`` costs before it runs (``joyforge plan``).

Per record: the root's judgement (``judge_root``), then each round evolves every sampled parent with every
operation (round 1: the root alone, so its calls are exact), and every child that survives the rules that
need no model is checked for information gain (``equal``), answered (``answer_model``) and judged. How many
children come back, survive and are valid decides the later calls: those shares are assumptions (defaults:
every child asked for comes back, none is eliminated, all are valid: the most calls).
"""

from __future__ import annotations

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import EvolInstructConfig
from .operations import carry_count
from .step import EvolInstruct, labels_of, root_instruction

RETURNED = Assumption(
    "evol.children_returned", 1.0, "share of the children asked for that an evolving call returns", 0.3, 1.0
)
LOCAL = Assumption(
    "evol.local_elimination_rate",
    0.0,
    "share of children eliminated before any model check (empty, leak, duplicate)",
    0.0,
    0.8,
)
EQUAL = Assumption(
    "evol.equal_rate", 0.0, "share of checked children judged equal to their parent (no information gain)"
)
UNANSWERABLE = Assumption(
    "evol.unanswerable_rate", 0.0, "share of answered children the answering model refuses", 0.0, 0.5
)
VALID = Assumption("evol.valid_rate", 1.0, "share of judged children the judge finds valid (carried on, kept)")
JUDGE_RETRY = Assumption(
    "evol.judge_retry_rate", 0.0, "share of judgements unusable and asked again (up to judge_retries times)", 0.0, 0.5
)


def _judge_attempts(retries: int, rate: float) -> float:
    return sum(rate**k for k in range(retries + 1))


def rounds(config: EvolInstructConfig, assume: Assumptions) -> list[dict[str, float]]:
    """Per round: parents evolved, evolving calls, children, and the calls each check makes."""
    children_per_parent = sum(config.children_per_operation()[op] for op in dict.fromkeys(config.operations))
    operations = len(dict.fromkeys(config.operations))
    survive = (1 - assume[LOCAL.name]) * assume[RETURNED.name]
    equal_kept = 1 - assume[EQUAL.name] if "equal" in config.eliminate else 1.0
    answered_kept = 1 - assume[UNANSWERABLE.name] if config.answer_model and "unanswerable" in config.eliminate else 1
    out = []
    pool = 1.0
    for _ in range(config.rounds):
        parents = min(float(config.sample_size), pool)
        if parents <= 0:
            break
        children = parents * children_per_parent
        checked = children * survive
        answered = checked * equal_kept
        judged = answered * answered_kept
        valid = judged * assume[VALID.name]
        out.append(
            {
                "parents": parents,
                "evolve": parents * operations,
                "equal": checked if "equal" in config.eliminate else 0.0,
                "answer": answered if config.answer_model else 0.0,
                "judge": judged,
                "valid": valid,
            }
        )
        pool = float(carry_count(round(valid), config.top_fraction)) if valid >= 0.5 else 0.0
    return out


def fan_out(config: EvolInstructConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    attempts = _judge_attempts(config.judge_retries, assume[JUDGE_RETRY.name])
    per_round = rounds(config, assume)
    judge_model, equal_model = config.judge_model_name(), config.equal_model_name()
    calls = []
    if config.judge_root:
        calls.append(Calls("judge", judge_model, attempts, json=True, params=config.judge_params))
    if per_round:
        first = per_round[0]
        calls.append(Calls("evolve", config.model, first["evolve"], json=True, params=config.params))
        later = sum(r["evolve"] for r in per_round[1:])
        if later:
            calls.append(Calls("evolve", config.model, later, exact=False, json=True, params=config.params))
        for role, model, params, json in (
            ("equal", equal_model, config.judge_params, True),
            ("answer", config.answer_model, config.answer_params, False),
            ("judge", judge_model, config.judge_params, True),
        ):
            count = sum(r[role] for r in per_round) * (attempts if role == "judge" else 1.0)
            if count and model:
                calls.append(Calls(role, model, count, exact=False, json=json, params=params))
    kept = sum(r["valid"] for r in per_round)
    outputs = 1.0 if config.output == "nested" else kept
    return FanOut(calls, outputs, exact_outputs=config.output == "nested", adds={"input": "evolve"})


def requests(step: EvolInstruct, ctx: StepContext, record: Record) -> list[Request]:
    """The root's judgement and round 1's evolving calls are known from the record; a child's checks are
    rendered with its text left out (it is an evolving call's reply)."""
    try:
        text, _ = root_instruction(record)
    except Exception:  # a record the step would fail on costs no call
        return []
    out = []
    judge = step.template(ctx, "judge")
    domain = step.domain
    root_judge = judge.render({"instruction": text, "domain": domain}, step.options)
    if step.judge_root:
        out.append(Request("judge", step.judge_model, root_judge, params=step.judge_params, schema=judge.schema))
    labels = labels_of(record.get("task_label")) if isinstance(record.get("task_label"), (str, list)) else []
    for op in step.operations:
        values = {
            "instruction": text,
            "labels": labels,
            "operation": op.name,
            "count": step.children[op.name],
            "domain": domain,
            "language": step.language,
        }
        if step.use_history and record.get("history") is not None:
            values["history"] = record["history"]
        messages = step.template(ctx, step._role_of(op)).render(values, step.options)
        out.append(Request("evolve", step.model, messages, params=step.params, schema=step.evolve_schema(ctx, op)))
    asked = [step.children[op.name] for op in step.operations]
    child = {"evolve": len(asked) / sum(asked)}  # one child: its share of an evolving call's reply
    if "equal" in step.rules:
        equal = step.template(ctx, "equal")
        messages = equal.render({"parent": text, "instruction": "", "domain": domain}, step.options)
        out.append(
            Request("equal", step.equal_model, messages, params=step.judge_params, schema=equal.schema, inserts=child)
        )
    if step.answer_model:
        messages = step.template(ctx, "answer").render({"input": "", "domain": domain}, step.options)
        out.append(Request("answer", step.answer_model, messages, params=step.answer_params, inserts=child))
    messages = judge.render({"instruction": "", "domain": domain}, step.options)
    out.append(
        Request("judge", step.judge_model, messages, params=step.judge_params, schema=judge.schema, inserts=child)
    )
    return out


EVOL = MethodPlan(fan_out, requests, (RETURNED, LOCAL, EQUAL, UNANSWERABLE, VALID, JUDGE_RETRY))  # type: ignore[arg-type]
