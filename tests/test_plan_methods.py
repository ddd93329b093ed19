"""The planners of ``tool_dialogue`` and ``verify`` against real runs through the executor (scripted models).

``tool_dialogue``: the planned turns are the ``tool_dialogue.turns`` assumption, which a pilot measures; the
first turn of each trajectory is rendered as the step asks it, so a run's first turns are cached in the next
plan. ``verify``: no model call, and it is planned (no "no planner" note).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.fanout import Assumptions
from joydataforge.engine.plan import known_assumptions, make_plan
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, write_jsonl
from tests.test_plan import distinct, run_metered

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
GOALS = [{"id": f"g{i}", "goal": f"What is the weather in city number {i}?"} for i in range(4)]


def agent_calling(rounds: int):
    """JSON mode: ``rounds`` turns of one tool call each, then the answer (``rounds + 1`` turns)."""

    def reply(messages, schema):
        turn = sum(1 for m in messages if m["role"] == "assistant")
        if "anyOf" not in schema or turn >= rounds:
            return json.dumps({"answer": "It is sunny."})
        return json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})

    return reply


def simulator(messages, schema):
    return json.dumps({"temperature_c": 21})


def pipeline_of(tmp_path: Path, steps: list, records: list[dict]) -> Pipeline:
    write_jsonl(tmp_path / "in.jsonl", records)
    return make_pipeline(tmp_path, steps, run={"cache": str(tmp_path / "cache.sqlite")})


TOOL_STEP = {
    "tool_dialogue": {
        "model": "agent",
        "tools": TOOLS,
        "simulator": "sim",
        "tool_calling": "json",
        "max_turns": 4,
        "samples": 2,
    }
}


def backends(rounds: int) -> dict[str, ScriptedBackend]:
    return {"agent": ScriptedBackend(agent_calling(rounds)), "sim": ScriptedBackend(simulator)}


def test_tool_dialogue_planned_turns_and_simulated_calls_are_the_runs(tmp_path):
    registry = distinct(["agent", "sim"])
    pipeline = pipeline_of(tmp_path, [TOOL_STEP], GOALS)
    plan = asyncio.run(make_plan(pipeline, registry))
    calls = {line.model: line.calls for line in plan.lines}
    # 4 goals x 2 samples, 2 turns each at the default (one round of calls, then the answer), 1 simulated call.
    assert calls == {"agent": 16, "sim": 8}
    assert not any("no planner" in note for note in plan.notes)
    assert {a["name"] for a in plan.assumptions} >= {"tool_dialogue.turns", "tool_dialogue.tool_calls_per_turn"}

    meter = run_metered(pipeline_of(tmp_path, [TOOL_STEP], GOALS), registry, backends(rounds=1))
    assert {model: t.requests for (_, model), t in meter.totals.items()} == calls

    # The first turns were rendered as the step asks them: after the run, every agent call counts as cached.
    again = asyncio.run(make_plan(pipeline_of(tmp_path, [TOOL_STEP], GOALS), registry))
    agent = next(line for line in again.lines if line.model == "agent")
    assert agent.cached_calls == pytest.approx(agent.calls)


def test_tool_dialogue_turns_are_an_assumption_the_user_sets_and_a_pilot_measures(tmp_path):
    registry = distinct(["agent", "sim"])
    assume = Assumptions(known_assumptions(), {"tool_dialogue.turns": 3})
    set_by_user = asyncio.run(make_plan(pipeline_of(tmp_path, [TOOL_STEP], GOALS), registry, assume))
    assert {line.model: line.calls for line in set_by_user.lines} == {"agent": 24, "sim": 16}

    (tmp_path / "cache.sqlite").unlink(missing_ok=True)
    piloted = asyncio.run(
        make_plan(pipeline_of(tmp_path, [TOOL_STEP], GOALS), registry, pilot=2, backends=backends(rounds=2))
    )
    calls = {line.model: line.calls for line in piloted.lines}
    assert calls == {"agent": pytest.approx(8 * 3), "sim": pytest.approx(8 * 2)}  # 3 turns measured, not 2
    meter = run_metered(pipeline_of(tmp_path, [TOOL_STEP], GOALS), registry, backends(rounds=2))
    assert {model: t.requests for (_, model), t in meter.totals.items()} == pytest.approx(calls)


def test_verify_is_planned_and_calls_no_model(tmp_path):
    registry = distinct(["m"])
    records = [{"id": f"q{i}", "input": f"{i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    steps = [
        {"generate": {"model": "m", "prompt": "answer", "output_field": "target"}},
        {"verify": {"checker": "math", "answer_field": "target", "reference_field": "answer", "on_fail": "drop"}},
    ]
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, records), registry))
    assert [(line.step, line.calls) for line in plan.lines] == [("generate", 3)]
    assert not any("no planner" in note for note in plan.notes)
    assert "verify.fail_rate" in {a["name"] for a in plan.assumptions}
