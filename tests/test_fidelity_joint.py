"""Issue 14, point 5: ``joint`` pick mode no longer shows every record's drafts in drafter order.

A judge favours the candidate shown first: in the issue's run a small model picked draft #0 in 3 of 3
records. The picker here is that judge at its worst, always answering "1". With the default
``pick_order: shuffle`` each record's drafts come in a seeded order of their own (recorded as ``order``), so
its picks spread over the drafters; ``rotate`` shows every draft in every position once and, against this
judge, ends in a recorded tie instead of a winner by position; ``fixed`` keeps the old order.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, run_pipeline, write_jsonl

DRAFTERS = ["a", "b", "c"]
RECORDS = [{"id": f"q{i}", "input": f"question {i}"} for i in range(12)]


def drafter(name: str) -> ScriptedBackend:
    return ScriptedBackend(lambda messages, schema: f"draft {name.upper()}")


def first_shown_judge() -> ScriptedBackend:
    """Always picks candidate 1, whatever it is."""
    return ScriptedBackend(lambda messages, schema: json.dumps({"best": 1, "reason": "first"}))


def shown_drafts(call: dict) -> list[str]:
    """The drafts in the order a pick prompt showed them ("Candidate k:" then the text)."""
    return re.findall(r"Candidate \d+:\n(draft [A-Z])", call["messages"][-1]["content"])


def run_pick(tmp_path: Path, judge: ScriptedBackend, seed: int = 0, **settings) -> list[dict]:
    write_jsonl(tmp_path / "in.jsonl", RECORDS)
    step = {"joint": {"drafters": DRAFTERS, "fuser": "judge", "mode": "pick", "draft_prompt": "en/answer", **settings}}
    backends = {**{name: drafter(name) for name in DRAFTERS}, "judge": judge}
    pipeline = make_pipeline(tmp_path, [step], run={"seed": seed})
    result = run_pipeline(pipeline, backends, registry=registry_of(backends))
    assert result.failures == [] and len(result.data) == len(RECORDS)
    return sorted(result.data, key=lambda r: int(r["id"][1:]))


def test_fixed_order_is_the_old_behaviour_the_first_drafter_always_wins(tmp_path):
    data = run_pick(tmp_path, first_shown_judge(), pick_order="fixed")
    assert {r["joint"]["model"] for r in data} == {"a"}


def test_shuffled_by_default_so_the_picker_is_not_always_shown_draft_0_first(tmp_path):
    judge = first_shown_judge()
    data = run_pick(tmp_path, judge)
    firsts = Counter(r["joint"]["order"][0] for r in data)
    assert len(firsts) > 1 and firsts[0] < len(RECORDS)  # draft #0 is not always first
    assert len({r["joint"]["model"] for r in data}) > 1  # so the first-shown judge no longer always picks "a"
    calls = {re.search(r"User query: (.*)", c["messages"][-1]["content"]).group(1): c for c in judge.calls}
    for record in data:
        order = record["joint"]["order"]
        assert sorted(order) == [0, 1, 2]
        # The recorded order is the order the judge was shown, and `best` is mapped back through it.
        assert shown_drafts(calls[record["input"]]) == [record["drafts"][i]["text"] for i in order]
        assert record["joint"]["best"] == order[0] and record["target"] == record["drafts"][order[0]]["text"]


def test_the_order_is_seeded_per_record(tmp_path):
    first = [r["joint"]["order"] for r in run_pick(tmp_path / "1", first_shown_judge(), seed=0)]
    again = [r["joint"]["order"] for r in run_pick(tmp_path / "2", first_shown_judge(), seed=0)]
    other = [r["joint"]["order"] for r in run_pick(tmp_path / "3", first_shown_judge(), seed=1)]
    assert first == again and first != other


def test_rotate_shows_every_draft_in_every_position_and_a_position_only_judge_ties(tmp_path):
    judge = first_shown_judge()
    data = run_pick(tmp_path, judge, pick_order="rotate")
    assert len(judge.calls) == 3 * len(RECORDS)
    per_prompt = Counter(tuple(shown_drafts(call)) for call in judge.calls)
    for record in data:
        joint = record["joint"]
        shown = [[record["drafts"][i]["text"] for i in rotation["order"]] for rotation in joint["rotations"]]
        for position in range(3):
            assert sorted(order[position] for order in shown) == ["draft A", "draft B", "draft C"]
        assert all(per_prompt[tuple(order)] >= 1 for order in shown)  # these are the prompts the judge saw
        assert joint["picks"] == [1, 1, 1] and joint["tied"] == [0, 1, 2]
        assert joint["best"] in joint["tied"] and record["target"] == record["drafts"][joint["best"]]["text"]
    assert len({r["joint"]["model"] for r in data}) > 1  # the tie is broken by the seeded draw, not by position


def test_rotate_finds_the_draft_a_judge_prefers_wherever_it_is_shown(tmp_path):
    def prefers_b(messages, schema):
        position = shown_drafts({"messages": messages}).index("draft B") + 1
        return json.dumps({"best": position, "reason": "B is right"})

    data = run_pick(tmp_path, ScriptedBackend(prefers_b), pick_order="rotate")
    for record in data:
        assert record["joint"]["model"] == "b" and record["joint"]["picks"] == [0, 3, 0]
        assert "tied" not in record["joint"] and record["target"] == "draft B"
