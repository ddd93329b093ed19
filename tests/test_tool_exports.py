"""Tool-use trajectories exported as OpenAI messages and as ShareGPT function calling; every format loads with
`datasets` (what TRL and LLaMA-Factory read files with)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from joydataforge.errors import InputError
from joydataforge.io.exports import FORMATS, ExportFields, export_file, to_openai_tools, to_sharegpt_tools

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"], "type": "string"}},
            "required": ["city"],
        },
    },
}
AIR_TOOL = {
    "type": "function",
    "function": {
        "name": "get_air_quality",
        "description": "Air quality of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "hours": {"type": "integer"}}},
    },
}


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


TRAJECTORY = {
    "id": "t1",
    "input": "Weather and air in Paris?",
    "tools": [WEATHER_TOOL, AIR_TOOL],
    "messages": [
        {"role": "system", "content": "You have weather tools."},
        {"role": "user", "content": "Weather and air in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("c1", "get_weather", {"city": "Paris"}),
                call("c2", "get_air_quality", {"city": "Paris"}),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 18}'},
        {"role": "tool", "tool_call_id": "c2", "content": '{"aqi": 42}'},
        {
            "role": "assistant",
            "content": "Let me check tomorrow too.",
            "tool_calls": [call("c3", "get_weather", {"city": "Paris", "unit": "celsius"})],
        },
        {"role": "tool", "tool_call_id": "c3", "content": '{"temperature": 19}'},
        {"role": "assistant", "content": "18 °C today, AQI 42."},
    ],
}
SINGLE = {
    "id": "t2",
    "input": "Weather in Tokyo?",
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "user", "content": "Weather in Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [call("k1", "get_weather", {"city": "Tokyo"})]},
        {"role": "tool", "tool_call_id": "k1", "content": '{"temperature": 23}'},
        {"role": "assistant", "content": "23 °C."},
    ],
}


def test_openai_tools_keeps_the_trajectory_and_its_tools():
    out = to_openai_tools(TRAJECTORY)
    assert out["messages"] == TRAJECTORY["messages"]
    assert out["tools"] == [WEATHER_TOOL, AIR_TOOL]


def test_sharegpt_tools_in_llama_factory_shape():
    out = to_sharegpt_tools(SINGLE)
    assert out == {
        "conversations": [
            {"from": "human", "value": "Weather in Tokyo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Tokyo"}}'},
            {"from": "observation", "value": '{"temperature": 23}'},
            {"from": "gpt", "value": "23 °C."},
        ],
        "tools": json.dumps([WEATHER_TOOL["function"]], ensure_ascii=False),
    }
    parallel = to_sharegpt_tools(TRAJECTORY)["conversations"]
    assert [t["from"] for t in parallel] == [
        "system",
        "human",
        "function_call",
        "observation",
        "function_call",
        "observation",
        "gpt",
    ]
    assert json.loads(parallel[2]["value"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_air_quality", "arguments": {"city": "Paris"}},
    ]
    assert parallel[3]["value"] == '{"temperature": 18}\n</tool_response>\n<tool_response>\n{"aqi": 42}'
    # LLaMA-Factory's rule after the system turn: human/observation at even places, gpt/function_call at odd ones.
    for k, turn in enumerate(parallel[1:]):
        assert turn["from"] in (("human", "observation") if k % 2 == 0 else ("gpt", "function_call"))


def test_unfinished_trajectories_are_skipped_and_broken_ones_are_errors():
    unfinished = {**SINGLE, "messages": SINGLE["messages"][:3]}
    assert to_openai_tools(unfinished) is None and to_sharegpt_tools(unfinished) is None
    orphan = {**SINGLE, "messages": [SINGLE["messages"][0], SINGLE["messages"][2], SINGLE["messages"][3]]}
    with pytest.raises(InputError, match="a tool result for no earlier call"):
        to_openai_tools(orphan)
    with pytest.raises(InputError, match="needs the trajectory"):
        to_sharegpt_tools({"input": "x"})
    with pytest.raises(InputError, match="no OpenAI role"):
        to_openai_tools({"messages": [{"role": "function", "content": "x"}]})


def records_for(fmt: str) -> list[dict]:
    if fmt in ("openai-tools", "sharegpt-tools"):
        return [TRAJECTORY, SINGLE]
    base = [
        {"id": "a", "input": "q1", "target": "a1", "history": [["h", "i"]], "chosen": "good", "rejected": "bad"},
        {"id": "b", "input": "q2", "target": "a2", "system": "be brief", "chosen": "yes", "rejected": "no"},
    ]
    return base


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_export_loads_with_datasets(tmp_path: Path, fmt: str):
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed (pip install datasets)")
    src = tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records_for(fmt)), "utf-8")
    dst = tmp_path / f"train.{fmt}.jsonl"
    report = export_file(src, dst, fmt)
    assert report.written == 2
    dataset = datasets.load_dataset("json", data_files=str(dst), split="train")
    assert len(dataset) == 2
    if fmt == "openai-tools":
        row = dataset[0]
        assert [m["role"] for m in row["messages"]][:3] == ["system", "user", "assistant"]
        assert row["messages"][2]["tool_calls"][1]["function"]["name"] == "get_air_quality"
        assert row["messages"][3]["tool_call_id"] == "c1"
        assert {t["function"]["name"] for t in row["tools"]} == {"get_weather", "get_air_quality"}
    if fmt == "sharegpt-tools":
        assert json.loads(dataset[1]["tools"])[0]["name"] == "get_weather"
        assert dataset[1]["conversations"][1]["from"] == "function_call"


THINKING = {
    **SINGLE,
    "messages": [
        SINGLE["messages"][0],
        {**SINGLE["messages"][1], "reasoning_content": "I need the weather tool."},
        SINGLE["messages"][2],
        {**SINGLE["messages"][3], "reasoning_content": "The tool said 23."},
    ],
}


def test_trajectory_traces_are_exported_only_when_asked():
    plain = to_openai_tools(THINKING)
    assert not any("reasoning_content" in m for m in plain["messages"])
    assert to_sharegpt_tools(THINKING)["conversations"][-1] == {"from": "gpt", "value": "23 °C."}

    fields = ExportFields(reasoning=True)
    kept = to_openai_tools(THINKING, fields)["messages"]
    assert [m.get("reasoning_content") for m in kept] == [None, "I need the weather tool.", None, "The tool said 23."]
    # ShareGPT: the final answer carries its trace in think tags; a function_call turn is JSON and has no room
    turns = to_sharegpt_tools(THINKING, fields)["conversations"]
    assert turns[-1] == {"from": "gpt", "value": "<think>\nThe tool said 23.\n</think>\n\n23 °C."}
    assert json.loads(turns[1]["value"]) == {"name": "get_weather", "arguments": {"city": "Tokyo"}}


def test_trajectory_traces_load_with_datasets(tmp_path: Path):
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed (pip install datasets)")
    src = tmp_path / "out.jsonl"
    src.write_text(json.dumps(THINKING, ensure_ascii=False) + "\n", "utf-8")
    for fmt in ("openai-tools", "sharegpt-tools"):
        dst = tmp_path / f"{fmt}.jsonl"
        assert export_file(src, dst, fmt, reasoning=True).written == 1
        assert len(datasets.load_dataset("json", data_files=str(dst), split="train")) == 1
