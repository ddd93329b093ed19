"""What ``dialogue_intent`` and ``intent_binary`` cost before they run (``joyforge plan``).

``dialogue_intent``: one call per distinct dialogue (later copies of a dialogue id cost nothing), asked again
with a new sample when the reply does not line up with the turns (``dialogue.retry_rate``); it fans out into
one record per user turn. ``intent_binary``: one call per record whose coarse label is checked: exact on
known records, else the ``intent_binary.check_rate`` share.
"""

from __future__ import annotations

from typing import Any

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from ...records import content_hash
from .config import DialogueIntentConfig, IntentBinaryConfig
from .step import DialogueIntent, IntentBinaryCheck, dialogue_messages, user_positions

RETRY_RATE = Assumption(
    "dialogue.retry_rate",
    0.0,
    "share of dialogue labellings that do not line up with the turns and are asked again",
    0.0,
    0.5,
)
TURNS = Assumption(
    "dialogue.turns", 4.0, "user turns per dialogue, where the dialogues are not known before the run", 1, 20, 0, 1e4
)
CHECK_RATE = Assumption(
    "intent_binary.check_rate", 1.0, "share of records whose coarse label intent_binary checks (unknown records)"
)
REJECT_RATE = Assumption(
    "intent_binary.reject_rate", 0.0, "share of checked labels the binary check rejects (dropped by on_reject: drop)"
)


def _dialogue(config: DialogueIntentConfig, record: Record) -> tuple[str, int] | None:
    """The dialogue's id (as the step takes it) and its number of user turns; None where the step would fail."""
    try:
        messages = dialogue_messages(record.get(config.dialog_field))
    except TypeError:
        return None
    turns = len(user_positions(messages))
    if not turns:
        return None
    fields = [config.dialog_id_field] if config.dialog_id_field else ["dialog_id", "diaglog_id"]
    for field in fields:
        value: Any = record.get(field)
        if value not in (None, ""):
            return str(value), turns
    if config.dialog_id_field:
        return None
    return content_hash([[m["role"], m["content"]] for m in messages], 8), turns


def intent_fan_out(config: DialogueIntentConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    rate = assume[RETRY_RATE.name]
    attempts = sum(rate**k for k in range(config.retries + 1))
    if record is None:
        turns, key = assume[TURNS.name], None
    else:
        found = _dialogue(config, record)
        if found is None:
            return FanOut([], 0.0)
        key, turns = found[0], float(found[1])
    calls = [Calls("label", config.model, attempts, exact=rate == 0.0, json=True, params=config.params)]
    return FanOut(calls, turns, record is not None, adds={"label": "label", "reason": "label"}, once_per=key)


def intent_requests(step: DialogueIntent, ctx: StepContext, record: Record) -> list[Request]:
    try:
        messages = dialogue_messages(record[step.dialog_field])
    except (KeyError, TypeError):
        return []
    positions = user_positions(messages)
    if not positions:
        return []
    view = {k: v for k, v in record.items() if not k.startswith("_")}
    rendered, schema = step.labelling_prompt(ctx, view, messages, positions)
    return [Request("label", step.model, rendered, params=step.params, schema=schema)]


def binary_fan_out(config: IntentBinaryConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    if record is None:
        rate, exact = assume[CHECK_RATE.name], False
    else:
        label = record.get(config.label_field)
        checked = isinstance(label, str) and bool(label)
        checked = checked and (config.check_labels is None or label in config.check_labels)
        rate, exact = (1.0 if checked else 0.0), True
    calls = [Calls("check", config.model, rate, exact=exact, json=True, params=config.params)]
    outputs = 1.0 - rate * assume[REJECT_RATE.name] if config.on_reject == "drop" else 1.0
    return FanOut(calls, outputs, config.on_reject != "drop", adds={"binary_reason": "check"})


def binary_requests(step: IntentBinaryCheck, ctx: StepContext, record: Record) -> list[Request]:
    label = record.get(step.label_field)
    known = isinstance(label, str) and bool(label)
    if known and step.check_labels is not None and label not in step.check_labels:
        return []
    shown = label if known else next(iter(step.labels), "")
    options = {**step.options, "label": shown, "description": step.labels.get(shown, "")}
    messages = step.template_for(ctx, shown).render(record, options)
    return [Request("check", step.model, messages, params=step.params, schema=step.SCHEMA, keyed=known)]


DIALOGUE_INTENT = MethodPlan(intent_fan_out, intent_requests, (RETRY_RATE, TURNS))  # type: ignore[arg-type]
INTENT_BINARY = MethodPlan(binary_fan_out, binary_requests, (CHECK_RATE, REJECT_RATE))  # type: ignore[arg-type]
