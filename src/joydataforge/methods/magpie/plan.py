"""What ``magpie``, ``magpie_response`` and ``magpie_tag`` cost before they run (``joyforge plan``).

``magpie``: each slot draws ``samples`` instructions, one raw completion each (or ``samples_per_call`` per
request); a dropped instruction is drawn again while ``attempts`` last (``magpie.drop_rate``).
``magpie_response``: one answer per turn, and a follow-up instruction before each turn after the first.
``magpie_tag``: one JSON call per tag; ``keep`` filters (``magpie_tag.keep_rate``).
"""

from __future__ import annotations

import math

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import DEFAULT_INSTRUCTION_PARAMS, TAGS, MagpieInstructionConfig, MagpieResponseConfig, MagpieTagConfig
from .step import MagpieInstruction, MagpieResponse, MagpieTag, _sample_index

DROP_RATE = Assumption(
    "magpie.drop_rate",
    0.0,
    "share of drawn instructions the cleaning rules drop (drawn again while attempts last)",
    0.0,
    0.8,
)
FOLLOWUP_DROP = Assumption(
    "magpie.followup_drop_rate", 0.0, "share of follow-up instructions dropped, ending that conversation", 0.0, 0.5
)
KEEP_RATE = Assumption("magpie_tag.keep_rate", 1.0, "share of tagged records magpie_tag's keep: lets through")


def instruction_fan_out(config: MagpieInstructionConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    drop = assume[DROP_RATE.name]
    params = {**DEFAULT_INSTRUCTION_PARAMS, **config.params}
    size = config.samples_per_call
    if size == 1:
        requests = config.samples * sum(drop**a for a in range(config.attempts))
    else:
        requests = sum(
            math.ceil(config.samples * drop**a / size)
            for a in range(config.attempts)
            if config.samples * drop**a >= 0.5
        )
    # A dropped instruction is drawn again while attempts last: with attempts > 1 the count depends on replies.
    exact = config.attempts == 1
    calls = [Calls("instruction", config.model, requests, exact=exact, params=params, n=min(size, config.samples))]
    kept = config.samples * (1 - drop**config.attempts)
    outputs = kept if config.on_drop == "drop" else float(config.samples)
    return FanOut(calls, outputs, config.on_drop != "drop", adds={config.output_field: "instruction"})


async def instruction_requests(step: MagpieInstruction, ctx: StepContext, record: Record) -> list[Request]:
    fmt = await step.chat_format(ctx)
    pre_query = fmt.pre_query(step.system)
    params = {"stop": list(fmt.stops), **step.params}
    size = step.samples_per_call
    if size == 1:
        samples = [_sample_index(ctx, record, step.name, k, 0) for k in range(step.samples)]
        return [Request("instruction", step.model, pre_query, "complete", params, sample=s) for s in samples]
    groups = [list(range(step.samples))[i : i + size] for i in range(0, step.samples, size)]
    return [
        Request(
            "instruction",
            step.model,
            pre_query,
            "complete",
            params,
            sample=_sample_index(ctx, record, step.name, group[0], 0),
            n=len(group),
        )
        for group in groups
    ]


def response_fan_out(config: MagpieResponseConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    keep = 1 - assume[FOLLOWUP_DROP.name]
    reached = [keep**t for t in range(config.turns)]  # turn t+1 is reached when t follow-ups were kept
    calls = [Calls("answer", config.model, sum(reached), exact=config.turns == 1, params=config.params)]
    if config.turns > 1:
        instruction_model = config.instruction_model or (
            str(record["magpie"]["model"]) if record and isinstance(record.get("magpie"), dict) else None
        )
        if instruction_model:
            params = config.instruction_params if config.instruction_params is not None else {}
            calls.append(Calls("follow_up", instruction_model, sum(reached[:-1]), exact=False, params=params))
    return FanOut(calls, reached[-1], config.turns == 1, adds={config.output_field: "answer", "messages": "answer"})


def response_requests(step: MagpieResponse, ctx: StepContext, record: Record) -> list[Request]:
    instruction = record.get(step.input_field)
    known = isinstance(instruction, str) and bool(instruction.strip())
    system = record.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    messages.append({"role": "user", "content": instruction if known else ""})
    return [Request("answer", step.model, messages, params=step.params, keyed=known)]


def tag_fan_out(config: MagpieTagConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    calls = [Calls(f"tag:{tag}", config.model, 1, json=True, params=config.params) for tag in config.tags]
    outputs = assume[KEEP_RATE.name] if config.keep else 1.0
    fields = {field: f"tag:{tag}" for tag in config.tags for field in TAGS[tag][1].values()}
    return FanOut(calls, outputs, not config.keep, adds=fields)


def tag_requests(step: MagpieTag, ctx: StepContext, record: Record) -> list[Request]:
    try:
        instruction = step._instruction(record)
    except Exception:
        instruction = ""
    out = []
    for tag in step.tags:
        template = step._template(ctx, tag)
        messages = template.render({"input": instruction})
        out.append(
            Request(
                f"tag:{tag}", step.model, messages, params=step.params, schema=template.schema, keyed=bool(instruction)
            )
        )
    return out


MAGPIE = MethodPlan(instruction_fan_out, instruction_requests, (DROP_RATE,))  # type: ignore[arg-type]
MAGPIE_RESPONSE = MethodPlan(response_fan_out, response_requests, (FOLLOWUP_DROP,))  # type: ignore[arg-type]
MAGPIE_TAG = MethodPlan(tag_fan_out, tag_requests, (KEEP_RATE,))  # type: ignore[arg-type]
