"""Generation without seed data: per-topic counts, seeded diversity controls, dedup and top-up calls."""

import itertools
import json
import re
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.seedless.step import NearDuplicateIndex, Seedless
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import read_jsonl, registry_of, run_pipeline, write_jsonl

REGISTRY = registry_of(["m"], json_retries=0)

WORDS = [
    "apple",
    "river",
    "engine",
    "violin",
    "glacier",
    "pepper",
    "market",
    "comet",
    "ladder",
    "tunnel",
    "forest",
    "mirror",
    "candle",
    "harbor",
    "puzzle",
    "saddle",
    "velvet",
    "walnut",
    "zephyr",
    "quartz",
]


def fresh_questions():
    """Replies with distinct questions (no shared word 3-grams), as many as the schema allows."""
    counter = itertools.count()

    def reply(messages, schema):
        count = schema["properties"]["records"]["maxItems"]
        items = []
        for _ in range(count):
            k = next(counter)
            items.append(
                {
                    "input": f"{WORDS[k % 20]} {WORDS[(k * 7 + 3) % 20]} question number {k} about {WORDS[(k * 3 + 1) % 20]}?"
                }
            )
        return json.dumps({"records": items})

    return reply


def run_step(tmp_path: Path, topics, step: Seedless, reply, seed: int = 0, concurrency: int = 4, out: str = "out"):
    write_jsonl(tmp_path / "topics.jsonl", topics)
    pipeline = Pipeline(
        input={"path": str(tmp_path / "topics.jsonl")},
        steps=[step],
        output={"dir": str(tmp_path / out)},
        run={"cache": None, "progress": False, "concurrency": concurrency, "seed": seed},
    )
    backend = ScriptedBackend(reply)
    summary = run_pipeline(pipeline, {"m": backend}, registry=REGISTRY).summary
    return summary, backend, read_jsonl(tmp_path / out / "data.jsonl"), read_jsonl(tmp_path / out / "failures.jsonl")


def prompt_controls(messages) -> dict:
    text = messages[-1]["content"]
    found = {}
    for key, pattern in (
        ("topic", r"Topic: (.*)"),
        ("focus", r"Focus on: (.*)"),
        ("persona", r"Written by: (.*)"),
        ("difficulty", r"Difficulty: (.*)"),
    ):
        match = re.search(pattern, text)
        found[key] = match.group(1) if match else None
    return found


TOPICS = [
    {"id": "cook", "topic": "cooking", "subtopics": ["baking", "grilling", "knife skills", "sauces"]},
    {"id": "tax", "topic": "personal taxes", "subtopics": "deductions | filing dates | refunds", "n": 2},
    {"id": "none", "topic": "nothing", "n": 0},
]


def test_n_records_per_topic_with_ids_controls_and_call_counts(tmp_path):
    step = Seedless(
        "m",
        "en/seedless",
        n_per_topic=5,
        per_call=2,
        personas=["student", "nurse", "retiree"],
        difficulties=["easy", "hard"],
    )
    summary, backend, out, failures = run_step(tmp_path, TOPICS, step, fresh_questions())
    assert failures == []
    assert [r["id"] for r in out] == [f"cook:g{i}" for i in range(5)] + ["tax:g0", "tax:g1"]
    assert summary.filtered == 1 and step.counters["empty_topics"] == 1  # n: 0
    assert len(backend.calls) == 3 + 1  # ceil(5/2) for cooking, one call of 2 for taxes
    asked = sorted(c["schema"]["properties"]["records"]["maxItems"] for c in backend.calls)
    assert asked == [1, 2, 2, 2]  # the last cooking call asks for the one record still missing
    for record in out:
        assert record["persona"] in {"student", "nurse", "retiree"} and record["difficulty"] in {"easy", "hard"}
        assert len(record["subtopics"]) == 1
    assert {s for r in out if r["topic"] == "personal taxes" for s in r["subtopics"]} <= {
        "deductions",
        "filing dates",
        "refunds",
    }
    assert "subtopics" in out[0] and "n" not in out[5] and out[0]["_meta"]["source_id"] == "cook"
    for call in backend.calls:
        controls = prompt_controls(call["messages"])
        assert controls["persona"] in {"student", "nurse", "retiree"} and controls["difficulty"] in {"easy", "hard"}


def test_controls_are_seeded_per_topic_and_change_with_the_seed(tmp_path):
    def controls(seed: int, out: str):
        step = Seedless(
            "m",
            "en/seedless",
            n_per_topic=6,
            personas=[f"p{i}" for i in range(10)],
            difficulties=["easy", "medium", "hard"],
            subtopics_per_call=2,
        )
        _, backend, records, _ = run_step(tmp_path, TOPICS[:1], step, fresh_questions(), seed=seed, out=out)
        return [prompt_controls(c["messages"]) for c in backend.calls], [
            (r["persona"], r["difficulty"], tuple(r["subtopics"])) for r in records
        ]

    first, records_first = controls(0, "a")
    again, records_again = controls(0, "b")
    other, _ = controls(1, "c")
    assert sorted(map(str, first)) == sorted(map(str, again)) and records_first == records_again
    assert sorted(map(str, first)) != sorted(map(str, other))
    assert len({c["persona"] for c in first}) > 1  # drawn per call, not once per topic
    assert all(len(c["focus"].split(", ")) == 2 for c in first)  # two sub-topics per call
    # A record's controls are those of the prompt it came from.
    assert sorted(records_first) == sorted(
        (c["persona"], c["difficulty"], tuple(c["focus"].split(", "))) for c in first
    )


def test_near_duplicates_are_dropped_and_topped_up(tmp_path):
    replies = iter(
        [
            [
                "How do I bake sourdough bread at home with a starter I made myself last week?",
                "How do I bake sourdough bread at home with a starter I made myself last week??",  # near-duplicate (punctuation)
                "how do i bake sourdough bread  at home with a starter i made myself last week?",
            ],  # exact after normalisation
            [
                "What temperature should a steak reach for medium rare?",
                "How do I bake sourdough bread at home with a starter I made myself last month?",
            ],  # near-duplicate (one word)
            ["Which knife is best for dicing onions quickly?"],
        ]
    )

    def reply(messages, schema):
        return json.dumps({"records": [{"input": text} for text in next(replies)]})

    step = Seedless("m", "en/seedless", n_per_topic=3, per_call=3, max_calls=4)
    summary, backend, out, failures = run_step(tmp_path, TOPICS[:1], step, reply, concurrency=1)
    assert [r["input"] for r in out] == [
        "How do I bake sourdough bread at home with a starter I made myself last week?",
        "What temperature should a steak reach for medium rare?",
        "Which knife is best for dicing onions quickly?",
    ]
    assert len(backend.calls) == 3 and step.counters["near_duplicates"] == 3
    # Top-up calls ask only for what is missing and show what was kept, to steer away from it.
    assert [c["schema"]["properties"]["records"]["maxItems"] for c in backend.calls] == [3, 2, 1]
    assert "sourdough" in backend.calls[1]["messages"][-1]["content"]


def test_budget_exhausted_keeps_what_it_has_and_counts_short_topics(tmp_path):
    def same(messages, schema):
        return json.dumps({"records": [{"input": "Always the very same question about cooking pasta?"}]})

    step = Seedless("m", "en/seedless", n_per_topic=3, max_calls=4)
    summary, backend, out, failures = run_step(tmp_path, TOPICS[:1], step, same)
    assert len(out) == 1 and len(backend.calls) == 4 and failures == []
    assert step.counters["short_topics"] == 1 and step.counters["near_duplicates"] == 3


def test_topic_without_any_usable_record_fails_with_raw_reply(tmp_path):
    def broken(messages, schema):
        return "Sure! Here are some questions: 1. what 2. why"

    step = Seedless("m", "en/seedless", n_per_topic=2, max_calls=2)
    summary, backend, out, failures = run_step(tmp_path, TOPICS[:1], step, broken)
    assert out == [] and summary.failed == 1 and len(backend.calls) == 2
    assert "no usable record in 2 call(s)" in failures[0]["error"]
    assert failures[0]["raw"] == broken(None, None) and step.counters["failed_calls"] == 2


def test_run_scope_dedups_across_topics_topic_scope_does_not(tmp_path):
    def same_everywhere(messages, schema):
        topic = prompt_controls(messages)["topic"]
        return json.dumps(
            {
                "records": [
                    {"input": "What is a good first step for a complete beginner?"},
                    {"input": f"Tell me one surprising fact about {topic} please"},
                ]
            }
        )

    topics = [{"id": "a", "topic": "chess"}, {"id": "b", "topic": "gardening"}]
    step = Seedless("m", "en/seedless", n_per_topic=2, per_call=2, max_calls=1, dedup_scope="run")
    _, _, out, _ = run_step(tmp_path, topics, step, same_everywhere, concurrency=1, out="run")
    assert [r["id"] for r in out] == ["a:g0", "a:g1", "b:g0"] and step.counters["near_duplicates_in_run"] == 1
    step = Seedless("m", "en/seedless", n_per_topic=2, per_call=2, max_calls=1, dedup_scope="topic")
    _, _, out, _ = run_step(tmp_path, topics, step, same_everywhere, concurrency=1, out="topic")
    assert len(out) == 4


def test_exact_dedup_and_minhash_index():
    exact = NearDuplicateIndex(0.7, 64, "exact")
    assert exact.add_if_new("Hello  World") and not exact.add_if_new("hello world")
    assert exact.add_if_new("hello world!")  # exact mode ignores near-duplicates
    near = NearDuplicateIndex(0.7, 128, "minhash")
    assert near.add_if_new("the quick brown fox jumps over the lazy dog near the river bank")
    assert not near.add_if_new("the quick brown fox jumps over the lazy dog near the river bank!")
    assert near.add_if_new("an entirely different sentence about tax returns and refunds")
    assert near.add_if_new("Hi?")  # too short to shingle: MinHash cannot see it...
    assert not near.add_if_new("hi?")  # ...the exact check still does


def test_bad_topics_and_settings(tmp_path):
    step = Seedless("m", "en/seedless", n_per_topic=1)
    summary, backend, out, failures = run_step(
        tmp_path,
        [
            {"id": "x", "name": "no topic"},
            {"id": "y", "topic": "ok", "subtopics": [1, 2]},
            {"id": "z", "topic": "ok", "n": "3"},
        ],
        step,
        fresh_questions(),
    )
    assert backend.calls == [] and summary.bad_input == 3 and summary.failed == 0
    assert "field 'topic'" in failures[0]["error"] and "topics.jsonl:1" in failures[0]["error"]
    assert "field 'subtopics'" in failures[1]["error"] and "field 'n'" in failures[2]["error"]
    with pytest.raises(ConfigError, match="dedup"):
        Seedless("m", dedup="fuzzy")
    with pytest.raises(ConfigError, match=r'\.fields: cannot include \["persona"\]'):
        Seedless("m", fields=["input", "persona"])
    with pytest.raises(ConfigError, match="n_per_topic"):
        Seedless("m", n_per_topic=0)


def test_taxonomy_yaml_flattens_to_topic_records(tmp_path):
    from joydataforge.errors import InputError
    from joydataforge.io.taxonomy import load_taxonomy, read_taxonomy

    examples = Path(__file__).resolve().parent.parent / "examples"
    jsonl = [json.loads(line) for line in (examples / "topics.jsonl").read_text("utf-8").splitlines()]
    expected = [
        {**r, "subtopics": [s.strip() for s in r["subtopics"].split("|")]} if isinstance(r["subtopics"], str) else r
        for r in jsonl
    ]
    assert load_taxonomy(examples / "topics.yaml") == expected

    (tmp_path / "t.yaml").write_text(
        "personas: [a cook]\nn: 2\ntopics:\n"
        "  - Home Cooking!\n"
        "  - topic: sauces\n    subtopics:\n      - emulsions: [mayonnaise, hollandaise]\n      - reductions\n"
        "    personas: [a chef]\n"
        "  - topic: broken\n    n: -1\n",
        "utf-8",
    )
    items = list(read_taxonomy(tmp_path / "t.yaml"))
    assert items[0].record == {"id": "home-cooking", "topic": "Home Cooking!", "personas": ["a cook"], "n": 2}
    assert items[1].record["subtopics"] == ["emulsions / mayonnaise", "emulsions / hollandaise", "reductions"]
    assert items[1].record["personas"] == ["a chef"] and items[1].location.line == 5
    assert items[2].error is not None and "'n'" in str(items[2].error) and "t.yaml:10" in str(items[2].error)
    assert next(read_taxonomy(tmp_path / "t.yaml", skip=1)).record["id"] == "sauces"
    (tmp_path / "bad.yaml").write_text("topics: {a: 1}\n", "utf-8")
    with pytest.raises(InputError, match="list of topics"):
        load_taxonomy(tmp_path / "bad.yaml")
