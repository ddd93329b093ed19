"""``joyforge plan --pilot N``: which records the pilot runs, and how the plan counts and extrapolates them.

The pilot draws one record from each of N equal runs of consecutive records (seeded), runs them with the ids
the run gives them (repeated placeholder ids included), counts their requests as measured and extrapolates only
the rest, with a ~95% prediction interval from the spread between the pilot's records.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.plan import _copy_as_input, _prediction_halfwidth, make_plan, pilot_positions, run_pilot
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, write_jsonl
from tests.test_plan import distinct, run_metered


@pytest.mark.parametrize(("total", "count"), [(100, 5), (10, 5), (7, 3), (6, 6), (3, 5), (1000, 7)])
def test_pilot_positions_take_one_from_each_equal_part_of_the_window(total, count):
    positions = pilot_positions(total, count, seed=0)
    if count >= total:
        assert positions == list(range(total))
        return
    assert len(positions) == count
    for k, position in enumerate(positions):
        assert k * total // count <= position < (k + 1) * total // count
    assert pilot_positions(total, count, seed=0) == positions  # seeded: a second pilot picks the same ones


def test_pilot_positions_differ_by_seed():
    assert len({tuple(pilot_positions(1000, 5, seed)) for seed in range(5)}) > 1


def test_prediction_interval_from_the_pilots_spread():
    # A rate of 1/2 measured on 4 records (residuals +-1/2), 4 more records to go: t(3) s sqrt(4 + 16/4).
    s = math.sqrt(4 * 0.25 / 3)
    assert _prediction_halfwidth([0, 1, 0, 1], [1, 1, 1, 1], 4) == pytest.approx(3.182 * s * math.sqrt(8))
    assert _prediction_halfwidth([3, 3, 3], [1, 1, 1], 10) == 0  # no spread: the rest is as measured
    assert _prediction_halfwidth([2, 4], [1, 2], 5) == 0  # measured in proportion to what was planned
    assert _prediction_halfwidth([3], [1], 10) is None  # one record: no spread to go by


def test_records_that_do_not_survive_json_are_not_copied(tmp_path):
    assert _copy_as_input([("a", {"input": "x"})], tmp_path / "ok.jsonl")
    assert json.loads((tmp_path / "ok.jsonl").read_text()) == {"input": "x", "_joyforge_pilot_id": "a"}
    assert not _copy_as_input([("a", {"input": "x", "when": datetime.date(2024, 1, 1)})], tmp_path / "no.jsonl")
    assert not _copy_as_input([("a", {"input": "x", "pair": (1, 2)})], tmp_path / "no.jsonl")


def gate_first_half(messages, schema):
    """Votes x (the cascade's gate label) for the records of the window's first half, y for the rest."""
    text = json.dumps(messages, ensure_ascii=False)
    return json.dumps({"label": "x" if "early" in text else "y", "reason": "r"})


STEPS = [
    {"vote": {"models": ["a", "b"], "prompt": "vote_label", "options": {"labels": ["x", "y"]}}},
    {"cascade": {"model": "c", "gate_labels": ["x"], "options": {"labels": ["x", "y"]}}},
]


def pipeline_of(tmp_path: Path, records: list[dict], steps: list = STEPS) -> Pipeline:
    write_jsonl(tmp_path / "in.jsonl", records)
    return make_pipeline(tmp_path, steps, run={"cache": str(tmp_path / "cache.sqlite")})


def served(reply=gate_first_half) -> dict[str, ScriptedBackend]:
    return {name: ScriptedBackend(reply) for name in ("a", "b", "c")}


def test_the_pilot_runs_records_spread_over_the_window_with_their_run_ids(tmp_path):
    # Placeholder ids, as the seed files have: the run calls them xxxxxx, xxxxxx#2, ... in input order.
    records = [{"id": "xxxxxx", "input": f"{'early' if i < 3 else 'late'} question {i}"} for i in range(6)]
    pipeline = pipeline_of(tmp_path, records)
    result = asyncio.run(run_pilot(pipeline, distinct(["a", "b", "c"]), 3, tmp_path / "pilot", backends=served()))
    assert result.spread and result.records == 3
    assert result.meter.records() == set(result.ids)
    run_ids = ["xxxxxx"] + [f"xxxxxx#{k}" for k in range(2, 7)]
    assert [run_ids.index(i) // 2 for i in result.ids] == [0, 1, 2]  # one of each third of the window


def test_the_pilot_is_counted_exactly_and_only_the_rest_extrapolated(tmp_path):
    """The first half of the window is gated, the second not: a pilot of the first records would say every
    record is; one spread over the window measures half, and the plan's calls are the run's."""
    records = [{"id": f"r{i}", "input": f"{'early' if i < 4 else 'late'} question {i}"} for i in range(8)]
    registry = distinct(["a", "b", "c"])
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, records), registry, pilot=2, backends=served()))
    assert plan.pilot == 2 and plan.records == 8
    assert any(note.startswith("pilot: 2 record(s), one drawn from each") for note in plan.notes)
    cascade = next(line for line in plan.lines if line.step == "cascade")
    assert cascade.calls == pytest.approx(4)  # 1 of the pilot's 2, and half of the other 6
    assert cascade.calls_range[0] < 4 < cascade.calls_range[1]  # 0/1 per record: a real spread

    meter = run_metered(pipeline_of(tmp_path, records), registry, served())
    assert meter.totals[("cascade", "c")].requests == 4
    # Every request the pilot made is a cache hit of the run, also for the pilot's records in mid-window.
    assert sum(t.cached for t in meter.totals.values()) == pytest.approx(plan.totals()["cached_calls"])
    assert plan.totals()["calls"] == pytest.approx(sum(t.requests for t in meter.totals.values()))


def test_a_pilot_of_the_whole_window_is_the_run(tmp_path):
    records = [{"id": f"r{i}", "input": f"{'early' if i < 2 else 'late'} question {i}"} for i in range(4)]
    registry = distinct(["a", "b", "c"])
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, records), registry, pilot=10, backends=served()))
    assert plan.pilot == 4 and plan.records == 4
    meter = run_metered(pipeline_of(tmp_path, records), registry, served())
    for line in plan.lines:
        tally = meter.totals[(line.step, line.model)]
        assert line.calls == tally.requests and line.calls_range == (line.calls, line.calls)
        assert line.prompt_tokens == tally.prompt_tokens
    assert plan.totals()["paid_calls"] == 0


def test_nothing_is_extrapolated_for_dialogues_the_pilot_labelled_already(tmp_path):
    """One call per dialogue: a pilot that met every dialogue leaves the rest of the window nothing to pay."""
    from tests.test_plan import dialogue_reply

    dialogs = {"d1": "用户: 你好\n助手: 您好\n用户: 我头疼", "d2": "用户: 在吗\n助手: 在的\n用户: 药怎么吃"}
    records = [{"did": did, "dialogs": dialogs[did], "n": k} for did in ("d1", "d2") for k in range(3)]
    steps = [{"dialogue_intent": {"model": "m", "labels": ["a", "b"], "dialog_id_field": "did"}}]
    registry = distinct(["m"])
    plan = asyncio.run(
        make_plan(
            pipeline_of(tmp_path, records, steps), registry, pilot=2, backends={"m": ScriptedBackend(dialogue_reply)}
        )
    )
    meter = run_metered(pipeline_of(tmp_path, records, steps), registry, {"m": ScriptedBackend(dialogue_reply)})
    (line,) = plan.lines
    assert line.calls == meter.totals[("dialogue_intent", "m")].requests == 2  # one per dialogue, both by the pilot
    assert line.calls_range == (2, 2) and line.cached_calls == 2
