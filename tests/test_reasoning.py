"""Reasoning traces (issue 17, part 1): the model layer takes a thinking model's trace out of the answer, whatever
way the server sends it (``reasoning_content``, ``reasoning``, ``<think>`` tags, only ``</think>``), counts its
tokens, caches it, and steps keep it beside the answer (``<output_field>_reasoning``) or drop it.

Replies come from the real HTTP mock server (``[[mock:think=MODE]]``), through the openai backend and the gateway.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.prompted import call_meta
from joydataforge.errors import ConfigError
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.reasoning import separate, split_tags
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, read_jsonl, run_records, write_jsonl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "reason": {"type": "string"}},
    "required": ["label", "reason"],
}


def registry(base_url: str, **fields: Any) -> ModelRegistry:
    body = {"backend": "openai", "model": "mock-model", "base_url": base_url, "max_retries": 0, **fields}
    return ModelRegistry.from_dict({"models": {"m": body}}, "test")


def chat(base_url: str, text: str, cache: CallCache | None = None, **fields: Any) -> Any:
    async def go() -> Any:
        gateway = Gateway(registry(base_url, **fields), cache=cache)
        try:
            return await gateway.model("m").chat([{"role": "user", "content": text}])
        finally:
            await gateway.close()

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    ("text", "answer", "trace"),
    [
        ("plain answer", "plain answer", None),
        ("<think>\nstep one\n</think>\n\nThe answer.", "The answer.", "step one"),
        ("step one\n</think>\n\nThe answer.", "The answer.", "step one"),  # the template opened the block
        ("<think>\n\n</think>\n\nThe answer.", "The answer.", None),  # Qwen3 with thinking off
        ("<think>still thinking when cut", "", "still thinking when cut"),
        ("<think>a</think>B<think>c</think>D", "BD", "a\n\nc"),
    ],
)
def test_split_tags(text: str, answer: str, trace: str | None) -> None:
    assert split_tags(text) == (answer, trace)


def test_modes_and_custom_tags() -> None:
    text = "<reason>r</reason>ans"
    assert separate(text, None, "tags", ("<reason>", "</reason>")) == ("ans", "r")
    assert separate("<think>t</think>a", "field trace", "auto") == ("a", "field trace\n\nt")
    assert separate("<think>t</think>a", "field trace", "field") == ("<think>t</think>a", "field trace")
    assert separate("<think>t</think>a", "field trace", "tags") == ("a", "t")
    assert separate("<think>t</think>a", "field trace", "none") == ("<think>t</think>a", None)


# ---------------------------------------------------------------------------------------------- the mock server


@pytest.mark.parametrize("mode", ["field", "reasoning", "tags", "close"])
def test_openai_backend_separates_the_trace(mock_server: Any, mode: str) -> None:
    completion = chat(mock_server.url, f"what is two plus two [[mock:think={mode}]]")
    assert completion.text == "echo: what is two plus two"
    assert completion.reasoning == "thinking about: what is two plus two"
    assert completion.usage.reasoning_tokens > 0
    # reasoning_content comes with the server's count; the others are estimated (no tokenizer here)
    assert completion.usage.reasoning_estimated is (mode != "field")
    if mode == "field":
        assert completion.usage.reasoning_tokens == 7  # the mock counts words
    meta = call_meta("s", "m", completion)
    assert meta["reasoning_tokens"] == completion.usage.reasoning_tokens


def test_a_reply_cut_off_while_thinking_has_no_answer(mock_server: Any) -> None:
    completion = chat(mock_server.url, "hard question [[mock:think=cut]]")
    assert completion.text == ""
    assert completion.reasoning == "thinking about: hard question"


def test_reasoning_none_keeps_the_reply_whole(mock_server: Any) -> None:
    completion = chat(mock_server.url, "q [[mock:think=tags]]", reasoning="none")
    assert completion.text.startswith("<think>") and completion.reasoning is None
    field_only = chat(mock_server.url, "q [[mock:think=tags]]", reasoning="field")
    assert field_only.reasoning is None and "<think>" in field_only.text


def test_a_plain_reply_has_no_trace(mock_server: Any) -> None:
    completion = chat(mock_server.url, "hello")
    assert completion.reasoning is None and completion.usage.reasoning_tokens == 0
    assert "reasoning_tokens" not in call_meta("s", "m", completion)


def test_the_cache_keeps_the_trace(mock_server: Any, tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "cache.sqlite")
    try:
        first = chat(mock_server.url, "q [[mock:think=field]]", cache=cache)
        again = chat(mock_server.url, "q [[mock:think=field]]", cache=cache)
    finally:
        cache.close()
    assert again.cached and not first.cached
    assert (again.text, again.reasoning, again.usage.reasoning_tokens) == (
        first.text,
        first.reasoning,
        first.usage.reasoning_tokens,
    )


@pytest.mark.parametrize("mode", ["tags", "field"])
def test_chat_json_parses_the_answer_only(mock_server: Any, mode: str) -> None:
    reply = '{"label": "good", "reason": "ok"}'

    async def go() -> Any:
        gateway = Gateway(registry(mock_server.url, structured_output="none"))
        try:
            messages = [{"role": "user", "content": f"label it [[mock:think={mode},reply={reply}]]"}]
            return await gateway.model("m").chat_json(messages, SCHEMA)
        finally:
            await gateway.close()

    value, completion = asyncio.run(go())
    assert value == {"label": "good", "reason": "ok"}
    assert completion.parsed is None  # strict JSON: the trace never reached the parser
    assert completion.reasoning and "thinking about" in completion.reasoning


# ---------------------------------------------------------------------------------------------- steps


def run_generate(tmp_path: Path, mock_server: Any, **settings: Any) -> Any:
    records = [{"id": f"r{i}", "input": f"question {i} [[mock:think=tags]]"} for i in range(3)]
    write_jsonl(tmp_path / "in.jsonl", records)
    step = {"generate": {"model": "m", "prompt": "en/answer", "output_field": "answer", **settings}}
    pipeline = make_pipeline(tmp_path, [step])
    reg = registry(mock_server.url)
    LocalExecutor(pipeline, registry=reg, gateway=Gateway(reg)).run_sync()
    return read_jsonl(tmp_path / "out" / "data.jsonl")


def test_generate_keeps_the_trace_beside_the_answer(tmp_path: Path, mock_server: Any) -> None:
    rows = run_generate(tmp_path, mock_server)
    assert len(rows) == 3
    for row in rows:
        assert "<think>" not in row["answer"] and "thinking about" not in row["answer"]
        assert row["answer_reasoning"].startswith("thinking about:")
        assert row["_meta"]["calls"][0]["reasoning_tokens"] > 0


def test_keep_reasoning_false_drops_the_trace(tmp_path: Path, mock_server: Any) -> None:
    rows = run_generate(tmp_path, mock_server, keep_reasoning=False)
    assert rows and all("answer_reasoning" not in row for row in rows)
    assert all("<think>" not in row["answer"] for row in rows)
    assert all(row["_meta"]["calls"][0]["reasoning_tokens"] > 0 for row in rows)  # still counted


# ---------------------------------------------------------------------------------------------- other steps


class ThinkingBackend(ScriptedBackend):
    """A scripted thinking model: each reply comes with a trace, split off as the openai backend splits it."""

    async def chat(self, messages, params, *, json_schema=None, seed=None):  # type: ignore[no-untyped-def]
        completion = await super().chat(messages, params, json_schema=json_schema, seed=seed)
        completion.text, completion.reasoning = separate(
            f"<think>why: {completion.text}</think>{completion.text}", None
        )
        return completion


def critic_reply(messages: Any, schema: Any) -> str:
    if schema is not None:
        return json.dumps({"issues": [], "verdict": "approve", "score": 9})
    return "a careful answer to " + messages[-1]["content"][:20]


def test_critique_keeps_the_trace_of_the_final_answer(tmp_path: Path) -> None:
    step = {"critique_revise": {"model": "author", "critic": "critic", "draft_prompt": "en/answer"}}
    backends = {"author": ThinkingBackend(critic_reply), "critic": ThinkingBackend(critic_reply)}
    result = run_records(tmp_path, [{"id": "r", "input": "how do I boil an egg"}], [step], backends)
    assert not result.failures, result.failures
    (row,) = result.data
    assert row["target"].startswith("a careful answer") and "<think>" not in row["target"]
    assert row["target_reasoning"] == f"why: {row['target']}"
    # the critic saw the answer alone, and its own trace never reached the JSON parser
    assert all("why:" not in str(call["messages"]) for call in backends["critic"].calls)


def test_dpo_keeps_each_sides_trace_and_judges_see_answers_only(tmp_path: Path) -> None:
    judge = ScriptedBackend(
        lambda m, s: json.dumps(
            {a: {"rationale": "r", "score": 9 if "long answer" in m[-1]["content"] else 3} for a in s["properties"]}
        )
    )
    backends = {
        "long": ThinkingBackend(lambda m, s: "long answer"),
        "short": ThinkingBackend(lambda m, s: "short"),
        "judge": judge,
    }
    step = {"dpo": {"judges": ["judge"], "candidates_field": None, "models": ["long", "short"], "samples": 1}}
    result = run_records(tmp_path, [{"id": "r", "input": "write something"}], [step], backends)
    assert not result.failures, result.failures
    (pair,) = result.data
    assert pair["chosen"][0]["content"] == "long answer" and pair["rejected"][0]["content"] == "short"
    assert pair["chosen_reasoning"] == "why: long answer" and pair["rejected_reasoning"] == "why: short"
    assert "reasoning" not in pair["source_chosen"]
    assert judge.calls and all("why:" not in str(call["messages"]) for call in judge.calls)


def test_joint_keeps_draft_traces_apart_and_the_fusers_trace(tmp_path: Path) -> None:
    seen: list[str] = []

    def fuser_reply(messages: Any, schema: Any) -> str:
        seen.append(str(messages))
        return "the fused answer"

    backends = {
        "a": ThinkingBackend(lambda m, s: "draft from a"),
        "b": ThinkingBackend(lambda m, s: "draft from b"),
        "f": ThinkingBackend(fuser_reply),
    }
    step = {"joint": {"drafters": ["a", "b"], "fuser": "f", "draft_prompt": "en/answer"}}
    result = run_records(tmp_path, [{"id": "r", "input": "a question"}], [step], backends)
    assert not result.failures, result.failures
    (row,) = result.data
    assert row["target"] == "the fused answer" and row["target_reasoning"] == "why: the fused answer"
    assert [d["reasoning"] for d in row["drafts"]] == ["why: draft from a", "why: draft from b"]
    assert seen and all("why:" not in text for text in seen)  # the fuser saw the drafts' answers alone


@pytest.mark.slow
def test_example_splits_the_embedded_models_think_tags(tmp_path: Path) -> None:
    """examples/reasoning.yaml on SmolLM2: the worked examples make it write <think> blocks; none reaches the
    answer, the traces are kept beside it and counted with the GGUF's tokenizer."""
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(EXAMPLES / "reasoning.yaml"), "-o", str(out)])
    assert result.exit_code in (0, 3), result.output
    rows = read_jsonl(out / "data.jsonl")
    assert rows
    for row in rows:
        assert "<think>" not in row["answer"] and "</think>" not in row["answer"]
    thought = [row for row in rows if "answer_reasoning" in row]
    assert len(thought) >= 2
    for row in thought:
        call = row["_meta"]["calls"][0]
        assert call["reasoning_tokens"] > 0 and "reasoning_tokens_estimated" not in call


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reasoning": "think"}, "models.m.reasoning: must be one of 'auto', 'field', 'tags' or 'none'"),
        ({"reasoning_tags": ["", "</think>"]}, "models.m.reasoning_tags: reasoning_tags are two different"),
        ({"reasoning_tags": ["<think>"]}, "models.m.reasoning_tags:"),
    ],
)
def test_reasoning_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    body = {"backend": "openai", "base_url": "http://127.0.0.1:1/v1", **settings}
    with pytest.raises(ConfigError) as caught:
        ModelRegistry.from_dict({"models": {"m": body}}, "models.yaml")
    assert message in str(caught.value)


def test_a_non_default_split_changes_the_cache_key_the_default_does_not() -> None:
    def identity(**fields: Any) -> dict[str, Any]:
        return registry("http://127.0.0.1:1/v1", **fields).get("m").identity()

    assert "reasoning" not in identity()  # caches made before reasoning traces existed stay valid
    assert identity(reasoning="none")["reasoning"] == ["none", ["<think>", "</think>"]]
