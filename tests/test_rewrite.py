"""Case rewrite: fan-out, ids and parent links, schema, bad replies, per-case checks (scripted replies)."""

import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import ConfigError
from joydataforge.methods.rewrite.step import Rewrite
from joydataforge.models.gateway import Gateway
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import read_jsonl, registry_of, run_pipeline, write_jsonl

REGISTRY = registry_of(["m"])


def run(tmp_path: Path, records, step: dict, reply) -> tuple:
    write_jsonl(tmp_path / "in.jsonl", records)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [{"rewrite": {"model": "m", **step}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "concurrency": 4},
        }
    )
    backend = ScriptedBackend(reply)
    summary = run_pipeline(pipeline, {"m": backend}, registry=REGISTRY).summary
    return (
        summary,
        backend,
        read_jsonl(tmp_path / "out" / "data.jsonl"),
        read_jsonl(tmp_path / "out" / "failures.jsonl"),
    )


def record_in_prompt(messages) -> dict:
    text = messages[-1]["content"]
    return json.loads(text[text.index("{") : text.index("\n\n")])


def rewriter(messages, schema):
    original = record_in_prompt(messages)["input"]
    return json.dumps(
        {
            "cases": [
                {"type": "paraphrase", "input": f"in other words: {original}"},
                {"type": "tone", "input": f"PLEASE, {original}!"},
            ]
        }
    )


def test_fan_out_ids_parent_links_and_fields(tmp_path):
    records = [
        {"id": "a", "input": "how to boil an egg", "target": "in water", "tag": 1},
        {"id": "b", "input": "what is {{ 7*7 }}", "target": "49"},
    ]
    summary, backend, out, failures = run(
        tmp_path,
        records,
        {"prompt": "en/rewrite", "types": ["paraphrase", "tone"], "drop_fields": ["target"]},
        rewriter,
    )
    assert failures == [] and summary.records_out == 4 and len(backend.calls) == 2
    assert [r["id"] for r in out] == ["a:rw0", "a:rw1", "b:rw0", "b:rw1"]
    assert [r["parent_id"] for r in out] == ["a", "a", "b", "b"]
    assert [r["rewrite_type"] for r in out] == ["paraphrase", "tone", "paraphrase", "tone"]
    assert out[0]["input"] == "in other words: how to boil an egg" and out[0]["tag"] == 1
    assert "target" not in out[0]  # the old answer does not fit the rewritten question
    assert out[2]["input"] == "in other words: what is {{ 7*7 }}"  # record text stays text
    assert out[0]["_meta"]["source_id"] == "a" and len(out[0]["_meta"]["calls"]) == 1
    # The whole record went in as JSON, without private fields or id.
    sent = record_in_prompt(backend.calls[0]["messages"])
    assert sent == {"input": "how to boil an egg", "target": "in water", "tag": 1}
    # The schema restricts the types and requires every rewritten field.
    case = backend.calls[0]["schema"]["properties"]["cases"]
    assert case["items"]["properties"]["type"]["enum"] == ["paraphrase", "tone"]
    assert case["items"]["required"] == ["type", "input"] and case["maxItems"] == 2


def test_cases_missing_a_field_are_retried_then_recorded_as_failure(tmp_path):
    def reply(messages, schema):
        return json.dumps({"cases": [{"type": "paraphrase", "input": "new question"}]})  # no 'target'

    summary, backend, out, failures = run(
        tmp_path,
        [{"id": "a", "input": "q", "target": "t"}],
        {"prompt": "en/rewrite", "fields": ["input", "target"]},
        reply,
    )
    assert out == [] and summary.failed == 1
    assert len(backend.calls) == 2  # first reply + one json retry
    assert failures[0]["step"] == "rewrite" and "target" in failures[0]["error"]
    assert failures[0]["raw"] == reply(None, None)


def test_unknown_type_and_too_many_cases_are_rejected_by_schema(tmp_path):
    def reply(messages, schema):
        return json.dumps({"cases": [{"type": "invent", "input": "x"}]})

    summary, _, out, failures = run(
        tmp_path, [{"id": "a", "input": "q"}], {"prompt": "en/rewrite", "types": ["paraphrase"]}, reply
    )
    assert out == [] and "invent" in failures[0]["error"]

    def too_many(messages, schema):
        return json.dumps({"cases": [{"type": "paraphrase", "input": f"v{i}"} for i in range(3)]})

    (tmp_path / "second").mkdir()
    summary, _, out, failures = run(
        tmp_path / "second",
        [{"id": "a", "input": "q"}],
        {"prompt": "en/rewrite", "types": ["paraphrase"], "per_type": 2},
        too_many,
    )
    assert out == [] and summary.failed == 1


def test_blank_unchanged_duplicate_and_over_quota_cases_are_dropped_and_counted(tmp_path):
    def reply(messages, schema):
        return json.dumps(
            {
                "cases": [
                    {"type": "paraphrase", "input": "  How to  boil an EGG "},  # unchanged (spacing, case)
                    {"type": "paraphrase", "input": "egg boiling, how?"},
                    {"type": "paraphrase", "input": "egg  boiling, how?"},  # duplicate
                    {"type": "tone", "input": "  ,. "},  # blank (punctuation only)
                    {"type": "tone", "input": "yo, eggs?"},
                    {"type": "tone", "input": "kindly explain egg boiling"},  # over the per-type quota of 1
                ]
            }
        )

    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "how to boil an egg"}])
    step = Rewrite("m", "en/rewrite", types=["paraphrase", "tone"], max_cases=6)
    pipeline = Pipeline(
        input={"path": str(tmp_path / "in.jsonl")},
        steps=[step],
        output={"dir": str(tmp_path / "out")},
        run={"cache": None, "progress": False},
    )
    gateway = Gateway(REGISTRY, backends={"m": ScriptedBackend(reply)})
    LocalExecutor(pipeline, registry=REGISTRY, gateway=gateway).run_sync()
    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert [(r["rewrite_type"], r["input"]) for r in out] == [
        ("paraphrase", "egg boiling, how?"),
        ("tone", "yo, eggs?"),
    ]
    assert step.counters["dropped:unchanged"] == 1 and step.counters["dropped:duplicate"] == 1
    assert step.counters["dropped:blank"] == 1 and step.counters["dropped:over_type_quota"] == 1
    assert step.counters["cases_returned"] == 6 and step.counters["cases_out"] == 2


def test_min_cases_fails_the_record_with_the_raw_reply(tmp_path):
    def reply(messages, schema):
        return json.dumps({"cases": [{"type": "paraphrase", "input": "how to boil an egg"}]})  # unchanged only

    summary, _, out, failures = run(
        tmp_path, [{"id": "a", "input": "how to boil an egg"}], {"prompt": "en/rewrite"}, reply
    )
    assert out == [] and summary.failed == 1
    assert "0 usable rewritten case(s) of 1" in failures[0]["error"] and failures[0]["raw"] == reply(None, None)


def test_missing_or_non_text_field_is_an_input_error_naming_it(tmp_path):
    summary, backend, out, failures = run(
        tmp_path, [{"id": "a", "question": "q"}, {"id": "b", "input": ["x"]}], {"prompt": "en/rewrite"}, rewriter
    )
    assert backend.calls == [] and summary.bad_input == 2 and summary.failed == 0
    assert "field 'input'" in failures[0]["error"] and "in.jsonl:1" in failures[0]["error"]
    assert "field 'input': a list, not text" in failures[1]["error"]


def test_show_fields_limits_what_the_model_sees(tmp_path):
    records = [{"id": "a", "input": "how to boil an egg", "history": [["long", "dialogue"]] * 50, "tag": 1}]
    _, backend, out, _ = run(tmp_path, records, {"prompt": "en/rewrite", "show_fields": ["input", "tag"]}, rewriter)
    assert record_in_prompt(backend.calls[0]["messages"]) == {"input": "how to boil an egg", "tag": 1}
    assert out[0]["history"] == records[0]["history"]  # still copied to the cases


def test_children_of_fan_out_records_get_unique_ids(tmp_path):
    # A record that is itself a child (own id differs from the input's) is the parent of its rewrites.
    records = [{"id": "t:g0", "input": "first"}, {"id": "t:g1", "input": "second"}]
    _, _, out, _ = run(tmp_path, records, {"prompt": "zh/rewrite", "types": ["paraphrase", "tone"]}, rewriter)
    assert [r["id"] for r in out] == ["t:g0:rw0", "t:g0:rw1", "t:g1:rw0", "t:g1:rw1"]
    assert len({r["id"] for r in out}) == 4


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="per_type"):
        Rewrite("m", per_type=0)
    with pytest.raises(ConfigError, match=r'\.fields: cannot include \["type"\]'):
        Rewrite("m", fields=["input", "type"])
    with pytest.raises(ConfigError, match="min_cases"):
        Rewrite("m", types=["paraphrase"], min_cases=2)
    with pytest.raises(ConfigError, match="types"):
        Rewrite("m", types=[1, 2])
    with pytest.raises(ConfigError, match="show_fields"):
        Rewrite("m", fields=["input", "target"], show_fields=["input"])
    step = Rewrite("m", types={"formal": "make it formal"}, max_chars=80)
    assert step.schema["properties"]["cases"]["items"]["properties"]["input"]["maxLength"] == 80
