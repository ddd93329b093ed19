"""``joyforge validate``: every example passes; a broken pipeline gets every problem, one line each; no model
is ever called or loaded."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from joydataforge.cli.validate import validate_command

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = sorted(
    p.name for p in (ROOT / "examples").glob("*.yaml") if "steps" in (yaml.safe_load(p.read_text("utf-8")) or {})
)


@pytest.fixture(autouse=True)
def no_backend_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a backend would load a model (llama.cpp, vLLM) or open a connection: validate must not."""

    def refuse(config):
        raise AssertionError(f"joyforge validate built a backend for model '{config.name}'")

    monkeypatch.setattr("joydataforge.models.gateway.create_backend", refuse)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections and counts them: a model server that must never hear from us."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def invoke(*args: str):
    return CliRunner().invoke(validate_command, list(args))


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/, with the input dialogue_binary.yaml reads made as its comments say: the test set
    of `joyforge dialogue-split` over examples/dialogue.yaml's output (records of one labelled user turn)."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(ROOT / "examples", work / "examples")
    split = work / "out" / "dialogue" / "split"
    split.mkdir(parents=True)
    turn = {
        "id": "d1:t1",
        "dialog_id": "d1",
        "turn_index": 1,
        "input": "孕妇可以吃布洛芬吗？",
        "history": "用户: 你好\n助手: 你好，请问有什么可以帮您？",
        "label": "药品",
        "reason": "问用药",
    }
    (split / "test.jsonl").write_text(json.dumps(turn, ensure_ascii=False) + "\n", "utf-8")
    return work / "examples"


@pytest.mark.parametrize("name", PIPELINES)
def test_every_example_pipeline_passes(examples: Path, name: str) -> None:
    result = invoke(str(examples / name))
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"ok: {examples / name}: ") and "0 model calls" in last


def test_examples_are_all_there() -> None:
    assert {"demo.yaml", "vote.yaml", "dpo.yaml", "magpie.yaml", "dialogue_binary.yaml"} <= set(PIPELINES)


def write_case(tmp_path: Path, port: int, steps: list[dict], records: list[dict]) -> Path:
    (tmp_path / "models.yaml").write_text(
        yaml.safe_dump(
            {"models": {"mock": {"backend": "openai", "model": "mock", "base_url": f"http://127.0.0.1:{port}/v1"}}}
        ),
        "utf-8",
    )
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    pipeline = {"models": "models.yaml", "input": {"path": "data.jsonl"}, "steps": steps}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False), "utf-8")
    return path


def test_a_good_pipeline_on_a_served_model_passes_without_a_request(tmp_path: Path, listener: socket.socket) -> None:
    path = write_case(
        tmp_path,
        listener.getsockname()[1],
        [{"generate": {"model": "mock", "prompt": "zh/answer"}}, {"label": {"model": "mock"}}],
        [{"id": "a", "input": "hi"}, {"id": "b", "input": "there"}],
    )
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {path}: 2 step(s) (generate, label); models: mock;")
    assert "first 2 record(s)" in result.stdout
    assert connections(listener) == 0


def test_every_problem_is_one_line_and_no_model_is_called(tmp_path: Path, listener: socket.socket) -> None:
    path = write_case(
        tmp_path,
        listener.getsockname()[1],
        [
            {"generate": {"model": "mock", "prompt": "zh/answer"}},  # fields checked
            {"generate": {"model": "mock", "prompt": "prompts/missing.yaml", "output_field": "x"}},  # missing prompt
            {"critique_revise": {"model": "mock", "critic": "mock", "rounds": 0}},  # bad setting
            {"label": {"model": "nosuch"}},  # unknown model
        ],
        [{"id": "a", "input": "hi"}, {"id": "b", "query": "no input field"}, {"id": "c", "input": "ok"}, {"id": "d"}],
    )
    result = invoke(str(path))
    assert result.exit_code == 1
    problems = result.stdout.strip().splitlines()
    data = tmp_path / "data.jsonl"
    expected = [
        f"{path}: steps[2] (critique_revise).rounds: must be >= 1 (got 0)",
        f"{path}: steps[1] (generate): prompt file not found: prompts/missing.yaml",
        f"{path}: steps[3] (label): unknown model 'nosuch' (models in ",
        f"{data}:2:input: the record lacks this field, which steps[0] (generate) needs for its prompt",
        f"{data}:4:input: the record lacks this field, which steps[0] (generate) needs for its prompt",
    ]
    assert len(problems) == len(expected), result.output
    for line, start in zip(problems, expected):
        assert line.startswith(start), (line, start)
    assert result.stderr.strip() == f"{len(expected)} problem(s) in {path}"
    assert "Traceback" not in result.output
    assert connections(listener) == 0


def test_models_option_replaces_the_pipelines_models_file(tmp_path: Path, listener: socket.socket) -> None:
    path = write_case(
        tmp_path, listener.getsockname()[1], [{"generate": {"model": "other", "prompt": "answer"}}], [{"input": "hi"}]
    )
    assert invoke(str(path)).exit_code == 1  # 'other' is in no models file yet
    extra = tmp_path / "more.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "other": {
                        "backend": "openai",
                        "model": "o",
                        "base_url": f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
                    }
                }
            }
        )
    )
    result = invoke(str(path), "--models", str(extra))
    assert result.exit_code == 0, result.output
    assert connections(listener) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input: [unclosed", "not valid YAML"),
        ("- a list", "a pipeline is a mapping"),
    ],
)
def test_a_file_that_is_not_a_pipeline_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    result = invoke(str(path))
    assert result.exit_code == 1
    problems = result.stdout.strip().splitlines()
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ") and expected in problems[0]


def test_a_missing_input_and_a_missing_models_file_are_problems(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {"models": "nope.yaml", "input": {"path": "nothing.jsonl"}, "steps": [{"generate": {"model": "smollm2"}}]}
        )
    )
    result = invoke(str(path))
    assert result.exit_code == 1
    problems = result.stdout.strip().splitlines()
    assert len(problems) == 2, result.output
    assert problems[0].startswith(f"{path}: models: models file not found: ")
    assert problems[1].startswith(f"{path}: input.path: no such file or folder: ")


def test_a_budget_the_run_cannot_keep_is_a_problem(tmp_path: Path, listener: socket.socket) -> None:
    path = write_case(
        tmp_path,
        listener.getsockname()[1],
        [{"generate": {"model": "mock", "prompt": "zh/answer"}}],
        [{"id": "a", "input": "hi"}],
    )
    pipeline = yaml.safe_load(path.read_text("utf-8"))
    pipeline["run"] = {"budget": {"tokens": 1000, "models": {"nosuch": {"tokens": 10}}}}
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False), "utf-8")
    result = invoke(str(path))
    assert result.exit_code == 1
    problems = result.stdout.strip().splitlines()
    assert problems == [
        f"{path}: run.budget.models: 'nosuch' is not a model of this run (known: " + problems[0].split("(known: ")[1]
    ]
    assert connections(listener) == 0
