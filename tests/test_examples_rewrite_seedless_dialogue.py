"""The rewrite, seedless and dialogue example pipelines, end to end on the embedded model.

Small runs (``--limit 1``) of each examples/*.yaml through the real CLI. The 135M model writes poor
text, so these tests check shapes and bookkeeping, not quality: every input record ends as outputs of
the documented shape or as a failure with its reason, ids and parent links hold, counters add up. The
dialogue run continues through ``dialogue-split`` and the binary fine pass when the model managed to
label the dialogue.
"""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.harness import assert_run_finished

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
CDSS_LABELS = {"BMI", "孕期孕周", "药品", "其他"}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


DATA = {"rewrite": "wizard_seed.jsonl", "seedless": "topics.yaml", "dialogue": "cdss_dialogues.jsonl"}


def run_example(name: str, out: Path, limit: int) -> tuple[list[dict], list[dict], dict]:
    """Run a copy of the example beside its data, so its call cache starts empty: real model calls."""
    from joydataforge.cli import cli

    work = out.parent / f"{name}-example"
    work.mkdir()
    for file in (f"{name}.yaml", "models.yaml", DATA[name]):
        shutil.copy(ROOT / "examples" / file, work / file)
    result = CliRunner().invoke(
        cli,
        ["run", str(work / f"{name}.yaml"), "-o", str(out), "--limit", str(limit), "--no-progress"],
        catch_exceptions=False,
    )
    assert_run_finished(result, out)
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert sum(m["calls"] for m in summary["models"].values()) > 0
    assert sum(m.get("cache_hits", 0) for m in summary["models"].values()) == 0
    assert summary["records_in"] == limit
    assert summary["inputs_done"] + summary["failed"] + summary["filtered"] == limit
    failures = lines(out / "failures.jsonl")
    for failure in failures:
        assert failure["error"] and failure["record"] is not None and failure["step"]
    return lines(out / "data.jsonl"), failures, summary


def test_rewrite_example(tmp_path):
    records, failures, summary = run_example("rewrite", tmp_path / "rewrite", limit=1)
    source = json.loads((ROOT / "examples" / "wizard_seed.jsonl").read_text("utf-8").splitlines()[0])
    stats = summary["steps"]["rewrite"]
    assert stats.get("calls", 0) <= 1  # one call per record; counted when its reply was valid
    if failures:  # no usable case, or an empty answer to one of them: the whole record is a failure
        assert records == [] and failures[0]["step"] in {"rewrite", "generate"}
    else:
        assert 1 <= len(records) == stats["cases_out"]
    for k, record in enumerate(records):
        assert record["parent_id"] == source["id"] and record["id"] == f"{source['id']}:rw{k}"
        assert record["rewrite_type"] in {"问句药名替换", "表达润色"}
        assert isinstance(record["input"], str) and record["input"].strip()
        assert "rewrite_answer" not in record and record["history"] == source["history"]
        assert isinstance(record["target"], str)  # answered by the generate step
        assert [c["step"] for c in record["_meta"]["calls"]] == ["rewrite", "generate"]
    assert len(records) <= 2


def test_seedless_example(tmp_path):
    records, failures, summary = run_example("seedless", tmp_path / "seedless", limit=1)
    stats = summary["steps"]["seedless"]
    assert stats["calls"] <= 6
    subtopics = {"baking bread", "knife skills", "sauces", "meal prep", "grilling"}
    personas = {"a student", "a busy parent", "a nurse", "a software engineer"}
    assert len(records) <= 3  # n_per_topic
    for k, record in enumerate(records):
        assert record["id"] == f"cooking:g{k}" and record["topic"] == "home cooking"
        assert set(record["subtopics"]) <= subtopics and len(record["subtopics"]) == 1
        assert record["persona"] in personas and record["difficulty"] in {"simple", "detailed", "tricky"}
        assert record["input"].strip() and isinstance(record["target"], str)
    assert len({r["input"] for r in records}) == len(records)  # no exact duplicates survive
    if not failures:
        assert stats["generated"] == len(records)


def test_dialogue_example_split_and_binary_pass(tmp_path):
    records, failures, summary = run_example("dialogue", tmp_path / "dialogue", limit=1)
    source = json.loads((ROOT / "examples" / "cdss_dialogues.jsonl").read_text("utf-8").splitlines()[0])
    user_turns = [line.split(":", 1)[1].strip() for line in source["dialogs"].splitlines() if line.startswith("用户:")]
    stats = summary["steps"]["dialogue_intent"]
    if failures:  # the 135M model could not line its labels up with the turns: recorded, with the raw reply
        assert records == [] and "attempt" in failures[0]["error"]
        assert stats["attempts"] == 2
        pytest.skip("the embedded model's labelling did not match the turns (recorded as a failure)")
    assert len(records) == len(user_turns) and [r["input"] for r in records] == user_turns
    for t, record in enumerate(records, start=1):
        assert record["id"] == f"{source['diaglog_id']}:{t}" and record["turn_index"] == t
        assert record["label"] in CDSS_LABELS and isinstance(record["reason"], str)
        assert record["time"] == source["time"]
    assert records[0]["history"] == ""

    from joydataforge.cli.dialogue import dialogue_split_command

    split = tmp_path / "split"
    result = CliRunner().invoke(
        dialogue_split_command,
        [
            str(tmp_path / "dialogue" / "data.jsonl"),
            "-o",
            str(split),
            "--test-size",
            "1",
            "--per-record-cap",
            "3",
            "--seed",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    test = lines(split / "test.jsonl")
    assert len(test) == len({r["label"] for r in records})  # one per label present
    assert (split / "test.xlsx").exists()

    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.local import LocalExecutor

    pipeline = Pipeline.from_yaml(
        ROOT / "examples" / "dialogue_binary.yaml",
        overrides={
            "input.path": str(split / "test.jsonl"),
            "run.cache": None,
            "output.dir": str(tmp_path / "binary"),
            "run.progress": False,
        },
    )
    binary = LocalExecutor(pipeline).run_sync()
    assert binary.records_in == len(test)
    checked = [r for r in lines(tmp_path / "binary" / "data.jsonl") if "binary_match" in r]
    assert len(checked) == binary.steps["intent_binary"].get("checked", 0)
    for record in checked:
        assert isinstance(record["binary_match"], bool)
        if not record["binary_match"]:
            assert record["label"] == "其他" and record["coarse_label"] in CDSS_LABELS - {"其他"}
