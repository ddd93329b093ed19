"""The local executor with a scripted backend: order, fan-out, failures, bad input, resume, windows."""

import json

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.registry import register_step
from joydataforge.engine.step import Step
from joydataforge.errors import ConfigError, JoyForgeError
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.scripted_backend import ScriptedBackend, echo_reply
from tests.support.harness import make_pipeline, read_jsonl, registry_of, run_pipeline, write_jsonl

REGISTRY = registry_of(["m"], max_concurrency=8, max_retries=2, json_retries=2)


def run(pipeline: Pipeline, backend: ScriptedBackend, **kwargs):
    return run_pipeline(pipeline, {"m": backend}, registry=REGISTRY, **kwargs).summary


def test_generate_keeps_fields_order_and_metadata(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": f"q{i}", "extra": i} for i in range(40)])
    # Later records answer faster: completion order differs from input order.
    backend = ScriptedBackend(delay=0.001)
    summary = run(make_pipeline(tmp_path, [{"generate": {"model": "m", "prompt": "en/answer"}}]), backend)
    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert [r["id"] for r in out] == [f"r{i}" for i in range(40)]
    assert out[3]["extra"] == 3 and out[3]["target"] == "answer to: q3"
    assert out[3]["_meta"]["source_id"] == "r3"
    assert out[3]["_meta"]["calls"][0]["model"] == "m"
    assert summary.records_in == 40 and summary.records_out == 40 and summary.failed == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["records_out"] == 40


def test_label_restricts_enum_and_stores_keys(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"input": "头疼吃什么药"}])
    backend = ScriptedBackend()
    steps = [{"label": {"model": "m", "prompt": "zh/label", "prefix": "m_", "options": {"labels": ["药品", "其他"]}}}]
    run(make_pipeline(tmp_path, steps), backend)
    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert out[0]["m_label"] == "药品" and out[0]["m_reason"].startswith("because")
    assert backend.calls[0]["schema"]["properties"]["label"]["enum"] == ["药品", "其他"]
    assert out[0]["id"]  # a hash id when the input had none


def test_invalid_json_is_retried_then_recorded_with_raw_text(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "ALPHA"}, {"id": "b", "input": "BETA"}])

    def reply(messages, schema):
        if "ALPHA" in messages[-1]["content"]:
            return "I think the label is drugs"  # never JSON
        return echo_reply(messages, schema)

    backend = ScriptedBackend(reply)
    steps = [{"label": {"model": "m", "options": {"labels": ["drugs", "other"]}}}]
    summary = run(make_pipeline(tmp_path, steps), backend)
    failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert summary.failed == 1 and summary.records_out == 1
    assert failures[0]["id"] == "a" and failures[0]["step"] == "label"
    assert failures[0]["raw"] == "I think the label is drugs"
    assert failures[0]["record"] == {"id": "a", "input": "ALPHA"}
    # json_retries=2 by default: three attempts, each a distinct call (different seed)
    seeds = [c["seed"] for c in backend.calls if "ALPHA" in c["messages"][-1]["content"]]
    assert len(seeds) == 3 and len(set(seeds)) == 3


def test_bad_input_lines_are_reported_with_line_and_skipped(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"input": "ok"}\nnot json\n{"noinput": 1}\n{"input": "ok2"}\n', "utf-8")
    summary = run(make_pipeline(tmp_path, [{"generate": {"model": "m"}}]), ScriptedBackend())
    failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
    # an unreadable line and a record without the field its prompt needs are both bad input, not failures
    assert summary.bad_input == 2 and summary.failed == 0 and summary.records_out == 2
    by_step = {f["step"]: f for f in failures}
    assert "in.jsonl:2" in by_step["read"]["error"]
    assert "in.jsonl:3" in by_step["generate"]["error"] and "'input'" in by_step["generate"]["error"]
    assert by_step["generate"]["field"] == "input"
    assert summary.bad_records == [by_step["read"]["error"], by_step["generate"]["error"]]


def test_bad_input_stop_policy(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"input": "ok"}\nnot json\n', "utf-8")
    pipeline = make_pipeline(tmp_path, [{"generate": {"model": "m"}}], input={"on_bad_record": "stop"})
    with pytest.raises(JoyForgeError, match="in.jsonl:2"):
        run(pipeline, ScriptedBackend())


def test_transient_errors_are_retried(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "in.jsonl", [{"input": "q"}])
    monkeypatch.setattr("joydataforge.models.retry.RetryPolicy.delay", lambda self, *a: 0.0)
    backend = ScriptedBackend(fail_times=2)
    summary = run(make_pipeline(tmp_path, [{"generate": {"model": "m"}}]), backend)
    assert summary.records_out == 1 and summary.models["m"]["retries"] == 2


def test_resume_skips_done_and_never_duplicates(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "input": f"q{i}"} for i in range(10)])
    pipeline = make_pipeline(tmp_path, [{"generate": {"model": "m"}}], input={"limit": 4})
    run(pipeline, ScriptedBackend())
    # Simulate a crash after writing outputs of record 4 but before its ledger line, plus a torn line.
    data = tmp_path / "out" / "data.jsonl"
    with data.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "4", "target": "orphan", "_meta": {"source_id": "4"}}) + "\n")
        handle.write('{"id": "5", "targ')
    backend = ScriptedBackend()
    summary = run(make_pipeline(tmp_path, [{"generate": {"model": "m"}}]), backend)
    assert summary.skipped == 4 and summary.repaired_lines == 2
    ids = [r["id"] for r in read_jsonl(data)]
    assert ids == [str(i) for i in range(10)]
    assert len(backend.calls) == 6


def test_changed_pipeline_refuses_same_folder(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"input": "q"}])
    run(make_pipeline(tmp_path, [{"generate": {"model": "m"}}]), ScriptedBackend())
    changed = make_pipeline(tmp_path, [{"generate": {"model": "m", "output_field": "answer"}}])
    with pytest.raises(ConfigError, match="different pipeline"):
        run(changed, ScriptedBackend())
    summary = run(changed, ScriptedBackend(), overwrite=True)
    assert summary.records_out == 1


def test_retry_failed_redoes_only_failures(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "ALPHA"}, {"id": "b", "input": "BETA"}])
    flaky = {"bad": True}

    def reply(messages, schema):
        if flaky["bad"] and "ALPHA" in messages[-1]["content"]:
            return ""
        return "fine"

    run(make_pipeline(tmp_path, [{"generate": {"model": "m"}}]), ScriptedBackend(reply))
    assert len(read_jsonl(tmp_path / "out" / "failures.jsonl")) == 1
    flaky["bad"] = False
    backend = ScriptedBackend(reply)
    summary = run(make_pipeline(tmp_path, [{"generate": {"model": "m"}}], run={"retry_failed": True}), backend)
    assert summary.records_out == 1 and summary.skipped == 1
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "data.jsonl")] == ["a", "b"]  # input order again
    assert summary.totals == {"ok": 2, "filtered": 0, "failed": 0} and summary.exit_code() == 0


@register_step
class SplitWords(Step):
    """Fan-out test step: one output per word of the input."""

    kind = "test_split_words"

    async def run(self, record, ctx):
        return [{**record, "input": word} for word in record["input"].split()] or None


def test_fan_out_ids_and_filtering(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "s", "input": "a b c"}, {"id": "e", "input": "   "}])
    summary = run(make_pipeline(tmp_path, [{"test_split_words": {}}, {"generate": {"model": "m"}}]), ScriptedBackend())
    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert [r["id"] for r in out] == ["s:0", "s:1", "s:2"]
    assert all(r["_meta"]["source_id"] == "s" for r in out)
    assert summary.filtered == 1 and summary.records_out == 3
    ledger = read_jsonl(tmp_path / "out" / "ledger.jsonl")
    assert {e["id"]: e["status"] for e in ledger} == {"s": "ok", "e": "filtered"}


def test_completion_order_and_window(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "input": f"q{i}"} for i in range(30)])
    pipeline = make_pipeline(
        tmp_path, [{"generate": {"model": "m"}}], output={"order": "completion"}, input={"start": 5, "limit": 10}
    )
    summary = run(pipeline, ScriptedBackend())
    ids = sorted(int(r["id"]) for r in read_jsonl(tmp_path / "out" / "data.jsonl"))
    assert ids == list(range(5, 15)) and summary.records_in == 10


def test_unknown_model_fails_before_reading(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"input": "q"}])
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        run(make_pipeline(tmp_path, [{"generate": {"model": "nope"}}]), ScriptedBackend())
    assert not (tmp_path / "out" / "data.jsonl").exists()


def test_pipeline_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"steps\[0\].*unknown setting"):
        make_pipeline(tmp_path, [{"generate": {"model": "m", "temperature": 1}}])
    with pytest.raises(ConfigError, match="unknown step kind 'nope'"):
        make_pipeline(tmp_path, [{"nope": {}}])
    with pytest.raises(ConfigError, match="run.concurrency"):
        make_pipeline(tmp_path, [{"generate": {"model": "m"}}], run={"concurrency": 0})


def test_dedup_step_remembers_done_records_after_resume(tmp_path):
    records = [
        {"id": "a", "input": "the quick brown fox jumps over the lazy dog today"},
        {"id": "b", "input": "completely different words about cooking rice"},
        {"id": "c", "input": "the quick brown fox jumps over the lazy dog today"},
    ]
    write_jsonl(tmp_path / "in.jsonl", records)
    steps = [{"minhash_dedup": {"threshold": 0.7}}, {"generate": {"model": "m"}}]
    run(make_pipeline(tmp_path, steps, input={"limit": 2}), ScriptedBackend())
    summary = run(make_pipeline(tmp_path, steps), ScriptedBackend())
    assert summary.skipped == 2 and summary.filtered == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "data.jsonl")] == ["a", "b"]


def test_missing_api_key_stops_before_any_record(tmp_path, monkeypatch):
    monkeypatch.delenv("JOYFORGE_TEST_KEY", raising=False)
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "k": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "JOYFORGE_TEST_KEY"}
            }
        },
        "test",
    )
    write_jsonl(tmp_path / "in.jsonl", [{"input": "q"}])
    pipeline = make_pipeline(tmp_path, [{"generate": {"model": "k"}}])
    gateway = Gateway(registry, backends={"k": ScriptedBackend()})
    with pytest.raises(ConfigError, match="JOYFORGE_TEST_KEY is not set"):
        LocalExecutor(pipeline, registry=registry, gateway=gateway).run_sync()
    assert not (tmp_path / "out" / "ledger.jsonl").exists()
