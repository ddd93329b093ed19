"""examples/evol.yaml end to end on the embedded model: three of the seed records (CI time; the example
itself runs all ten), two rounds, then the
per-round report (mean difficulty and Vendi score), printed so a run shows whether evolution made the
set harder and more diverse. Run with ``-m slow -s`` to see the table."""

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.harness import assert_run_finished

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROUND_KEYS = {
    "l_depth_instructions",
    "l_breadth_instructions",
    "l_eliminated_instructions",
    "wizard_round_cnt",
    "sampled",
    "selected",
    "errors",
}
REASONS = {
    "no_information_gain",
    "equal_check_failed",
    "leak",
    "duplicate",
    "unanswerable",
    "answer_failed",
    "judge_failed",
    "empty",
}


def test_evol_example_on_seed_records(tmp_path: Path):
    from click.testing import CliRunner

    from joydataforge.cli import cli
    from joydataforge.methods.evol_instruct.report import evol_report, format_report

    out = tmp_path / "evol"
    result = CliRunner().invoke(
        cli, ["run", "examples/evol.yaml", "-o", str(out), "--limit", "3", "--no-progress"], catch_exceptions=False
    )
    assert_run_finished(result, out)
    records = [json.loads(x) for x in (out / "data.jsonl").read_text("utf-8").splitlines()]
    failures_path = out / "failures.jsonl"
    failures = [json.loads(x) for x in failures_path.read_text("utf-8").splitlines()] if failures_path.exists() else []
    assert len(records) + len(failures) == 3
    for failure in failures:
        assert failure["error"] and failure["record"] is not None
    for record in records:
        assert record["wizard_root"]["instruction"] == (record.get("rewrite_query") or record["input"]).strip()
        assert 1 <= record["wizard_round_cnt"] == len(record["wizard_llm_querys"]) <= 2
        for number, entry in enumerate(record["wizard_llm_querys"], start=1):
            assert set(entry) == ROUND_KEYS and entry["wizard_round_cnt"] == number
            for candidate in entry["l_depth_instructions"] + entry["l_breadth_instructions"]:
                assert candidate["valid"] in (-2, -1, 1) and 0 <= candidate["score"] <= 100
                assert candidate["valid"] == 1 or candidate["score"] <= 30
                assert candidate["operation"] in ("redirect", "breadth") and candidate["round"] == number
            for dropped in entry["l_eliminated_instructions"]:
                assert dropped["eliminated"] in REASONS and dropped["detail"]
            judged_valid = [
                c for c in entry["l_depth_instructions"] + entry["l_breadth_instructions"] if c["valid"] == 1
            ]
            assert len(entry["selected"]) == (max(1, int(len(judged_valid) * 0.2)) if judged_valid else 0)

    try:
        from joydataforge.evaluate.embeddings import make_embedder

        embedder = make_embedder()
    except ImportError:  # the offline embedder is an optional extra; without it the Vendi column stays empty
        embedder = None
    stats = asyncio.run(evol_report(records, embedder))
    print("\n" + format_report(stats))
    assert stats[0].round == 0 and stats[0].generated == len(records)
    assert sum(s.generated for s in stats[1:]) > 0
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    counters = summary["steps"]["evol_instruct"]
    assert counters["children"] == sum(s.generated for s in stats[1:])
