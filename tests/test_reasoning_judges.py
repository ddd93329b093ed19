"""Who reads a reasoning trace (issue 17, part 1): judges see the answer alone unless ``judge_sees_reasoning`` is
on, and then the trace before it as ``<think>\\ntrace\\n</think>\\n\\nanswer`` (dpo's judges and reward model,
critique's critic, vote's voters, cascade's stronger model); dedup, duplicate detection, lengths and text checks
always read the answer alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from joydataforge.engine.prompted import judge_view, with_reasoning
from joydataforge.records import record_text
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import run_records
from tests.test_reasoning_steps import TRAJECTORY_PAIRS, ThinkingBackend, ThinkingChooser, thought
from tests.test_tool_dialogue import rubric_judge

THINK = "<think>\n"


def seen(backend: ScriptedBackend) -> str:
    """Everything a scripted model was asked, as one text."""
    return json.dumps([call.get("messages") for call in backend.calls], ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- the shape


def test_with_reasoning_and_the_judges_view_of_a_record() -> None:
    assert with_reasoning("Paris.", "  the capital  ") == "<think>\nthe capital\n</think>\n\nParis."
    assert with_reasoning("Paris.", None) == with_reasoning("Paris.", "  ") == "Paris."
    record = {"input": "q", "target": "Paris.", "target_reasoning": "t", "label": "x", "label_reasoning": ""}
    view = judge_view(record)
    assert view["target"] == "<think>\nt\n</think>\n\nParis." and view["label"] == "x" and view["input"] == "q"
    assert record["target"] == "Paris."  # the record itself is left alone


# ---------------------------------------------------------------------------------------------- dpo


def pointwise(messages: Any, schema: Any) -> str:
    score = 9 if "long" in messages[-1]["content"] else 3
    return json.dumps({a: {"rationale": "r", "score": score} for a in schema["properties"]})


CANDIDATES = [
    {"text": "a long answer", "reasoning": "first I weigh it"},
    {"text": "a long answer", "reasoning": "another path, same answer"},  # a duplicate: its answer repeats
    {"text": "short", "reasoning": "quick"},
]


@pytest.mark.parametrize("sees", [False, True])
def test_dpo_judges_see_a_trace_only_when_told(tmp_path: Path, sees: bool) -> None:
    judge = ScriptedBackend(pointwise)
    step = {"dpo": {"judges": ["judge"], "aspects": ["helpfulness"], "judge_sees_reasoning": sees}}
    record = {"id": "r", "input": "write", "response_candidates": CANDIDATES}
    result = run_records(tmp_path, [record], [step], {"judge": judge})
    (pair,) = result.data
    assert ("<think>\\nfirst I weigh it\\n</think>" in seen(judge)) is sees
    assert ("quick" in seen(judge)) is sees and "another path" not in seen(judge)  # the duplicate is never judged
    assert pair["source_rejected"]["index"] == 2 and result.summary.steps["dpo"]["candidates_duplicate"] == 1
    assert (pair["length_chosen"], pair["length_rejected"]) == (len("a long answer"), len("short"))
    assert (pair["chosen_reasoning"], pair["rejected_reasoning"]) == ("first I weigh it", "quick")


def test_dpo_judges_can_see_traces_the_output_drops(tmp_path: Path) -> None:
    backends = {
        "long": ThinkingBackend(lambda m, s: "a long answer"),
        "short": ThinkingBackend(lambda m, s: "short"),
        "judge": ScriptedBackend(pointwise),
    }
    step = {
        "dpo": {
            "judges": ["judge"],
            "candidates_field": None,
            "models": ["long", "short"],
            "samples": 1,
            "keep_reasoning": False,
            "judge_sees_reasoning": True,
        }
    }
    result = run_records(tmp_path, [{"id": "r", "input": "write"}], [step], backends)
    (pair,) = result.data
    assert THINK.replace("\n", "\\n") + "why: a long answer" in seen(backends["judge"])
    assert "chosen_reasoning" not in pair and "rejected_reasoning" not in pair
    assert pair["chosen"] == [{"role": "assistant", "content": "a long answer"}] or pair["chosen"] == "a long answer"


def test_a_reward_model_sees_the_trace_when_told(tmp_path: Path) -> None:
    class Reward(ScriptedBackend):
        async def reward(self, conversations, params):  # type: ignore[no-untyped-def]
            self.calls.append({"messages": conversations})
            return [float(len(c[-1]["content"])) for c in conversations]

    for sees in (False, True):
        reward = Reward()
        step = {"dpo": {"judges": ["rm"], "scorer": "reward", "judge_sees_reasoning": sees}}
        record = {"id": "r", "input": "write", "response_candidates": CANDIDATES}
        result = run_records(tmp_path / str(sees), [record], [step], {"rm": reward})
        assert not result.failures, result.failures
        assert ("<think>\\nfirst I weigh it\\n</think>\\n\\na long answer" in seen(reward)) is sees


def test_dpo_judges_of_trajectories_see_each_turns_trace_when_told(tmp_path: Path) -> None:
    steps = [TRAJECTORY_PAIRS[0], {"dpo": {**TRAJECTORY_PAIRS[1]["dpo"], "judge_sees_reasoning": True}}]
    judge = ScriptedBackend(rubric_judge)
    result = run_records(tmp_path, [{"goal": "Weather in Paris?"}], steps, {"agent": ThinkingChooser(), "judge": judge})
    (pair,) = result.data
    assert "Assistant thinks: <think>\\nwhy: " in seen(judge)
    assert (pair["score_chosen"], pair["score_rejected"]) == (9.0, 2.0)


# ---------------------------------------------------------------------------------------------- critique


def critic(messages: Any, schema: Any) -> str:
    return json.dumps({"issues": [], "verdict": "approve", "score": 9})


@pytest.mark.parametrize("sees", [False, True])
def test_the_critic_sees_the_authors_trace_only_when_told(tmp_path: Path, sees: bool) -> None:
    backends = {"author": ThinkingBackend(lambda m, s: "boil it for nine minutes"), "critic": ScriptedBackend(critic)}
    step = {
        "critique_revise": {
            "model": "author",
            "critic": "critic",
            "draft_prompt": "en/answer",
            "judge_sees_reasoning": sees,
        }
    }
    result = run_records(tmp_path, [{"id": "r", "input": "how do I boil an egg"}], [step], backends)
    (row,) = result.data
    assert row["target"] == "boil it for nine minutes" and row["target_reasoning"] == "why: boil it for nine minutes"
    assert ("<think>\\nwhy: boil it for nine minutes\\n</think>\\n\\nboil it" in seen(backends["critic"])) is sees
    assert row["critique_rounds"][0]["answer"] == "boil it for nine minutes"  # the record keeps the answer alone


def test_a_given_answers_trace_goes_to_the_critic_and_stays_with_the_answer(tmp_path: Path) -> None:
    backends = {"author": ScriptedBackend(), "critic": ScriptedBackend(critic)}
    step = {
        "critique_revise": {
            "model": "author",
            "critic": "critic",
            "answer_field": "answer",
            "judge_sees_reasoning": True,
        }
    }
    record = {"id": "r", "input": "q", "answer": "forty-two", "answer_reasoning": "six times seven"}
    (row,) = run_records(tmp_path, [record], [step], backends).data
    assert "<think>\\nsix times seven\\n</think>\\n\\nforty-two" in seen(backends["critic"])
    assert row["target"] == "forty-two" and row["target_reasoning"] == "six times seven"


# ---------------------------------------------------------------------------------------------- vote, cascade

JUDGE_PROMPT = """\
system: Judge the answer to the question.
user: |
  Question: {{ input }}
  Answer: {{ target }}
  Labels: {{ options.labels | join(", ") }}
schema:
  type: object
  properties: {label: {type: string}, reason: {type: string}}
  required: [label, reason]
"""

ANSWERED = {"id": "r", "input": "six times seven?", "target": "42", "target_reasoning": "six sevens make forty-two"}


def voter(messages: Any, schema: Any) -> str:
    return json.dumps({"label": "good", "reason": "ok"})


@pytest.mark.parametrize("sees", [False, True])
def test_voters_see_a_fields_trace_only_when_told(tmp_path: Path, sees: bool) -> None:
    (tmp_path / "judge.yaml").write_text(JUDGE_PROMPT, "utf-8")
    voters = {name: ScriptedBackend(voter) for name in ("a", "b")}
    step = {
        "vote": {
            "models": ["a", "b"],
            "prompt": str(tmp_path / "judge.yaml"),
            "options": {"labels": ["good", "bad"]},
            "judge_sees_reasoning": sees,
        }
    }
    (row,) = run_records(tmp_path, [ANSWERED], [step], voters).data
    assert row["vote"]["label"] == "good"
    for backend in voters.values():
        assert ("Answer: <think>\\nsix sevens make forty-two\\n</think>\\n\\n42" in seen(backend)) is sees
        assert ("six sevens" in seen(backend)) is sees
    assert row["target"] == "42"  # the record keeps the answer as it was


@pytest.mark.parametrize("sees", [False, True])
def test_the_cascade_model_sees_a_fields_trace_only_when_told(tmp_path: Path, sees: bool) -> None:
    (tmp_path / "judge.yaml").write_text(JUDGE_PROMPT, "utf-8")
    strong = ScriptedBackend(voter)
    step = {
        "cascade": {
            "model": "strong",
            "prompt": str(tmp_path / "judge.yaml"),
            "gate": "all",
            "options": {"labels": ["good", "bad"]},
            "judge_sees_reasoning": sees,
        }
    }
    record = {**ANSWERED, "vote": {"outcome": "majority", "label": "bad"}}
    (row,) = run_records(tmp_path, [record], [step], {"strong": strong}).data
    assert row["cascade"]["label"] == "good"
    assert ("<think>\\nsix sevens make forty-two\\n</think>" in seen(strong)) is sees


# ---------------------------------------------------------------------------------------------- answer only


def test_dedup_compares_answers_never_their_traces(tmp_path: Path) -> None:
    shared = "a long shared chain of thought about capitals, rivers, populations and the history of both places"
    records = [
        {
            "id": "1",
            "target": "Paris is the capital of France and lies on the river Seine.",
            "target_reasoning": shared,
        },
        {"id": "2", "target": "Paris is the capital of France and lies on the river Seine.", "target_reasoning": "x"},
        {"id": "3", "target": "Tokyo is the capital of Japan and its most populous city.", "target_reasoning": shared},
    ]
    result = run_records(tmp_path, records, [{"minhash_dedup": {"fields": ["target"], "threshold": 0.8}}], {})
    assert [r["id"] for r in result.data] == ["1", "3"]


def test_the_text_of_messages_leaves_their_traces_out() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "reasoning_content": "greet back"},
    ]
    assert record_text({"messages": messages}, "messages") == "hi\nhello"


def test_text_checks_read_the_answer_never_the_trace(tmp_path: Path) -> None:
    class Thinker(ScriptedBackend):
        async def chat(self, messages, params, *, json_schema=None, seed=None):  # type: ignore[no-untyped-def]
            completion = await super().chat(messages, params, json_schema=json_schema, seed=seed)
            return thought(completion, '}]"; 7 7 7 7 7 7 7 7')  # debris, no letters, a loop: only a trace

    def answer(messages: Any, schema: Any) -> str:
        return "42" if "number" in messages[-1]["content"] else "Boil it for nine minutes."

    records = [{"id": "words", "input": "how to boil an egg"}, {"id": "number", "input": "a number please"}]
    step = {"generate": {"model": "m", "prompt": "en/answer", "output_field": "answer"}}
    result = run_records(tmp_path, records, [step], {"m": Thinker(answer)})
    assert [r["id"] for r in result.data] == ["words"] and result.data[0]["answer_reasoning"].startswith("}]")
    (failure,) = result.failures
    assert failure["id"] == "number" and "no_letters" in failure["error"]
