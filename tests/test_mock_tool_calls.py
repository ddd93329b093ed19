"""The mock OpenAI server answers tool calls deterministically, and the openai backend reads them."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import jsonschema
import pytest

from joydataforge.models.backends.openai_compat import _tool_call
from tests.mock_openai import MockServer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 2}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def post(server: MockServer, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        server.url + "/chat/completions",
        data=json.dumps({"model": "m", **body}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def ask(server: MockServer, text: str, **extra: Any) -> dict[str, Any]:
    return post(server, {"messages": [{"role": "user", "content": text}], "tools": [WEATHER, CLOCK], **extra})


def test_a_request_with_tools_gets_tool_calls(mock_server: MockServer) -> None:
    reply = ask(mock_server, "what is the weather?")
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"  # no name in the text: the first
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert ask(mock_server, "what is the weather?")["choices"][0]["message"]["tool_calls"][0]["id"] == call["id"]
    assert reply["usage"]["completion_tokens"] > 0


def test_tools_named_in_the_message_are_called_in_parallel(mock_server: MockServer) -> None:
    calls = ask(mock_server, "use get_time, then get_weather")["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]  # in the tools' order
    assert len({c["id"] for c in calls}) == 2


def test_after_tool_results_the_reply_is_text(mock_server: MockServer) -> None:
    call = ask(mock_server, "weather")["choices"][0]["message"]["tool_calls"][0]
    messages = [
        {"role": "user", "content": "weather"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 18}'},
    ]
    reply = post(mock_server, {"messages": messages, "tools": [WEATHER]})
    choice = reply["choices"][0]
    assert choice["message"]["content"] == 'answer: {"temperature": 18}' and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


def test_tool_choice_none_and_no_tools_get_the_echo(mock_server: MockServer) -> None:
    assert ask(mock_server, "weather", tool_choice="none")["choices"][0]["message"]["content"] == "echo: weather"
    plain = post(mock_server, {"messages": [{"role": "user", "content": "weather"}]})
    assert plain["choices"][0]["message"]["content"] == "echo: weather"


def test_a_reply_directive_answers_without_tools(mock_server: MockServer) -> None:
    message = ask(mock_server, "weather [[mock:reply=No tool needed.]]")["choices"][0]["message"]
    assert message["content"] == "No tool needed." and "tool_calls" not in message


def test_bad_tool_args_directive_breaks_the_schema(mock_server: MockServer) -> None:
    call = ask(mock_server, "weather [[mock:bad_tool_args]]")["choices"][0]["message"]["tool_calls"][0]
    arguments = json.loads(call["function"]["arguments"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])


def test_server_variants_of_a_tool_call_are_normalised() -> None:
    assert _tool_call({"function": {"name": "f", "arguments": {"a": 1}}}, 2) == {
        "id": "call_2",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a": 1}'},
    }
    assert _tool_call({"id": "x", "function": {"name": "f"}}, 0)["function"]["arguments"] == "{}"
    with pytest.raises(KeyError):
        _tool_call({"id": "x"}, 0)
