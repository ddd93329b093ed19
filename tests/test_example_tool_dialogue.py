"""examples/tool_dialogue.yaml through the command line: on the mock OpenAI server (native tool calls, and JSON
replies) and, slow, on the embedded model (JSON replies under a grammar). Its output exports and loads with
`datasets` in both tool formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.io.exports import export_file
from tests.mock_openai import MockServer
from tests.support.harness import assert_run_finished

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = ("tool_dialogue.yaml", "tools_weather.py", "tool_goals.jsonl")
ROLES = {"system", "user", "assistant", "tool"}


def copy_example(work: Path, models: str | None = None, **settings) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(EXAMPLES / name, work / name)
    shutil.copy(EXAMPLES / "models.yaml", work / "models.yaml")
    if models is not None:
        (work / "models.yaml").write_text(models, "utf-8")
    pipeline = yaml.safe_load((work / "tool_dialogue.yaml").read_text("utf-8"))
    pipeline["steps"][0]["tool_dialogue"].update(settings)
    (work / "tool_dialogue.yaml").write_text(yaml.safe_dump(pipeline, allow_unicode=True), "utf-8")
    return work / "tool_dialogue.yaml"


def run(pipeline: Path, out: Path) -> tuple[list[dict], list[dict], dict]:
    result = CliRunner().invoke(cli, ["run", str(pipeline), "-o", str(out), "--no-progress"], catch_exceptions=False)
    assert_run_finished(result, out)

    def lines(name: str) -> list[dict]:
        path = out / name
        return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []

    return lines("data.jsonl"), lines("failures.jsonl"), json.loads((out / "summary.json").read_text("utf-8"))


def check_trajectory(record: dict) -> None:
    """OpenAI roles; every tool result answers an earlier call of the turn before it; stats that add up."""
    messages = record["messages"]
    assert {m["role"] for m in messages} <= ROLES and messages[0]["role"] in ("system", "user")
    open_calls: set[str] = set()
    calls = 0
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            open_calls = {c["id"] for c in message["tool_calls"]}
            calls += len(message["tool_calls"])
            for call in message["tool_calls"]:
                assert call["type"] == "function" and isinstance(json.loads(call["function"]["arguments"]), dict)
        elif message["role"] == "tool":
            assert message["tool_call_id"] in open_calls
    stats = record["tool_dialogue"]
    assert stats["tool_calls"] + stats["invalid_calls"] == calls
    assert stats["status"] in ("answered", "max_turns", "invalid_call", "too_few_calls", "empty_answer", "text_check")
    if stats["status"] == "answered":
        assert messages[-1]["role"] == "assistant" and record["answer"] == messages[-1]["content"]


def mock_models(server: MockServer) -> str:
    return f"models:\n  smollm2-agent:\n    backend: openai\n    base_url: {server.url}\n    model: mock-model\n"


@pytest.mark.parametrize("tool_calling", ["auto", "json"])
def test_example_on_the_mock_server(tmp_path, mock_server, tool_calling):
    pipeline = copy_example(tmp_path / "work", mock_models(mock_server), tool_calling=tool_calling)
    data, failures, summary = run(pipeline, tmp_path / "out")
    assert not failures and len(data) == 3
    for record in data:
        check_trajectory(record)
        assert record["tool_dialogue"]["mode"] == ("native" if tool_calling == "auto" else "json")
        # The mock calls get_weather with city "x": the real function raises, the error goes back to the model.
        tool = next(m for m in record["messages"] if m["role"] == "tool")
        assert "unknown city 'x'" in json.loads(tool["content"])["error"]
    stats = summary["steps"]["tool_dialogue"]
    assert stats["trajectories"] == 3 and stats["sandbox:error"] == stats["tool_calls"]
    for fmt in ("openai-tools", "sharegpt-tools"):
        report = export_file(tmp_path / "out" / "data.jsonl", tmp_path / f"{fmt}.jsonl", fmt, keep_fields=("id",))
        assert report.written == 3
        datasets = pytest.importorskip("datasets")
        assert len(datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"), split="train")) == 3


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_example_on_the_embedded_model(tmp_path):
    data, failures, summary = run(copy_example(tmp_path / "work"), tmp_path / "out")
    assert len(data) + len(failures) == 3
    stats = summary["steps"]["tool_dialogue"]
    assert stats.get("turns:json", 0) >= len(data)  # the embedded model has no native tool calls
    for record in data:
        check_trajectory(record)
        assert record["tool_dialogue"]["mode"] == "json"
    # Grammar-constrained calls always match their schemas; each ran in the sandbox.
    assert stats.get("invalid_calls", 0) == 0
    assert stats.get("tool_calls", 0) == sum(v for k, v in stats.items() if k.startswith("sandbox:"))
