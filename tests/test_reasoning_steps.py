"""Reasoning traces kept by the steps that used to drop them (issue 17, part 1): ``rewrite``, ``seedless``,
``dialogue_intent``, ``magpie_response`` and ``tool_dialogue`` keep a thinking model's trace apart from what they
write, and drop it with ``keep_reasoning: false``; no model, check or prompt downstream reads the trace unless told.
``tool_dialogue``'s calls also carry their prompt's provenance, and its final answers pass the text checks.

Thinking replies come from scripted models (a ``<think>`` block split off as the openai backend splits it) and
from the real HTTP mock server (``[[mock:think=field]]``: ``reasoning_content`` with a token count).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.prompted import prompt_hash
from joydataforge.errors import StepError
from joydataforge.methods.tool_dialogue.step import ToolDialogue
from joydataforge.models.backends.base import Completion, Usage
from joydataforge.models.gateway import Gateway
from joydataforge.models.reasoning import count_tokens, separate
from joydataforge.prompts.renderer import PromptLibrary
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, run_records, run_step, write_jsonl
from tests.test_magpie_step import MagpieBackend
from tests.test_magpie_step import run as run_magpie
from tests.test_tool_dialogue import (
    WEATHER,
    FirstTurnChooser,
    mock_registry,
    rubric_judge,
    run_native,
    scripted_agent,
)


def thought(completion: Completion, trace: str) -> Completion:
    """``completion`` as a thinking model's reply after the model layer split it: answer and trace apart."""
    completion.text, completion.reasoning = separate(f"<think>{trace}</think>{completion.text}", None)
    completion.usage.reasoning_tokens, completion.usage.reasoning_estimated = count_tokens(completion.reasoning)
    return completion


class ThinkingBackend(ScriptedBackend):
    """Every chat reply comes with the trace ``why: <the answer's first 30 characters>``."""

    async def chat(self, messages, params, *, json_schema=None, seed=None):  # type: ignore[no-untyped-def]
        completion = await super().chat(messages, params, json_schema=json_schema, seed=seed)
        return thought(completion, f"why: {completion.text[:30]}")


def no_trace_sent(calls: list[dict[str, Any]]) -> bool:
    """No request a scripted model got held a trace, in any message (``why:``) or key (``reasoning_content``)."""
    return all("why:" not in json.dumps(call) and "reasoning_content" not in json.dumps(call) for call in calls)


# ---------------------------------------------------------------------------------------------- rewrite


def rewriter(messages: Any, schema: Any) -> str:
    return json.dumps(
        {
            "cases": [
                {"type": "paraphrase", "input": "how do I cook an egg in boiling water"},
                {"type": "tone", "input": "egg boiling: how, please?"},
            ]
        }
    )


@pytest.mark.parametrize("keep", [True, False])
def test_rewrite_keeps_the_replys_trace_on_each_case(tmp_path: Path, keep: bool) -> None:
    parent = {
        "id": "a",
        "input": "how to boil an egg",
        "input_reasoning": "an earlier trace of the question",
        "target": "in water",
        "target_reasoning": "a trace of the answer",
        "rewrite_reasoning": "the trace of an earlier rewrite",
    }
    backend = ThinkingBackend(rewriter)
    step = {"rewrite": {"model": "m", "types": ["paraphrase", "tone"], "keep_reasoning": keep}}
    result = run_records(tmp_path, [parent], [step], {"m": backend})
    assert len(result.data) == 2, result.failures
    for case in result.data:
        assert "why:" not in case["input"]
        assert case.get("rewrite_reasoning") == (f"why: {rewriter(None, None)[:30]}" if keep else None)
        # the parent's answer and its trace stay together; the rewritten question's old trace does not
        assert case["target_reasoning"] == "a trace of the answer" and "input_reasoning" not in case
    # the rewriter was shown the case, not the traces kept beside its fields
    assert no_trace_sent(backend.calls) and "a trace of the answer" not in json.dumps(backend.calls)


def test_rewrite_drops_a_dropped_fields_trace_with_it(tmp_path: Path) -> None:
    parent = {"id": "a", "input": "how to boil an egg", "target": "in water", "target_reasoning": "t"}
    step = {"rewrite": {"model": "m", "types": ["paraphrase", "tone"], "drop_fields": ["target"]}}
    result = run_records(tmp_path, [parent], [step], {"m": ThinkingBackend(rewriter)})
    assert result.data and all("target" not in c and "target_reasoning" not in c for c in result.data)


# ---------------------------------------------------------------------------------------------- seedless


def two_questions(messages: Any, schema: Any) -> str:
    count = schema["properties"]["records"]["maxItems"]
    items = [{"input": q} for q in ("why is the sky blue at noon", "how do tides follow the moon")][:count]
    return json.dumps({"records": items})


@pytest.mark.parametrize("keep", [True, False])
def test_seedless_keeps_the_trace_of_the_reply_that_wrote_each_record(tmp_path: Path, keep: bool) -> None:
    backend = ThinkingBackend(two_questions)
    step = {"seedless": {"model": "m", "n_per_topic": 2, "per_call": 2, "keep_reasoning": keep}}
    result = run_records(tmp_path, [{"id": "t", "topic": "nature"}], [step], {"m": backend})
    assert [r["input"] for r in result.data] == ["why is the sky blue at noon", "how do tides follow the moon"]
    # one reply wrote both: they share its trace, and dedup compared the questions, not the (equal) traces
    reply = two_questions(None, {"properties": {"records": {"maxItems": 2}}})
    assert [r.get("seedless_reasoning") for r in result.data] == [f"why: {reply[:30]}" if keep else None] * 2
    assert len(backend.calls) == 1


# ---------------------------------------------------------------------------------------------- dialogue_intent


def labeller(messages: Any, schema: Any) -> str:
    turns = schema["properties"]["turns"]["prefixItems"]
    items = [
        {
            "index": t["properties"]["index"]["const"],
            "label": "其他",
            "reason": "r",
            "content": t["properties"]["content"]["const"],
        }
        for t in turns
    ]
    return json.dumps({"turns": items}, ensure_ascii=False)


@pytest.mark.parametrize("keep", [True, False])
def test_dialogue_intent_keeps_the_trace_on_every_turn(tmp_path: Path, keep: bool) -> None:
    dialogue = {"dialog_id": "d1", "dialogs": "用户: 你好\n助手: 您好\n用户: 谢谢"}
    step = {"dialogue_intent": {"model": "m", "keep_reasoning": keep}}
    result = run_records(tmp_path, [dialogue], [step], {"m": ThinkingBackend(labeller)})
    assert [r["label"] for r in result.data] == ["其他", "其他"], result.failures
    for row in result.data:
        if keep:
            assert row["label_reasoning"].startswith("why: ")
        else:
            assert "label_reasoning" not in row
        assert row["_meta"]["calls"][0]["reasoning_tokens"] > 0  # counted either way


# ---------------------------------------------------------------------------------------------- magpie_response


class ThinkingMagpie(MagpieBackend):
    async def chat(self, messages, params, *, json_schema=None, seed=None):  # type: ignore[no-untyped-def]
        completion = await super().chat(messages, params, json_schema=json_schema, seed=seed)
        return thought(completion, f"why: {completion.text[:30]}")


def test_magpie_response_keeps_each_answers_trace_and_the_models_never_read_one(tmp_path: Path) -> None:
    model = ThinkingMagpie(["What is DNA?", "And what is RNA?"])
    steps = [{"magpie": {"model": "m"}}, {"magpie_response": {"model": "m", "turns": 2}}]
    _, (row,), failures = run_magpie(tmp_path, steps, {"m": model}, n=1)
    assert not failures
    assert row["target"] == "answer to: And what is RNA?"
    assert row["target_reasoning"] == "why: answer to: And what is RNA?"
    assistant = [m for m in row["messages"] if m["role"] == "assistant"]
    assert [m["reasoning_content"] for m in assistant] == ["why: answer to: What is DNA?", row["target_reasoning"]]
    assert all("reasoning_content" not in m for m in row["history"])  # the earlier turns: answers alone
    # the second answer and the follow-up instruction were asked from the conversation without its traces
    assert no_trace_sent([c for c in model.calls if "messages" in c])
    assert all("why:" not in c["prompt"] for c in model.calls if "prompt" in c)


def test_magpie_response_keep_reasoning_false(tmp_path: Path) -> None:
    steps = [{"magpie": {"model": "m"}}, {"magpie_response": {"model": "m", "keep_reasoning": False}}]
    _, (row,), _ = run_magpie(tmp_path, steps, {"m": ThinkingMagpie(["What is DNA?"])}, n=1)
    assert "target_reasoning" not in row and all("reasoning_content" not in m for m in row["messages"])
    assert row["_meta"]["calls"][-1]["reasoning_tokens"] > 0


def test_magpie_response_reads_the_servers_reasoning_content(tmp_path: Path, mock_server: Any) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "s", "input": "what is DNA [[mock:think=field]]"}])
    pipeline = make_pipeline(tmp_path, [{"magpie_response": {"model": "m"}}])
    registry = mock_registry(mock_server, "m")
    LocalExecutor(pipeline, registry=registry, gateway=Gateway(registry)).run_sync()
    (row,) = [json.loads(x) for x in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    assert row["target"] == "echo: what is DNA" and row["target_reasoning"] == "thinking about: what is DNA"
    assert row["messages"][-1]["reasoning_content"] == row["target_reasoning"]
    assert row["_meta"]["calls"][0]["reasoning_tokens"] == 5  # the server's count (the mock counts words)


# ---------------------------------------------------------------------------------------------- tool_dialogue


def tool_step(**settings: Any) -> ToolDialogue:
    return ToolDialogue(**{"model": "agent", "tools_module": WEATHER, "tool_calling": "json", **settings})


PARIS_CALL = [[{"name": "get_weather", "arguments": {"city": "Paris"}}]]


@pytest.mark.parametrize("keep", [True, False])
def test_tool_dialogue_keeps_each_turns_trace_in_its_message(keep: bool) -> None:
    agent = ThinkingBackend(scripted_agent(PARIS_CALL))
    (out,) = run_step(tool_step(keep_reasoning=keep), {"goal": "Weather in Paris?"}, {"agent": agent})
    assistant = [m for m in out["messages"] if m["role"] == "assistant"]
    if keep:
        assert [m["reasoning_content"][:5] for m in assistant] == ["why: ", "why: "]
        assert list(assistant[0]) == ["role", "content", "reasoning_content", "tool_calls"]
    else:
        assert all("reasoning_content" not in m for m in assistant)
    assert out["answer"] == "It is 18 °C and cloudy in Paris."
    assert "why:" not in out["trajectory_text"]  # judges read the trajectory without its traces
    assert no_trace_sent(agent.calls)  # the second turn was asked without the first turn's trace
    assert all(c["reasoning_tokens"] > 0 for c in out["_meta"]["calls"])


class NativeThinker(ScriptedBackend):
    """A server with native tool calls whose model thinks before every turn: calls Paris first, then answers."""

    supports_tools = True

    async def chat_tools(self, messages, tools, params, *, tool_choice=None, seed=None) -> Completion:  # type: ignore[no-untyped-def]
        self.calls.append({"messages": messages, "tools": tools})
        if messages[-1]["role"] == "tool":
            return thought(Completion(text="It is 18 °C in Paris.", usage=Usage(5, 6)), "why: read the result")
        call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        return thought(Completion(text="", usage=Usage(5, 6), tool_calls=[call]), "why: look it up")


def test_native_turns_keep_their_traces_and_the_model_never_reads_an_earlier_one() -> None:
    agent = NativeThinker()
    (out,) = run_step(tool_step(tool_calling="native"), {"goal": "Weather in Paris?"}, {"agent": agent})
    assistant = [m for m in out["messages"] if m["role"] == "assistant"]
    assert [m["reasoning_content"] for m in assistant] == ["why: look it up", "why: read the result"]
    assert out["tool_dialogue"]["mode"] == "native" and out["answer"] == "It is 18 °C in Paris."
    assert len(agent.calls) == 2 and no_trace_sent(agent.calls)


def test_native_final_answer_with_the_servers_reasoning_content(tmp_path: Path, mock_server: Any) -> None:
    _, (out,) = run_native(tmp_path, mock_server, [{"input": "get_weather in Paris [[mock:think=field]]"}])
    final = out["messages"][-1]
    assert final["role"] == "assistant" and final["reasoning_content"].startswith("thinking about:")
    assert "thinking about" not in final["content"] and out["tool_dialogue"]["status"] == "answered"
    requests = [r["body"] for r in mock_server.stats()["last_requests"]]
    assert all("reasoning_content" not in json.dumps(body["messages"]) for body in requests)


class ThinkingChooser(FirstTurnChooser):
    """The first trajectory looks up Paris, the second Atlantis; every turn thinks first."""

    async def chat(self, messages, params, *, json_schema=None, seed=None):  # type: ignore[no-untyped-def]
        completion = await super().chat(messages, params, json_schema=json_schema, seed=seed)
        return thought(completion, f"why: {completion.text[:30]}")


TRAJECTORY_PAIRS = [
    {
        "tool_dialogue": {
            "model": "agent",
            "tools_module": WEATHER,
            "tool_calling": "json",
            "samples": 2,
            "candidates_field": "trajectory_candidates",
        }
    },
    {"dpo": {"judges": ["judge"], "candidates_field": "trajectory_candidates", "aspects": ["helpfulness"]}},
]


def test_dpo_pairs_of_trajectories_keep_the_turns_traces(tmp_path: Path) -> None:
    judge = ScriptedBackend(rubric_judge)
    result = run_records(
        tmp_path, [{"goal": "Weather in Paris?"}], TRAJECTORY_PAIRS, {"agent": ThinkingChooser(), "judge": judge}
    )
    (pair,) = result.data
    for side in ("chosen", "rejected"):
        assistant = [m for m in pair[side] if m["role"] == "assistant"]
        assert len(assistant) == 2 and all(m["reasoning_content"].startswith("why: ") for m in assistant)
    assert (pair["score_chosen"], pair["score_rejected"]) == (9.0, 2.0)
    assert no_trace_sent(judge.calls)  # judges read trajectories without their traces by default


# ---------------------------------------------------------------------------------------------- provenance, checks


def test_tool_dialogue_calls_carry_their_prompts_provenance() -> None:
    tools = [
        {"name": "book_table", "description": "Books a table.", "parameters": {"type": "object", "properties": {}}}
    ]

    def agent(messages: Any, schema: Any) -> str:
        if "goals" in json.dumps(schema):
            return json.dumps({"goals": ["Book a table for two."]})
        return scripted_agent([[{"name": "book_table", "arguments": {}}]], "Booked.")(messages, schema)

    step = ToolDialogue("agent", tools=tools, simulator="sim", tool_calling="json", generate_goals=1, min_tool_calls=1)
    backends = {"agent": ScriptedBackend(agent), "sim": ScriptedBackend(lambda m, s: json.dumps({"ok": True}))}
    (out,) = run_step(step, {"id": "r"}, backends)
    calls = {c["role"]: c for c in out["_meta"]["calls"]}
    assert set(calls) == {"goals", "assistant#1", "tool:book_table", "assistant#2"}
    library = PromptLibrary()
    for role, prompt in (("goals", "tool_goal"), ("assistant#1", "tool_agent"), ("tool:book_table", "tool_simulator")):
        template = library.get(prompt)
        assert (calls[role]["prompt"], calls[role]["prompt_hash"]) == (template.name, prompt_hash(template))
    assert calls["assistant#1"]["prompt_hash"] == calls["assistant#2"]["prompt_hash"]


def test_native_turns_have_no_prompt_template() -> None:
    (out,) = run_step(tool_step(tool_calling="native"), {"goal": "Weather in Paris?"}, {"agent": NativeThinker()})
    assert all("prompt" not in c for c in out["_meta"]["calls"])  # they read the trajectory itself


def test_a_final_answer_that_fails_the_text_checks_leaves_the_trajectory_unfinished() -> None:
    agent = ScriptedBackend(scripted_agent(PARIS_CALL, answer="18"))
    step = tool_step(keep_unfinished=True)
    (out,) = run_step(step, {"goal": "Temperature in Paris?"}, {"agent": agent})
    assert out["tool_dialogue"]["status"] == "text_check" and out["answer"] is None
    assert step.stats()["text_check:no_letters"] == 1
    with pytest.raises(
        StepError, match=r"no trajectory finished \(text_check\): the final answer fails the text check"
    ):
        run_step(tool_step(), {"goal": "Temperature in Paris?"}, {"agent": ScriptedBackend(agent.reply)})
    (fine,) = run_step(tool_step(text_checks=False), {"goal": "Temperature?"}, {"agent": ScriptedBackend(agent.reply)})
    assert fine["answer"] == "18"


def test_a_trace_never_fails_a_tool_answers_text_check() -> None:
    class DebrisThinker(ScriptedBackend):
        async def chat(self, messages, params, *, json_schema=None, seed=None):  # type: ignore[no-untyped-def]
            completion = await super().chat(messages, params, json_schema=json_schema, seed=seed)
            return thought(completion, '}]}]"; ha ha ha ha ha ha')  # debris and a loop: the answer is what counts

    (out,) = run_step(tool_step(), {"goal": "Weather?"}, {"agent": DebrisThinker(scripted_agent(PARIS_CALL))})
    assert out["tool_dialogue"]["status"] == "answered"
