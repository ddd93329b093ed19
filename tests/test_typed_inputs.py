"""Typed inputs: the fields a step reads are checked before any model call; bad records follow on_bad_record.

Each bad kind from issue 13 (``input: null``, ``{}``, ``[]``, ``""``, ``history: "not a list"``, a missing
required field) under ``skip`` (counted, listed file:line:field, in failures.jsonl, never billed) and under
``stop`` (the run stops at that record with one line, exit status 2, the record left unfinished).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import BadInputStop, LocalExecutor
from joydataforge.errors import ExitCode
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.records import field_problem, history_problem
from tests.scripted_backend import ScriptedBackend

REGISTRY = ModelRegistry.from_dict(
    {
        "models": {
            "m": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "max_concurrency": 4, "max_retries": 0}
        }
    },
    "test",
)

BAD = {
    "input null": ({"input": None}, "input", "null, not text"),
    "input {}": ({"input": {}}, "input", "an empty object, not text"),
    "input []": ({"input": []}, "input", "an empty list, not text"),
    "input ''": ({"input": ""}, "input", "empty text"),
    "input blank": ({"input": "   "}, "input", "blank text"),
    "input true": ({"input": True}, "input", "a boolean, not text"),
    "input missing": ({"question": "q"}, "input", "missing"),
    "history not a list": ({"input": "q", "history": "not a list"}, "history", "names no speaker"),
    "history object": ({"input": "q", "history": {"a": 1}}, "history", "an object"),
    "history bad pair": ({"input": "q", "history": [["a", 1]]}, "history", "pair of strings"),
}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def setup(tmp_path: Path, records: list[dict], policy: str, concurrency: int = 4) -> Pipeline:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "on_bad_record": policy},
            "steps": [{"generate": {"model": "m", "prompt": "en/answer"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "concurrency": concurrency},
        }
    )


def run(pipeline: Pipeline, backend: ScriptedBackend):
    return LocalExecutor(pipeline, registry=REGISTRY, gateway=Gateway(REGISTRY, backends={"m": backend})).run_sync()


def asked(backend: ScriptedBackend) -> list[str]:
    return [call["messages"][-1]["content"] for call in backend.calls]


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_record_is_skipped_counted_listed_and_never_billed(tmp_path, kind):
    bad, field, reason = BAD[kind]
    records = [{"id": "a", "input": "first"}, {"id": "bad", **bad}, {"id": "c", "input": "third"}]
    backend = ScriptedBackend()
    summary = run(setup(tmp_path, records, "skip"), backend)
    assert len(backend.calls) == 2 and not any("None" in text or "{}" in text for text in asked(backend))
    assert summary.bad_input == 1 and summary.failed == 0 and summary.inputs_done == 2
    assert [r["id"] for r in lines(tmp_path / "out" / "data.jsonl")] == ["a", "c"]
    [failure] = lines(tmp_path / "out" / "failures.jsonl")
    assert failure["id"] == "bad" and failure["field"] == field and failure["step"] == "generate"
    assert failure["location"].endswith("in.jsonl:2") and failure["record"] == {"id": "bad", **bad}
    [listed] = summary.bad_records
    assert listed.startswith(f"{tmp_path / 'in.jsonl'}:2 field '{field}'") and reason in listed
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))
    assert on_disk["bad_records"] == [listed] and on_disk["exit_status"] == ExitCode.SOME_FAILED


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_record_under_stop_stops_the_run_there(tmp_path, kind):
    bad, field, reason = BAD[kind]
    records = [{"id": "a", "input": "first"}, {"id": "bad", **bad}] + [
        {"id": f"z{i}", "input": f"later {i}"} for i in range(30)
    ]
    backend = ScriptedBackend()
    with pytest.raises(BadInputStop) as stopped:
        run(setup(tmp_path, records, "stop", concurrency=1), backend)
    message = str(stopped.value)
    assert "\n" not in message and f"in.jsonl:2 field '{field}'" in message and reason in message
    assert message.endswith("(on_bad_record: stop)")
    assert len(backend.calls) == 1 and "first" in asked(backend)[0]  # nothing after the bad record was started
    ledger = {e["id"] for e in lines(tmp_path / "out" / "ledger.jsonl")}
    assert "a" in ledger and "bad" not in ledger  # the bad record is not finished: fixed, it is run on resume
    assert not lines(tmp_path / "out" / "failures.jsonl")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))
    assert summary["stopped"] == message and summary["exit_status"] == ExitCode.CONFIG


def test_fixed_record_runs_on_resume_after_a_stop(tmp_path):
    records = [{"id": "a", "input": "first"}, {"id": "b", "input": None}, {"id": "c", "input": "third"}]
    with pytest.raises(BadInputStop):
        run(setup(tmp_path, records, "stop", concurrency=1), ScriptedBackend())
    records[1]["input"] = "second, fixed"
    summary = run(setup(tmp_path, records, "stop", concurrency=1), ScriptedBackend())
    assert summary.exit_code() == ExitCode.OK
    assert [r["id"] for r in lines(tmp_path / "out" / "data.jsonl")] == ["a", "b", "c"]


def test_accepted_shapes_reach_the_model(tmp_path):
    records = [
        {"id": "num", "input": 42},  # a number renders as its digits, as it always did
        {"id": "pairs", "input": "q", "history": [["hi", "hello"]]},
        {"id": "msgs", "input": "q", "history": [{"role": "user", "content": "hi"}]},
        {"id": "text", "input": "q", "history": "用户: 你好\n助手: 您好"},
        {"id": "none", "input": "q", "history": None},
        {"id": "empty", "input": "q", "history": ""},
    ]
    backend = ScriptedBackend()
    summary = run(setup(tmp_path, records, "stop"), backend)
    assert summary.inputs_done == 6 and summary.bad_input == 0 and len(backend.calls) == 6


def test_unreadable_line_under_stop_is_exit_status_2_with_one_line(tmp_path, monkeypatch, capsys):
    from joydataforge.cli import main

    (tmp_path / "in.jsonl").write_text('{"input": "ok"}\n{"input": null}\n', "utf-8")
    (tmp_path / "p.yaml").write_text(
        "input: {path: in.jsonl, on_bad_record: stop}\n"
        "steps:\n  - generate: {model: mock}\n"
        "models: m.yaml\nrun: {cache: null, concurrency: 1}\n",
        "utf-8",
    )
    (tmp_path / "m.yaml").write_text(
        "models:\n  mock: {backend: openai, base_url: 'http://127.0.0.1:1/v1', max_retries: 0, breaker_threshold: 0}\n",
        "utf-8",
    )

    async def fake_chat(self, messages, params, *, json_schema=None, seed=None):
        return await ScriptedBackend().chat(messages, params, json_schema=json_schema, seed=seed)

    monkeypatch.setattr("joydataforge.models.backends.openai_compat.OpenAICompatBackend.chat", fake_chat)
    monkeypatch.setattr(
        sys, "argv", ["joyforge", "run", str(tmp_path / "p.yaml"), "-o", str(tmp_path / "out"), "--no-progress"]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == ExitCode.CONFIG
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "in.jsonl:2 field 'input': null, not text" in last


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("input", "text", None),
        ("input", 3.5, None),
        ("input", float("nan"), "nan, not text"),
        ("input", [["a", "b"]], "a list, not text"),  # input is a query, never a dialogue
        ("dialogs", [["a", "b"]], None),
        ("dialogs", "用户: hi", None),
        ("dialogs", ["x"], "a list, not text"),
        ("topic", {"a": 1}, "an object, not text"),
    ],
)
def test_field_rule(name, value, problem):
    assert field_problem(name, value) == problem


def test_history_rule():
    assert history_problem("  \n") is None and history_problem([]) is None
    assert history_problem("user: hi\nplain continuation") is None
    assert "names no speaker" in history_problem("hi there\nuser: x")
    assert "history[0]" in history_problem([{"role": "user"}])
    assert history_problem(3).startswith("a number, not a list")
