"""tool_dialogue: schemas from signatures, calls checked and run in the sandbox, trajectories in OpenAI messages.

Scripted models (tests/scripted_backend.py) drive the JSON path exactly; the mock OpenAI server drives the native
path (``tools`` in, ``tool_calls`` out) over real HTTP. Tool results come from real sandboxed subprocesses.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import ConfigError, InputError, StepError
from joydataforge.methods.tool_dialogue.config import ToolDialogueConfig
from joydataforge.methods.tool_dialogue.render import continuation, trajectory_text
from joydataforge.methods.tool_dialogue.signature import SignatureError, functions_in, parse_docstring
from joydataforge.methods.tool_dialogue.step import ToolDialogue
from joydataforge.methods.tool_dialogue.toolbox import Tool, Toolbox
from joydataforge.methods.tool_dialogue.turns import reply_schema
from joydataforge.models.backends.base import Completion, FatalError
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.mock_openai import MockServer
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, run_records, run_step, write_jsonl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WEATHER = str(EXAMPLES / "tools_weather.py")
PARIS = {"city": "Paris", "temperature": 18.0, "unit": "celsius", "condition": "cloudy", "humidity_percent": 71}


# --- schemas from signatures ------------------------------------------------------------------------------


def test_schema_from_signature_and_google_docstring():
    (weather, air) = functions_in(Path(WEATHER).read_text("utf-8"), WEATHER)
    assert weather.definition == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name, e.g. Paris or 北京."},
                    "unit": {
                        "enum": ["celsius", "fahrenheit"],
                        "type": "string",
                        "description": "Temperature unit of the reply.",
                        "default": "celsius",
                    },
                },
                "additionalProperties": False,
                "required": ["city"],
            },
        },
    }
    assert air.name == "get_air_quality" and air.definition["function"]["parameters"]["required"] == ["city"]


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        ("int", {"type": "integer"}),
        ("float", {"type": "number"}),
        ("bool", {"type": "boolean"}),
        ("list[str]", {"type": "array", "items": {"type": "string"}}),
        ("typing.List[int]", {"type": "array", "items": {"type": "integer"}}),
        ("dict[str, float]", {"type": "object", "additionalProperties": {"type": "number"}}),
        ("dict", {"type": "object"}),
        ("Optional[int]", {"type": ["integer", "null"]}),
        ("int | None", {"type": ["integer", "null"]}),
        ("'list[str] | None'", {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}),
        ("tuple[int, ...]", {"type": "array", "items": {"type": "integer"}}),
        (
            "tuple[int, str]",
            {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2},
        ),
        ("Literal[1, 2]", {"enum": [1, 2], "type": "integer"}),
        ("Any", {}),
    ],
)
def test_type_hints_become_json_schema(hint, schema):
    (tool,) = functions_in(f"def f(x: {hint}):\n    pass\n", "t.py")
    assert tool.definition["function"]["parameters"]["properties"]["x"] == schema
    jsonschema.validators.validator_for(schema).check_schema(schema)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def f(*args):\n    pass\n", "*args and **kwargs"),
        ("class City:\n    pass\ndef f(c: City):\n    pass\n", "t.py:3 f() parameter 'c': the type hint 'City'"),
        ("def f(d: dict[int, str]):\n    pass\n", "keys are strings"),
        ("def f(:\n", "not valid Python"),
        ("def _hidden():\n    pass\n", "no public function"),
    ],
)
def test_signatures_without_a_schema_are_one_line_errors(source, fragment):
    with pytest.raises(SignatureError, match=None) as caught:
        functions_in(source, "t.py")
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_named_functions_and_schemas_given_elsewhere():
    source = "class C:\n    pass\ndef f(c: C):\n    pass\ndef g(x: int):\n    pass\n"
    with pytest.raises(SignatureError, match="no public function named h"):
        functions_in(source, "t.py", ["h"])
    given = {"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}
    tools = functions_in(source, "t.py", ["g", "f"], known={"f": given})
    assert [t.name for t in tools] == ["g", "f"] and tools[1].definition is given


def test_numpy_and_rest_docstrings():
    numpy = "Search.\n\nParameters\n----------\nq : str\n    The query.\nk : int\n    How many.\n"
    assert parse_docstring(numpy) == ("Search.", {"q": "The query.", "k": "How many."})
    rest = "Search.\n\n:param q: the query\n    continued\n:param int k: how many\n:returns: hits\n"
    assert parse_docstring(rest) == ("Search.", {"q": "the query continued", "k": "how many"})


# --- checking calls and the JSON reply schema -----------------------------------------------------------------


def weather_box() -> Toolbox:
    source = Path(WEATHER).read_text("utf-8")
    return Toolbox([Tool(t.definition, source) for t in functions_in(source, WEATHER)])


@pytest.mark.parametrize(
    ("name", "arguments", "problem"),
    [
        ("get_weather", '{"city": "Paris"}', None),
        ("get_weather", {"city": "Paris", "unit": "fahrenheit"}, None),
        ("get_time", {}, "there is no tool named 'get_time'"),
        ("get_weather", "{city: Paris}", "not valid JSON"),
        ("get_weather", "[1]", "must be a JSON object"),
        ("get_weather", {}, "'city' is a required property"),
        ("get_weather", {"city": "Paris", "unit": "kelvin"}, "at unit: 'kelvin' is not one of"),
        ("get_weather", {"city": 3}, "at city: 3 is not of type 'string'"),
        ("get_weather", {"city": "Paris", "when": "now"}, "Additional properties are not allowed"),
    ],
)
def test_every_call_is_checked_against_its_schema(name, arguments, problem):
    checked, error = weather_box().check(name, arguments)
    if problem is None:
        assert error is None and checked["city"] == "Paris"
    else:
        assert checked is None and problem in error


def test_reply_schema_accepts_calls_or_an_answer_and_only_the_answer_at_the_end():
    box = weather_box()
    schema = reply_schema(box, final=False, constrain=True, max_calls=2)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})
    assert validator.is_valid({"answer": "18 degrees"})
    assert not validator.is_valid({"tool_calls": [{"name": "get_weather", "arguments": {"town": "Paris"}}]})
    assert not validator.is_valid({"tool_calls": [{"name": "get_air_quality", "arguments": {}}] * 3})
    loose = jsonschema.Draft202012Validator(reply_schema(box, final=False, constrain=False, max_calls=2))
    assert loose.is_valid({"tool_calls": [{"name": "get_weather", "arguments": {"town": "Paris"}}]})
    final = jsonschema.Draft202012Validator(reply_schema(box, final=True, constrain=True, max_calls=2))
    assert final.is_valid({"answer": "done"}) and not final.is_valid({"tool_calls": []})


# --- trajectories on scripted models (the JSON path) ---------------------------------------------------------


def scripted_agent(calls: list[list[dict[str, Any]]], answer: str = "It is 18 °C and cloudy in Paris."):
    """A model in JSON mode: the k-th turn makes ``calls[k]`` (while any are left), then answers."""

    def reply(messages, schema):
        turn = sum(1 for m in messages if m["role"] == "assistant")
        if "anyOf" not in schema or turn >= len(calls):
            return json.dumps({"answer": answer})
        return json.dumps({"tool_calls": calls[turn]})

    return reply


def step(**settings) -> ToolDialogue:
    return ToolDialogue(**{"model": "agent", "tools_module": WEATHER, "tool_calling": "json", **settings})


def test_a_json_mode_trajectory_runs_the_function_in_the_sandbox():
    agent = ScriptedBackend(scripted_agent([[{"name": "get_weather", "arguments": {"city": "Paris"}}]]))
    tool_step = step(system="You have weather tools.")
    (out,) = run_step(tool_step, {"id": "r1", "goal": "Weather in Paris?"}, {"agent": agent})
    assert out["messages"] == [
        {"role": "system", "content": "You have weather tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0_0", "content": json.dumps(PARIS)},
        {"role": "assistant", "content": "It is 18 °C and cloudy in Paris."},
    ]
    assert out["input"] == "Weather in Paris?" and out["answer"] == "It is 18 °C and cloudy in Paris."
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather", "get_air_quality"]
    assert out["tool_dialogue"] == {
        "status": "answered",
        "turns": 2,
        "tool_calls": 1,
        "invalid_calls": 0,
        "tool_errors": 0,
        "mode": "json",
        "sample": 0,
    }
    assert "Assistant calls get_weather" in out["trajectory_text"]
    assert [c["role"] for c in out["_meta"]["calls"]] == ["assistant#1", "assistant#2"]
    # What the model read on its second turn: the agent prompt, its own JSON, the results as a user message.
    second = agent.calls[1]["messages"]
    assert second[0]["role"] == "system" and "get_weather" in second[0]["content"]
    assert json.loads(second[2]["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert second[3]["role"] == "user" and '"temperature": 18.0' in second[3]["content"]
    assert tool_step.stats()["sandbox:ok"] == 1


def test_parallel_calls_and_a_raising_tool_are_fed_back():
    calls = [
        [
            {"name": "get_weather", "arguments": {"city": "Atlantis"}},
            {"name": "get_air_quality", "arguments": {"city": "Tokyo"}},
        ]
    ]
    tool_step = step()
    (out,) = run_step(tool_step, {"input": "Atlantis and Tokyo?"}, {"agent": ScriptedBackend(scripted_agent(calls))})
    tools = [m for m in out["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tools] == ["call_0_0", "call_0_1"]
    assert json.loads(tools[0]["content"])["error"].startswith("ValueError: unknown city 'Atlantis'")
    assert json.loads(tools[1]["content"]) == {"city": "Tokyo", "aqi": 40, "category": "good"}
    assert out["tool_dialogue"]["tool_errors"] == 1 and out["tool_dialogue"]["tool_calls"] == 2
    assert tool_step.stats()["sandbox:error"] == 1


def test_invalid_calls_are_answered_with_the_error_or_end_the_trajectory():
    calls = [
        [{"name": "get_weather", "arguments": {"town": "Paris"}}],
        [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    ]
    feedback = step(constrain_arguments=False)
    (out,) = run_step(feedback, {"input": "Paris?"}, {"agent": ScriptedBackend(scripted_agent(calls))})
    error = json.loads(out["messages"][2]["content"])["error"]
    assert "do not match its schema" in error and "'town' was unexpected" in error
    assert out["tool_dialogue"]["invalid_calls"] == 1 and out["tool_dialogue"]["tool_calls"] == 1
    assert feedback.stats()["invalid_calls"] == 1

    ending = step(constrain_arguments=False, invalid_calls="end")
    with pytest.raises(StepError, match="invalid_call"):
        run_step(ending, {"input": "Paris?"}, {"agent": ScriptedBackend(scripted_agent(calls))})
    kept = step(constrain_arguments=False, invalid_calls="end", keep_unfinished=True)
    (out,) = run_step(kept, {"input": "Paris?"}, {"agent": ScriptedBackend(scripted_agent(calls))})
    assert out["tool_dialogue"]["status"] == "invalid_call" and out["answer"] is None


def test_the_last_turn_must_answer_and_an_answer_without_calls_is_too_few():
    endless = [[{"name": "get_weather", "arguments": {"city": "Paris"}}]] * 10
    agent = ScriptedBackend(scripted_agent(endless))
    (out,) = run_step(step(max_turns=3), {"input": "Paris?"}, {"agent": agent})
    assert out["tool_dialogue"]["turns"] == 3 and out["tool_dialogue"]["status"] == "answered"
    assert "anyOf" not in agent.calls[-1]["schema"]  # the answer-only schema on the last turn
    assert "final answer" in agent.calls[-1]["messages"][-1]["content"]
    with pytest.raises(StepError, match="too_few_calls"):
        run_step(step(), {"input": "Hi"}, {"agent": ScriptedBackend(scripted_agent([]))})
    (out,) = run_step(step(min_tool_calls=0), {"input": "Hi"}, {"agent": ScriptedBackend(scripted_agent([]))})
    assert out["messages"][-1] == {"role": "assistant", "content": "It is 18 °C and cloudy in Paris."}


def test_a_tool_that_loops_forever_is_stopped_by_the_sandbox(tmp_path):
    module = tmp_path / "slow_tools.py"
    module.write_text('def spin(n: int) -> int:\n    """Spins."""\n    while True:\n        n += 1\n', "utf-8")
    calls = [[{"name": "spin", "arguments": {"n": 1}}]]
    tool_step = ToolDialogue("agent", tools_module=str(module), tool_calling="json", sandbox={"timeout_s": 1})
    (out,) = run_step(tool_step, {"input": "spin"}, {"agent": ScriptedBackend(scripted_agent(calls, "gave up"))})
    assert "longer than 1 s" in json.loads(out["messages"][2]["content"])["error"]
    assert tool_step.stats()["sandbox:timeout"] == 1


def test_tools_without_a_function_are_played_by_the_simulator():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "book_table",
                "description": "Books a restaurant table.",
                "parameters": {
                    "type": "object",
                    "properties": {"restaurant": {"type": "string"}, "people": {"type": "integer", "minimum": 1}},
                    "required": ["restaurant", "people"],
                },
            },
        }
    ]
    calls = [[{"name": "book_table", "arguments": {"restaurant": "Chez Nous", "people": 2}}]]

    def simulator(messages, schema):
        assert 'book_table({"restaurant": "Chez Nous", "people": 2})' in messages[-1]["content"]
        return json.dumps({"confirmation": "CN-42", "people": 2})

    backends = {"agent": ScriptedBackend(scripted_agent(calls, "Booked: CN-42.")), "sim": ScriptedBackend(simulator)}
    tool_step = ToolDialogue("agent", tools=tools, simulator="sim", tool_calling="json")
    (out,) = run_step(tool_step, {"input": "Book Chez Nous for two"}, backends)
    assert json.loads(out["messages"][2]["content"]) == {"confirmation": "CN-42", "people": 2}
    assert [c["role"] for c in out["_meta"]["calls"]] == ["assistant#1", "tool:book_table", "assistant#2"]
    assert tool_step.stats()["simulated_calls"] == 1


def test_a_record_brings_its_own_tools():
    own = [
        {
            "name": "lookup",
            "description": "Looks up a word.",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        }
    ]
    calls = [[{"name": "lookup", "arguments": {"word": "sandbox"}}]]
    backends = {
        "agent": ScriptedBackend(scripted_agent(calls, "done")),
        "sim": ScriptedBackend(lambda m, s: '{"meaning": "a box"}'),
    }
    tool_step = ToolDialogue("agent", tools_field="tools", simulator="sim", tool_calling="json")
    (out,) = run_step(tool_step, {"input": "What is a sandbox?", "tools": own}, backends)
    assert out["tools"] == [{"type": "function", "function": {**own[0]}}]
    assert out["messages"][2]["content"] == '{"meaning": "a box"}'
    # A record's schema for a module function replaces the step's for that record, and the function runs.
    narrowed = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris"]}}}}
    calls = [[{"name": "get_weather", "arguments": {"city": "Paris"}}]]
    with_module = step(tools_field="tools")
    (out,) = run_step(
        with_module, {"input": "Paris?", "tools": [narrowed]}, {"agent": ScriptedBackend(scripted_agent(calls))}
    )
    assert [t["function"]["name"] for t in out["tools"]] == ["get_air_quality", "get_weather"]
    assert out["tools"][1]["function"]["parameters"]["properties"]["city"] == {"enum": ["Paris"]}
    assert json.loads(out["messages"][2]["content"]) == PARIS
    with pytest.raises(InputError, match="no Python function and the step has no `simulator`"):
        run_step(
            ToolDialogue("agent", tools_field="tools", tool_calling="json"), {"input": "x", "tools": own}, backends
        )


def test_goals_are_read_from_goal_then_input_or_written_by_a_model():
    agent = ScriptedBackend(scripted_agent([[{"name": "get_weather", "arguments": {"city": "Paris"}}]]))
    with pytest.raises(InputError, match="needs the user's goal"):
        run_step(step(), {"id": "x", "text": "no goal"}, {"agent": agent})

    def writer(messages, schema):
        assert schema["properties"]["goals"]["minItems"] == 2 and "get_air_quality" in messages[-1]["content"]
        return json.dumps({"goals": ["How warm is it in Paris today?", "Is London's air clean?"]})

    backends = {"agent": agent, "writer": ScriptedBackend(writer)}
    tool_step = step(generate_goals=2, goal_model="writer", samples=2)
    outs = run_step(tool_step, {"id": "r"}, backends)
    assert [o["input"] for o in outs] == ["How warm is it in Paris today?"] * 2 + ["Is London's air clean?"] * 2
    assert [o["tool_dialogue"]["sample"] for o in outs] == [0, 1, 0, 1]
    assert outs[0]["_meta"]["calls"][0]["role"] == "goals" and tool_step.stats()["goals_generated"] == 2


# --- the native path: OpenAI tools over HTTP (mock server) -----------------------------------------------------


CITY_TOOLS = '''
from typing import Literal


def get_weather(city: Literal["Paris", "Tokyo"]) -> dict:
    """Weather of a city."""
    return {"city": city, "temperature_c": {"Paris": 18, "Tokyo": 23}[city]}


def get_air_quality(city: Literal["Paris", "Tokyo"]) -> dict:
    """Air quality of a city."""
    return {"city": city, "aqi": {"Paris": 42, "Tokyo": 40}[city]}
'''


def mock_registry(server: MockServer, *names: str) -> ModelRegistry:
    body = {"backend": "openai", "base_url": server.url, "model": "mock-model", "max_retries": 0}
    return ModelRegistry.from_dict({"models": {name: dict(body) for name in names}}, "test")


def run_native(tmp_path, server, records, **settings):
    module = tmp_path / "city_tools.py"
    module.write_text(CITY_TOOLS, "utf-8")
    config = {"tool_dialogue": {"model": "agent", "tools_module": str(module), **settings}}
    write_jsonl(tmp_path / "in.jsonl", records)
    pipeline = make_pipeline(tmp_path, [config])
    registry = mock_registry(server, "agent")
    summary = LocalExecutor(pipeline, registry=registry, gateway=Gateway(registry)).run_sync()
    rows = [json.loads(x) for x in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    return summary, rows


def test_native_tool_calls_through_the_openai_backend(tmp_path, mock_server):
    summary, (out,) = run_native(tmp_path, mock_server, [{"input": "get_weather and get_air_quality for me"}])
    assert out["tool_dialogue"]["mode"] == "native" and out["tool_dialogue"]["status"] == "answered"
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    calls = out["messages"][1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_air_quality"]  # parallel calls
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Paris"}]
    assert [m["tool_call_id"] for m in out["messages"][2:4]] == [c["id"] for c in calls]
    assert json.loads(out["messages"][2]["content"]) == {"city": "Paris", "temperature_c": 18}
    assert out["answer"] == 'answer: {"city": "Paris", "temperature_c": 18}; {"city": "Paris", "aqi": 42}'
    requests = [r["body"] for r in mock_server.stats()["last_requests"]]
    assert [t["function"]["name"] for t in requests[0]["tools"]] == ["get_weather", "get_air_quality"]
    assert "tool_choice" not in requests[0] and requests[1]["messages"][-1]["role"] == "tool"


def test_native_last_turn_asks_for_the_answer_with_tool_choice_none(tmp_path, mock_server):
    _, (out,) = run_native(tmp_path, mock_server, [{"input": "weather please"}], max_turns=1, min_tool_calls=0)
    assert out["messages"][-1] == {"role": "assistant", "content": "echo: weather please"}
    assert mock_server.stats()["last_requests"][0]["body"]["tool_choice"] == "none"


def test_native_invalid_arguments_from_the_server_are_fed_back(tmp_path, mock_server):
    _, (out,) = run_native(tmp_path, mock_server, [{"input": "weather [[mock:bad_tool_args]]"}], keep_unfinished=True)
    tool = out["messages"][2]
    assert tool["role"] == "tool" and "must be a JSON object" in json.loads(tool["content"])["error"]
    assert out["tool_dialogue"]["invalid_calls"] == 1


class RefusesTools(ScriptedBackend):
    """A server without tool support (llama.cpp without --jinja): native requests fail with a 400."""

    supports_tools = True

    async def chat_tools(self, messages, tools, params, *, tool_choice=None, seed=None) -> Completion:
        self.calls.append({"tools": tools})
        raise FatalError("model 'agent': HTTP 400: tools param requires --jinja flag", status=400)


def test_auto_falls_back_to_json_when_the_server_refuses_tools():
    agent = RefusesTools(scripted_agent([[{"name": "get_weather", "arguments": {"city": "Paris"}}]]))
    tool_step = step(tool_calling="auto")
    (out,) = run_step(tool_step, {"input": "Paris?"}, {"agent": agent})
    assert out["tool_dialogue"]["mode"] == "json" and out["tool_dialogue"]["status"] == "answered"
    assert tool_step.stats()["native_refused"] == 1
    assert sum("tools" in c for c in agent.calls) == 1  # asked natively once, never again
    with pytest.raises(StepError, match="tools param requires"):
        run_step(step(tool_calling="native"), {"input": "Paris?"}, {"agent": RefusesTools()})


def test_tool_calls_are_cached_with_the_reply(tmp_path, mock_server):
    async def twice():
        registry = mock_registry(mock_server, "agent")
        cache = CallCache(tmp_path / "cache.sqlite")
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
        messages = [{"role": "user", "content": "call f"}]
        replies = []
        for _ in range(2):
            gateway = Gateway(registry, cache=cache)
            replies.append(await gateway.model("agent").chat_tools(messages, tools))
            await gateway.close()
        return replies

    first, second = asyncio.run(twice())
    assert first.tool_calls == second.tool_calls and first.tool_calls[0]["function"] == {"name": "f", "arguments": "{}"}
    assert (first.cached, second.cached) == (False, True)
    assert mock_server.stats()["by_endpoint"]["/v1/chat/completions"] == 1


# --- judged and paired with the existing machinery ---------------------------------------------------------------


class FirstTurnChooser(ScriptedBackend):
    """The first trajectory to ask looks up Paris, the second a city that does not exist; answers follow results."""

    def __init__(self) -> None:
        super().__init__(self.answer)
        self.first_turns = 0

    def answer(self, messages, schema):
        if len(messages) == 2 and "anyOf" in schema:  # a first turn: the agent prompt and the goal
            self.first_turns += 1
            city = "Paris" if self.first_turns == 1 else "Atlantis"
            return json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": city}}]})
        failed = "error" in messages[-1]["content"]
        return json.dumps({"answer": "Sorry, I could not find that city." if failed else "18 °C and cloudy in Paris."})


def rubric_judge(messages, schema):
    """Pointwise judge: a trajectory whose answer uses the tool's result scores 9, the other 2."""
    score = 9 if "18 °C" in messages[-1]["content"] else 2
    return json.dumps(
        {
            aspect: {"rationale": "uses the result" if score > 5 else "no", "score": score}
            for aspect in schema["properties"]
        }
    )


def test_trajectories_as_candidates_become_dpo_pairs_of_whole_trajectories(tmp_path):
    steps = [
        {
            "tool_dialogue": {
                "model": "agent",
                "tools_module": WEATHER,
                "tool_calling": "json",
                "samples": 2,
                "candidates_field": "trajectory_candidates",
                "system": "You have weather tools.",
            }
        },
        {"dpo": {"judges": ["judge"], "candidates_field": "trajectory_candidates", "aspects": ["helpfulness"]}},
    ]
    backends = {"agent": FirstTurnChooser(), "judge": ScriptedBackend(rubric_judge)}
    result = run_records(tmp_path, [{"id": "g1", "goal": "Weather in Paris?"}], steps, backends)
    assert not result.failures, result.failures
    (pair,) = result.data
    assert pair["prompt"] == [
        {"role": "system", "content": "You have weather tools."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    for side, city, answer in (("chosen", "Paris", "18 °C and cloudy in Paris."), ("rejected", "Atlantis", "Sorry")):
        messages = pair[side]
        assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
        assert json.loads(messages[0]["tool_calls"][0]["function"]["arguments"]) == {"city": city}
        assert messages[2]["content"].startswith(answer)
    assert (pair["score_chosen"], pair["score_rejected"]) == (9.0, 2.0)
    assert "messages" not in pair["source_chosen"] and pair["source_chosen"]["status"] == "answered"
    assert [t["function"]["name"] for t in pair["tools"]] == ["get_weather", "get_air_quality"]
    # The judge read the trajectory as text: the call, the result, the answer.
    judged = [c["messages"][-1]["content"] for c in backends["judge"].calls]
    assert any(
        'Assistant calls get_weather({"city": "Paris"})' in text and "Tool get_weather returned" in text
        for text in judged
    )


def test_unfinished_candidates_are_kept_with_an_error_and_not_scored(tmp_path):
    steps = [
        {
            "tool_dialogue": {
                "model": "agent",
                "tools_module": WEATHER,
                "tool_calling": "json",
                "samples": 2,
                "min_tool_calls": 2,  # one call each: neither trajectory finishes
                "candidates_field": "trajectory_candidates",
            }
        }
    ]
    result = run_records(tmp_path, [{"goal": "Weather in Paris?"}], steps, {"agent": FirstTurnChooser()})
    (record,) = result.data
    statuses = [c["status"] for c in record["trajectory_candidates"]]
    assert statuses == ["too_few_calls", "too_few_calls"]
    assert all("fewer tool calls" in c["error"] for c in record["trajectory_candidates"])


def test_trajectories_are_judged_by_vote_with_the_tool_judge_prompt(tmp_path):
    def voter(messages, schema):
        text = messages[-1]["content"]
        assert "User goal: Weather in Paris?" in text and "Tool get_weather returned" in text
        label = "good" if "18 °C" in text else "bad"
        return json.dumps({"label": label, "reason": "checked the trajectory"})

    steps = [
        {"tool_dialogue": {"model": "agent", "tools_module": WEATHER, "tool_calling": "json"}},
        {"vote": {"models": ["v1", "v2", "v3"], "prompt": "tool_judge", "options": {"labels": ["good", "bad"]}}},
    ]
    backends = {"agent": FirstTurnChooser(), **{v: ScriptedBackend(voter) for v in ("v1", "v2", "v3")}}
    result = run_records(tmp_path, [{"goal": "Weather in Paris?"}], steps, backends)
    (out,) = result.data
    assert out["vote"]["label"] == "good" and out["vote"]["agreement"] == 1.0
    assert backends["v1"].calls[0]["schema"]["properties"]["label"]["enum"] == ["good", "bad"]


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({}, "tools: no tools: give `tools`, `tools_module` and/or `tools_field`"),
        ({"tools_field": "tools", "functions": ["f"]}, "functions: names functions of `tools_module`"),
        ({"tools": [{"name": "bad name"}]}, "a tool needs a `name` of letters"),
        ({"tools": [{"name": "f", "parameters": {"type": "string"}}]}, "must be a JSON Schema of type object"),
        ({"tools": [{"name": "f", "parameters": {"type": "object", "properties": 3}}]}, "not a valid JSON Schema"),
        ({"tools": [{"name": "f"}, {"name": "f"}]}, "['f'] given twice"),
        ({"tools_module": "t.py", "max_turns": 0}, "max_turns: must be >= 1"),
        ({"tools_module": "t.py", "goal_model": "m"}, "goal_model: writes goals only when"),
        ({"tools_module": "t.py", "sandbox": {"timeout": 3}}, "sandbox.timeout"),
    ],
)
def test_setting_mistakes_are_one_line(settings, fragment):
    data = {"steps": [{"tool_dialogue": {"model": "m", **settings}}], "input": {"path": "in.jsonl"}}
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_dict(data, source="p.yaml")
    assert fragment in str(caught.value), str(caught.value)
    assert str(caught.value).startswith("p.yaml: steps[0] (tool_dialogue)")


def test_checks_before_the_run_name_the_problem(tmp_path):
    backends = {"agent": ScriptedBackend()}
    with pytest.raises(ConfigError, match="tools_module: no such file: nowhere.py"):
        run_step(ToolDialogue("agent", tools_module="nowhere.py"), {"input": "x"}, backends)
    bad = tmp_path / "bad.py"
    bad.write_text("class C:\n    pass\ndef f(c: C):\n    pass\n", "utf-8")
    with pytest.raises(ConfigError, match="the type hint 'C'"):
        run_step(ToolDialogue("agent", tools_module=str(bad)), {"input": "x"}, backends)
    schema_only = [{"name": "f", "parameters": {"type": "object"}}]
    with pytest.raises(ConfigError, match=r"tools \['f'\] have no Python function"):
        run_step(ToolDialogue("agent", tools=schema_only), {"input": "x"}, backends)
    registry = ModelRegistry.from_dict({"models": {"agent": {"backend": "llamacpp", "model_path": "smollm2"}}}, "t")
    with pytest.raises(ConfigError, match="cannot call tools natively; use tool_calling: json"):
        run_step(step(tool_calling="native"), {"input": "x"}, backends, registry=registry)


def test_render_helpers():
    messages = [
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        {"role": "assistant", "content": "Done."},
    ]
    assert trajectory_text(messages).splitlines() == [
        "User: Paris?",
        'Assistant calls get_weather({"city": "Paris"})',
        "Tool get_weather returned: {}",
        "Assistant: Done.",
    ]
    assert continuation(messages) == messages[1:]


def test_config_example_validates():
    assert ToolDialogueConfig.model_validate(ToolDialogueConfig.example).tools_module == "tools_weather.py"
    assert registry_of(["x"]).get("x").capabilities.chat
