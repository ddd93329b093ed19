"""examples/dpo.yaml end to end on the embedded model (slow), and DPO output loaded with the `datasets`
library the way TRL's DPOTrainer reads it: columns ``prompt``/``chosen``/``rejected``, either all strings
(standard) or all lists of ``{role, content}`` messages (conversational)."""

import json
import shutil
from pathlib import Path

import pytest

from tests.support.harness import assert_run_finished
from tests.test_dpo_step import ScriptedReward
from tests.test_dpo_step import run as run_scripted

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_like_trl(path: Path):
    """What TRL does with a preference JSONL: ``load_dataset("json")`` and read the three columns."""
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed (pip install datasets)")
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(dataset.column_names)
    return dataset


def is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and set(m) >= {"role", "content"} for m in value)
    )


def check_trl_rows(dataset) -> str:
    """Every row one type; conversational rows end the prompt with the user and hold one assistant turn."""
    kinds = set()
    for row in dataset:
        if isinstance(row["prompt"], str):
            kinds.add("standard")
            assert isinstance(row["chosen"], str) and isinstance(row["rejected"], str)
        else:
            kinds.add("conversational")
            assert is_messages(row["prompt"]) and row["prompt"][-1]["role"] == "user"
            for side in ("chosen", "rejected"):
                assert is_messages(row[side]) and [m["role"] for m in row[side]] == ["assistant"]
        assert row["score_chosen"] > row["score_rejected"]
    assert len(kinds) == 1, kinds
    return kinds.pop()


@pytest.mark.parametrize("trl_format", ["standard", "conversational"])
def test_scripted_pairs_load_with_datasets(tmp_path, trl_format):
    records = [
        {"id": f"r{i}", "input": f"question {i}", "response_candidates": [f"good {i}", f"bad {i}", f"ok {i}"]}
        for i in range(4)
    ]
    if trl_format == "conversational":
        records[1]["history"] = [["earlier question", "earlier answer"]]
    table = {
        text: score for i in range(4) for text, score in ((f"good {i}", 2.0), (f"bad {i}", -1.0), (f"ok {i}", 0.5))
    }
    _, out, failures = run_scripted(
        tmp_path,
        records,
        {"judges": ["rm"], "scorer": "reward", "rule": "all_pairs", "trl_format": trl_format},
        {"rm": ScriptedReward(table)},
    )
    assert not failures and len(out) == 12
    dataset = load_like_trl(tmp_path / "out" / "data.jsonl")
    assert len(dataset) == 12 and check_trl_rows(dataset) == trl_format
    if trl_format == "conversational":
        assert [m["role"] for m in dataset[3]["prompt"]] == ["user", "assistant", "user"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dpo_example_on_the_embedded_model(tmp_path):
    from click.testing import CliRunner

    from joydataforge.cli import cli

    work = tmp_path / "example"
    work.mkdir()
    for name in ("dpo.yaml", "dpo_models.yaml", "wizard_seed.jsonl"):
        shutil.copy(EXAMPLES / name, work / name)  # a copy: its call cache starts empty, real model calls
    out = tmp_path / "out"
    limit = 2
    result = CliRunner().invoke(
        cli,
        ["run", str(work / "dpo.yaml"), "-o", str(out), "--limit", str(limit), "--no-progress"],
        catch_exceptions=False,
    )
    assert_run_finished(result, out)

    def lines(name: str) -> list[dict]:
        path = out / name
        return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []

    pairs, failures = lines("data.jsonl"), lines("failures.jsonl")
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    stats = summary["steps"]["dpo"]
    # Every input is accounted for: a pair (best_vs_worst makes at most one), dropped with a reason, or failed.
    assert stats["pairs_made"] == len(pairs)
    assert len(pairs) + stats.get("records_without_pair", 0) + len(failures) == limit
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped:"))
    assert dropped == stats.get("records_without_pair", 0)
    assert stats["generate_calls"] == 4 * limit
    for failure in failures:
        assert failure["error"] and failure["record"] is not None
    # Two judges per usable candidate; every judge call either succeeded or is counted as a failure.
    assert stats["judge_calls"] == 2 * (
        stats["candidates"]
        - stats.get("candidates_failed", 0)
        - stats.get("candidates_blank", 0)
        - stats.get("candidates_duplicate", 0)
    )
    if stats.get("agreement:judge_pairs_compared"):
        assert 0.0 <= stats["judge_agreement"] <= 1.0
    for pair in pairs:
        assert set(pair) >= {
            "id",
            "input",
            "tag",
            "prompt",
            "chosen",
            "rejected",
            "score_chosen",
            "score_rejected",
            "rationale_chosen",
            "rationale_rejected",
            "source_chosen",
            "source_rejected",
            "length_diff",
        }
        assert pair["score_chosen"] - pair["score_rejected"] >= 1.0  # the example's margin
        for side in ("source_chosen", "source_rejected"):
            source = pair[side]
            assert source["origin"] == "generated" and source["model"] == "smollm2-answer"
            assert source["params"]["temperature"] in (0.3, 0.9) and source["sample"] in (0, 1)
        for judgement in pair["rationale_chosen"]:
            assert "error" in judgement or set(judgement["aspects"]) == {"helpfulness", "correctness"}
    if pairs:
        dataset = load_like_trl(out / "data.jsonl")
        assert len(dataset) == len(pairs) and check_trl_rows(dataset) == "conversational"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dpo_pairwise_example_reports_order_agreement(tmp_path):
    from click.testing import CliRunner

    from joydataforge.cli import cli

    work = tmp_path / "example"
    work.mkdir()
    for name in ("dpo_pairwise.yaml", "dpo_models.yaml", "wizard_seed.jsonl"):
        shutil.copy(EXAMPLES / name, work / name)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["run", str(work / "dpo_pairwise.yaml"), "-o", str(out), "--limit", "1", "--no-progress"],
        catch_exceptions=False,
    )
    assert_run_finished(result, out)
    stats = json.loads((out / "summary.json").read_text("utf-8"))["steps"]["dpo"]
    # 4 candidates -> 6 pairs, each asked in both orders by one judge.
    assert stats["judge_calls"] == 12
    compared = stats.get("agreement:orders_compared", 0)  # pairs whose two orders both answered
    assert 6 - stats.get("judge_failures", 0) <= compared <= 6
    if compared:
        assert stats["order_agreement"] == round(stats.get("agreement:orders_consistent", 0) / compared, 4)
    pairs = [json.loads(x) for x in (out / "data.jsonl").read_text("utf-8").splitlines()]
    assert stats.get("pairs_made", 0) == len(pairs)
    for pair in pairs:
        (verdict,) = pair["rationale_chosen"]
        assert verdict["verdict"] != 0 and verdict["ij"]["prefers"] == verdict["ji"]["prefers"]
    if pairs:
        check_trl_rows(load_like_trl(out / "data.jsonl"))
