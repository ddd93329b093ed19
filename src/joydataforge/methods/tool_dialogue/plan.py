"""What ``tool_dialogue`` costs before it runs (``joyforge plan``).

Per record: one call writing the goals (with ``generate_goals``), then ``samples`` trajectories per goal, each
a loop of assistant turns. How many turns a trajectory takes is up to the model (it answers when it is done,
at the latest on turn ``max_turns``): ``tool_dialogue.turns`` is that number (default 2: one round of tool
calls, then the answer; capped at ``max_turns``), which a pilot measures. A tool without a Python function is
played by the ``simulator`` model: one call per tool call the assistant makes to it
(``tool_dialogue.tool_calls_per_turn`` on every turn but the last, times the share of calls that go to played
tools: all of them without ``tools_module``, else ``tool_dialogue.simulated_share``).

The first turn of each trajectory is rendered exactly as the step asks it (JSON mode: the agent prompt and the
reply schema; native: the messages and the tools), so the plan counts its tokens and finds it in the cache;
later turns show earlier replies and tool results, whose length is added from the assistant's ``max_tokens``.
"""

from __future__ import annotations

from typing import Any

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import ToolDialogueConfig
from .render import without_reasoning
from .step import ToolDialogue
from .toolbox import Toolbox
from .turns import json_view, reply_schema

TURNS = Assumption(
    "tool_dialogue.turns",
    2.0,
    "assistant turns (model calls) per trajectory, capped at max_turns (2: one round of tool calls, then the answer)",
    1.0,
    32.0,
    1.0,
    32.0,
)
TOOL_CALLS = Assumption(
    "tool_dialogue.tool_calls_per_turn",
    1.0,
    "tool calls an assistant turn makes when it calls tools (each played tool's call is a simulator call)",
    1.0,
    4.0,
    0.0,
    16.0,
)
SIMULATED = Assumption(
    "tool_dialogue.simulated_share",
    0.5,
    "share of tool calls that go to tools the simulator plays, when tools_module runs the others",
)
UNFINISHED = Assumption(
    "tool_dialogue.unfinished_rate",
    0.0,
    "share of trajectories without a usable final answer (dropped unless keep_unfinished)",
)


def fan_out(config: ToolDialogueConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    goals = config.generate_goals or 1
    trajectories = goals * config.samples
    turns = 1.0 if config.max_turns == 1 else min(float(config.max_turns), assume[TURNS.name])
    json_mode = config.tool_calling != "native"  # `auto` on a model without native tools, too
    calls = []
    if config.generate_goals:
        model = config.goal_model or config.model
        calls.append(Calls("goals", model, 1, json=True))
    # One turn is fixed (max_turns: 1); otherwise the model decides when to answer.
    exact = config.max_turns == 1
    calls.append(Calls("assistant", config.model, trajectories * turns, exact, json=json_mode, params=config.params))
    if config.simulator and turns > 1:
        share = assume[SIMULATED.name] if config.tools_module else 1.0
        simulated = trajectories * (turns - 1) * assume[TOOL_CALLS.name] * share
        calls.append(Calls("tool", config.simulator, simulated, exact=False, json=True))
    if config.candidates_field:
        outputs, exact_outputs = float(goals), True
    elif config.keep_unfinished:
        outputs, exact_outputs = float(trajectories), True
    else:
        outputs, exact_outputs = trajectories * (1.0 - assume[UNFINISHED.name]), False
    made = config.candidates_field or config.output_field
    adds = {made: "assistant", "answer": "assistant", "trajectory_text": "assistant"}
    return FanOut(calls, outputs, exact_outputs, adds=adds)


def _native(step: ToolDialogue, ctx: StepContext) -> bool:
    """Whether the step asks natively, as the run would: by the model's capabilities, not the plan's backend."""
    wanted = step.config.tool_calling
    if wanted != "auto":
        return wanted == "native"
    return bool(ctx.gateway.registry.get(step.config.model).capabilities.native_tools)


def _turn_request(
    step: ToolDialogue,
    ctx: StepContext,
    record: Record,
    toolbox: Toolbox,
    trajectory: list[dict[str, Any]],
    *,
    final: bool,
    sample: int,
    inserts: dict[str, float],
) -> Request:
    """One assistant turn's request for a trajectory so far, built as the step builds it."""
    config = step.config
    if _native(step, ctx):
        payload: dict[str, Any] = {"messages": without_reasoning(trajectory), "tools": toolbox.definitions()}
        if final:
            payload["tool_choice"] = "none"
        return Request(
            "assistant", config.model, payload, verb="chat_tools", params=step.params, sample=sample, inserts=inserts
        )
    goal = next(m["content"] for m in trajectory if m["role"] == "user")
    shown = {
        **step.options,
        "tools": [t.function for t in toolbox.tools],
        "goal": goal,
        "system": next((m["content"] for m in trajectory if m["role"] == "system"), None),
        "max_calls": config.max_calls_per_turn,
    }
    agent = step.prompt(ctx, config.prompt).render(record, shown)
    messages = json_view(trajectory, agent, step.prompt(ctx, config.results_prompt), record, shown, final=final)
    schema = reply_schema(
        toolbox, final=final, constrain=config.constrain_arguments, max_calls=config.max_calls_per_turn
    )
    return Request(
        "assistant", config.model, messages, params=step.params, schema=schema, sample=sample, inserts=inserts
    )


async def requests(step: ToolDialogue, ctx: StepContext, record: Record) -> list[Request]:
    """The goals request, each trajectory's first turn (known exactly when the goal is the record's), one
    later turn standing for the rest (a round of calls and results shown, their text left out), and one call
    to the simulator."""
    config = step.config
    toolbox = step._toolbox(record, ctx)  # a record whose tools the step refuses raises InputError: no call
    out: list[Request] = []
    if config.generate_goals:
        model = config.goal_model or config.model
        shown = {**step.options, "tools": [t.function for t in toolbox.tools], "count": config.generate_goals}
        messages = step.prompt(ctx, config.goal_prompt).render(record, shown)
        out.append(Request("goals", model, messages, schema=step._goal_schema(ctx)))
        goal, inserts = "", {"goals": 1.0 / config.generate_goals}  # one goal of the reply
    else:
        (goal,), _ = await step._goals(record, toolbox, ctx)  # the record's own: no call
        inserts = {}
    system = config.system if config.system is not None else record.get("system")
    start: list[dict[str, Any]] = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    start.append({"role": "user", "content": goal})
    final = config.max_turns == 1
    for sample in range(config.samples):
        out.append(_turn_request(step, ctx, record, toolbox, start, final=final, sample=sample, inserts=inserts))
    if config.max_turns > 1:
        call = {"id": "call_0_0", "type": "function", "function": {"name": "", "arguments": "{}"}}
        later = [
            *start,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0_0", "content": ""},
        ]
        shown_reply = {**inserts, "assistant": 1.0}
        out.append(
            _turn_request(step, ctx, record, toolbox, later, final=config.max_turns == 2, sample=0, inserts=shown_reply)
        )
        played = [tool for tool in toolbox.tools if tool.source is None]
        if config.simulator and played:
            options = {**step.options, "tool": played[0].function, "arguments": {}, "goal": goal}
            messages = step.prompt(ctx, config.simulator_prompt).render(record, options)
            out.append(Request("tool", config.simulator, messages, schema={"type": "object"}, keyed=False))
    return out


TOOL_DIALOGUE = MethodPlan(fan_out, requests, (TURNS, TOOL_CALLS, SIMULATED, UNFINISHED))  # type: ignore[arg-type]
