"""The vote, vote-then-cascade, joint and critique example pipelines, end to end on the embedded model.

Small runs (``--limit``) of each examples/*.yaml through the real CLI: every input record must come out
either as a record of the documented shape or as a failure with its reason; the step counters in
summary.json must add up (gated + passed = records that reached the cascade, one call per gated record).
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.support.harness import assert_run_finished

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CDSS_LABELS = {"BMI", "孕期孕周", "药品", "其他"}
VOTERS = ["smollm2-cool", "smollm2-warm", "smollm2-hot"]


def run_example(name: str, out: Path, limit: int) -> tuple[list[dict], list[dict], dict]:
    """Run a copy of the example beside its data, so its call cache starts empty: real model calls."""
    from click.testing import CliRunner

    from joydataforge.cli import cli

    examples = Path(__file__).resolve().parent.parent / "examples"
    work = out.parent / f"{name}-example"
    work.mkdir()
    for file in (f"{name}.yaml", "models.yaml", "wizard_seed.jsonl"):
        shutil.copy(examples / file, work / file)
    result = CliRunner().invoke(
        cli,
        ["run", str(work / f"{name}.yaml"), "-o", str(out), "--limit", str(limit), "--no-progress"],
        catch_exceptions=False,
    )
    assert_run_finished(result, out)

    def lines(file: str) -> list[dict]:
        path = out / file
        return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []

    records, failures = lines("data.jsonl"), lines("failures.jsonl")
    assert len(records) + len(failures) == limit
    for failure in failures:
        assert failure["error"] and failure["record"] is not None
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert sum(m["calls"] for m in summary["models"].values()) > 0
    assert sum(m.get("cache_hits", 0) for m in summary["models"].values()) == 0
    return records, failures, summary


def check_vote(record: dict) -> None:
    vote, votes = record["vote"], record["votes"]
    assert set(votes) == set(VOTERS)
    assert vote["outcome"] in {"majority", "tie", "no_quorum"}
    assert (vote["label"] is not None) == (vote["outcome"] == "majority")
    assert vote["valid"] + len(vote["failed_voters"]) == 3
    for model, answer in votes.items():
        if model in vote["failed_voters"]:
            assert "error" in answer
        else:
            assert answer["label"] in CDSS_LABELS and record[f"{model}_label"] == answer["label"]


def test_vote_example(tmp_path):
    records, _, summary = run_example("vote", tmp_path / "vote", limit=2)
    for record in records:
        check_vote(record)
        # The original's values: the majority label and "voted", or "" and "" without a majority.
        assert record["label_vote"] == (record["vote"]["label"] or "")
        assert record["reason_vote"] == ("voted" if record["vote"]["label"] else "")
    outcomes = sum(v for k, v in summary["steps"]["vote"].items() if k.startswith("outcome:"))
    assert outcomes == len(records)


def test_vote_cascade_example(tmp_path):
    records, failures, summary = run_example("vote_cascade", tmp_path / "cascade", limit=2)
    cascade = summary["steps"].get("cascade", {})
    for record in records:
        check_vote(record)
        if record["cascade"]["gated"]:
            assert record["label_source"] == "cascade" and record["label"] in CDSS_LABELS
        else:
            assert record["label_source"] == "vote" and record["label"] == record["vote"]["label"]
            assert record["vote"]["label"] != "药品"
    assert cascade.get("cascade_calls", 0) == cascade.get("gated", 0)
    reached = len(records) + sum(1 for f in failures if f["step"] == "cascade")
    assert cascade.get("gated", 0) + cascade.get("passed", 0) == reached


def test_joint_example(tmp_path):
    records, failures, summary = run_example("joint", tmp_path / "joint", limit=1)
    for record in records:
        assert [d["model"] for d in record["drafts"]] == VOTERS
        assert isinstance(record["target"], str) and record["target"].strip()
        assert record["joint"]["mode"] == "fuse"
        pick = record["pick"]
        assert pick["mode"] == "pick" and record["picked_target"] == record["pick_drafts"][pick["best"]]["text"]
    for failure in failures:
        assert failure["step"] in {"joint", "pick"}


def test_critique_example(tmp_path):
    records, _, summary = run_example("critique", tmp_path / "critique", limit=1)
    for record in records:
        rounds = record["critique_rounds"]
        assert 1 <= len(rounds) <= 2 and [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
        assert record["critique"]["stopped"] in {"approved", "max_rounds"}
        if record["critique"]["approved"]:
            assert rounds[-1]["revision"] is None and record["target"] == rounds[-1]["answer"]
        else:
            assert record["target"] == rounds[-1]["revision"]
        for entry in rounds:
            assert entry["critique"]["verdict"] in {"approve", "revise"}
