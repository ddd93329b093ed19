"""Issue 14, point 6: the original's fourth history shape, ``[{round, user_query, response}]``
(seed-data ``datas/agent_intent/examples.json``), is read wherever history is read.

It used to be refused before any call ("history[0] must have string 'role' and 'content'"). Now a round is a
user message and, when its response is not empty, an assistant message, in list order, exactly like a
``[user, assistant]`` pair; the input check, the prompts, exports and ``record_text`` all see the same
messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from joydataforge.records import field_problem, history_problem, normalize_history, record_text
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, run_pipeline, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "eval" / "agent_intent.jsonl"  # the seed's records, history unchanged
SHARED = ROOT.parent / "shared" / "seed-data" / "datas" / "agent_intent" / "examples.json"


def seed_records() -> list[dict]:
    """The agent_intent records: the shared seed file when it is beside the checkout, else the fixture copy."""
    path = SHARED if SHARED.exists() else FIXTURE
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_the_fixture_holds_the_seed_histories():
    if not SHARED.exists():
        pytest.skip("the shared seed data is not beside this checkout")
    shared = [json.loads(line) for line in SHARED.read_text("utf-8").splitlines()]
    fixture = [json.loads(line) for line in FIXTURE.read_text("utf-8").splitlines()]
    assert [r["history"] for r in fixture] == [r["history"] for r in shared]


def test_every_seed_history_becomes_alternating_messages():
    records = seed_records()
    with_rounds = [r for r in records if r["history"]]
    assert len(with_rounds) == 5 and all(
        set(r["history"][0]) == {"round", "user_query", "response"} for r in with_rounds
    )
    for record in with_rounds:
        messages = normalize_history(record["history"])
        expected = [
            message
            for round_ in record["history"]
            for message in (
                {"role": "user", "content": round_["user_query"]},
                {"role": "assistant", "content": round_["response"]},
            )
        ]
        assert messages == expected
        # The same dialogue written as pairs is the same history.
        pairs = [[r["user_query"], r["response"]] for r in record["history"]]
        assert normalize_history(pairs) == messages
        assert record_text(record, ["query", "history"]) == record_text(
            {**record, "history": pairs}, ["query", "history"]
        )


def test_the_input_check_accepts_the_shape_and_names_what_is_wrong_in_a_bad_one():
    for record in seed_records():
        assert history_problem(record["history"]) is None and field_problem("history", record["history"]) is None
    assert normalize_history([{"round": 1, "user_query": "q", "response": ""}]) == [{"role": "user", "content": "q"}]
    assert "'user_query' and a string 'response'" in history_problem([{"round": 1, "user_query": 3, "response": "a"}])
    assert "'round' must be an integer" in history_problem([{"round": "1", "user_query": "q", "response": "a"}])
    assert "or 'user_query' and 'response'" in history_problem([{"role": "user"}])


def test_a_pipeline_reads_the_seed_records_with_their_rounds(tmp_path):
    """Through the executor (typed-input check, prompt, model): every record is answered, none is bad input,
    and the model sees each round as a user and an assistant message."""
    records = [{"id": r["id"], "input": r["query"], "history": r["history"]} for r in seed_records()]
    write_jsonl(tmp_path / "in.jsonl", records)
    backend = ScriptedBackend(lambda messages, schema: f"answer after {len(messages)} messages")
    pipeline = make_pipeline(tmp_path, [{"generate": {"model": "m", "prompt": "zh/answer"}}])
    result = run_pipeline(pipeline, {"m": backend}, registry=registry_of(["m"]))
    assert result.failures == [] and result.summary.bad_input == 0 and len(result.data) == len(records)
    by_query = {call["messages"][-1]["content"]: call["messages"] for call in backend.calls}
    for record in records:
        sent = by_query[record["input"]]
        history = [m for m in sent[:-1] if m["role"] != "system"]
        assert history == normalize_history(record["history"])
