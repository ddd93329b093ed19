"""JSON replies as llama.cpp's server and small models really write them, read without paying for a re-ask.

The case that started it (issue 14): llama.cpp's server wrote a reply whose strings held raw newlines; the
strict parser refused it, then a ``{}`` found inside one of its strings was taken as the reply, and the
error blamed the schema ("'cases' is a required property") although the reply had ``cases``. Here every
shape is read through the gateway's ``chat_json`` (over HTTP against the mock server, and against a
scripted backend that counts calls): a reply that can be read costs one call, a reply that cannot fails
with its real cause.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from joydataforge.engine.prompted import call_meta
from joydataforge.errors import ValidationFailed
from joydataforge.models.backends.base import Completion, Usage
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.structured import MIN_COVERAGE, NotJSON, extract_json, json_candidates, parse_json_reply
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import registry_of

pytestmark = pytest.mark.timeout(30)

CASES = {
    "type": "object",
    "properties": {
        "cases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "input": {"type": "string", "minLength": 1}},
                "required": ["type", "input"],
            },
        }
    },
    "required": ["cases"],
}

# What llama.cpp's server answered for a rewrite prompt: a raw newline inside a string, and a "{}" in it.
RAW_NEWLINES = '{"cases": [{"type": "paraphrase", "input": "我最近总是头疼，\n吃什么药好？格式 {} 不重要"}]}'
PROSE_AROUND = (
    "Sure! Here are the rewritten cases:\n"
    '{"cases": [{"type": "tone", "input": "Which medicine helps a headache?"}]}\n'
    "Let me know if you need more."
)
FENCED = '```json\n{"cases": [{"type": "tone", "input": "头疼吃什么药？"}]}\n```'
TRUNCATED = (
    '{"cases": [{"type": "paraphrase", "input": "头疼吃什么药？"}, {"type": "tone", "input": "请问头疼的时候应该'
)
TRUNCATED_FIRST_ITEM = '{"cases": [{"type": "paraphrase", "input": "头疼的时候应该'
SINGLE_QUOTES = "{'cases': [{'type': 'tone', 'input': 'Which medicine helps?',}],}"
BRACES_IN_PROSE = "I cannot write the cases: the template {} is empty, so there is nothing to rewrite here."


def scripted(*replies: str, finish_reason: str | None = None) -> ScriptedBackend:
    """Replies in order (the last one repeats), each counted in ``calls``."""
    backend = ScriptedBackend()
    queue = list(replies)

    async def chat(messages: Any, params: Any, *, json_schema: Any = None, seed: Any = None) -> Completion:
        backend.calls.append({"messages": messages, "schema": json_schema, "seed": seed})
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        return Completion(text=text, usage=Usage(10, 10), finish_reason=finish_reason, model="served-id")

    backend.chat = chat  # type: ignore[method-assign]
    return backend


async def ask(backend: ScriptedBackend, schema: dict[str, Any] = CASES, json_retries: int = 2) -> tuple[Any, Any, Any]:
    gateway = Gateway(registry_of(["m"], json_retries=json_retries), backends={"m": backend})
    value, completion = await gateway.model("m").chat_json([{"role": "user", "content": "rewrite"}], schema)
    return value, completion, gateway.usage["m"]


# ---------------------------------------------------------------- through the gateway, counting calls


@pytest.mark.parametrize(
    ("reply", "parsed", "inputs"),
    [
        (RAW_NEWLINES, "lenient", ["我最近总是头疼，\n吃什么药好？格式 {} 不重要"]),
        (PROSE_AROUND, "lenient", ["Which medicine helps a headache?"]),
        (FENCED, "lenient", ["头疼吃什么药？"]),
        (TRUNCATED, "cut", ["头疼吃什么药？"]),
        (SINGLE_QUOTES, "repaired", ["Which medicine helps?"]),
    ],
    ids=["raw_newlines", "prose_around", "fenced", "truncated", "single_quotes"],
)
async def test_a_readable_reply_costs_one_call_and_no_reask(reply, parsed, inputs):
    backend = scripted(reply, '{"cases": [{"type": "x", "input": "the re-ask"}]}')
    value, completion, usage = await ask(backend)
    assert [case["input"] for case in value["cases"]] == inputs
    assert len(backend.calls) == 1, "a reply that could be read must not pay for a re-ask"
    assert usage.invalid_replies == 0 and usage.repaired_replies == 1 and usage.calls == 1
    assert completion.parsed == parsed
    assert call_meta("s", "m", completion)["parsed"] == parsed  # provenance says how it was read


async def test_strict_json_is_not_counted_as_repaired():
    value, completion, usage = await ask(scripted(json.dumps({"cases": [{"type": "t", "input": "q"}]})))
    assert value["cases"][0]["input"] == "q"
    assert completion.parsed is None and usage.repaired_replies == 0
    assert "parsed" not in call_meta("s", "m", completion)


async def test_a_brace_pair_inside_a_string_is_never_the_reply():
    """The reported failure: the value inside the reply's string must not replace the reply."""
    value, _, _ = await ask(scripted(RAW_NEWLINES))
    assert value != {} and "cases" in value


async def test_a_reply_cut_before_any_complete_item_is_reasked_and_the_error_says_so():
    backend = scripted(TRUNCATED_FIRST_ITEM, finish_reason="length")
    with pytest.raises(ValidationFailed) as info:
        await ask(backend, json_retries=1)
    message = str(info.value)
    assert "cut off" in message and "max_tokens" in message
    assert "required property" not in message  # not a schema error: the cause is the cut
    assert info.value.raw == TRUNCATED_FIRST_ITEM
    assert len(backend.calls) == 2  # nothing usable: re-asked as before


async def test_prose_with_a_small_value_inside_is_not_json_and_says_why():
    with pytest.raises(ValidationFailed) as info:
        await ask(scripted(BRACES_IN_PROSE), json_retries=0)
    message = str(info.value)
    assert "not JSON" in message and "spans" in message and "{}" in message
    assert "required property" not in message


async def test_a_schema_error_is_named_only_for_the_value_that_is_the_reply():
    with pytest.raises(ValidationFailed) as info:
        await ask(scripted('{"items": [{"type": "t", "input": "q"}]}'), json_retries=0)
    assert "does not match the schema" in str(info.value) and "'cases' is a required property" in str(info.value)


async def test_a_reask_after_an_unreadable_reply_then_a_readable_one():
    backend = scripted("no JSON here at all", RAW_NEWLINES)
    value, completion, usage = await ask(backend)
    assert value["cases"] and len(backend.calls) == 2
    assert usage.invalid_replies == 1 and usage.repaired_replies == 1 and completion.attempt == 1


# ---------------------------------------------------------------- over HTTP, as the server sends it


def http_registry(url: str) -> ModelRegistry:
    body = {"backend": "openai", "model": "mock-model", "base_url": url, "max_retries": 0, "json_retries": 2}
    return ModelRegistry.from_dict({"models": {"m": body}}, "test models")


@pytest.mark.parametrize("reply", [RAW_NEWLINES, PROSE_AROUND, FENCED, TRUNCATED], ids=["raw", "prose", "fence", "cut"])
async def test_replies_sent_over_http_are_read_in_one_request(mock_server, reply):
    gateway = Gateway(http_registry(mock_server.url))
    try:
        message = [{"role": "user", "content": f"rewrite [[mock:reply={reply}]]"}]
        value, completion = await gateway.model("m").chat_json(message, CASES)
    finally:
        await gateway.close()
    assert value["cases"] and completion.parsed in {"lenient", "cut"}
    chats = [r for r in mock_server.stats()["last_requests"] if r["endpoint"] == "/v1/chat/completions"]
    assert len(chats) == 1
    assert gateway.usage["m"].invalid_replies == 0


# ---------------------------------------------------------------- the reader itself


def test_the_value_spanning_most_of_the_reply_wins():
    text = 'Options {"a": 1} and the answer: {"cases": [{"type": "t", "input": "a long enough question"}]}'
    assert extract_json(text) == {"cases": [{"type": "t", "input": "a long enough question"}]}


def test_a_small_value_in_a_long_reply_is_refused():
    text = 'The label is {"label": "yes"} because the question asks about a medicine and its dose for a child.'
    with pytest.raises(NotJSON, match="spans"):
        extract_json(text)
    assert len('{"label": "yes"}') / len(text) < MIN_COVERAGE


def test_a_cut_reply_keeps_its_complete_items_and_drops_the_half_written_one():
    text = '{"cases": [{"type": "a", "input": "one"}, {"type": "b", "input": "tw'
    first = next(json_candidates(text))
    assert first.how == "cut" and first.value == {"cases": [{"type": "a", "input": "one"}]}
    # a nested list is cut at its own last item first, then at the enclosing list's
    nested = '{"cases": [{"type": "a", "input": "one"}, {"type": "b", "tags": ["x", "y'
    values = [c.value for c in json_candidates_until_error(nested)]
    assert values == [
        {"cases": [{"type": "a", "input": "one"}, {"type": "b", "tags": ["x"]}]},
        {"cases": [{"type": "a", "input": "one"}]},
    ]
    assert parse_json_reply(nested, CASES, "m").value == {"cases": [{"type": "a", "input": "one"}]}


def test_a_large_item_of_a_cut_reply_is_never_taken_for_the_reply():
    """The first case spans most of the reply, but it sits inside ``cases``: the reply is the cut object."""
    text = '{"cases": [{"type": "a", "input": "%s"}, {"type": "b", "input": "cu' % ("long " * 200)
    parsed = parse_json_reply(text, CASES, "m")
    assert parsed.how == "cut" and len(parsed.value["cases"]) == 1


def test_a_flat_object_cut_mid_value_is_never_completed():
    with pytest.raises(NotJSON, match="cut off"):
        extract_json('{"instruction": "Explain photosynthesis", "answer": "Plants use light to')


def json_candidates_until_error(text: str) -> list[Any]:
    found = []
    try:
        for candidate in json_candidates(text):
            found.append(candidate)
    except NotJSON:
        pass
    return found


def test_a_cut_between_items_keeps_everything_written():
    text = '{"cases": [{"type": "a", "input": "one"}, {"type": "b", "input": "two"}'
    assert parse_json_reply(text, CASES, "m").value["cases"][1]["input"] == "two"


def test_no_json_at_all_says_so():
    with pytest.raises(NotJSON, match="no JSON object or array"):
        extract_json("I am sorry, I cannot help with that.")
