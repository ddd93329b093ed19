"""The streaming MinHash dedup step: order, policies, reference records, configuration errors."""

from __future__ import annotations

import pytest

from joydataforge.engine.step import Step, StepContext, as_list
from joydataforge.errors import ConfigError
from joydataforge.methods.dedup.step import MinHashDedupStep
from joydataforge.text.minhash import exact_jaccard
from joydataforge.text.minhash_dedup import deduplicate
from joydataforge.text.shingles import ShingleSpec, shingle_set

BASE = "the committee met on tuesday to discuss the annual budget and the new library building plans"
RECORDS = [
    {"id": "1", "input": BASE},
    {"id": "2", "input": "an entirely unrelated sentence about mountains and rivers in the north"},
    {"id": "3", "input": BASE.upper() + "!!!"},
    {"id": "4", "input": "今天天气很好，我们去公园散步吧，顺便买点水果回家。"},
    {"id": "5", "input": "今天天气很好,我们去公园散步吧,顺便买点水果回家"},
    {"id": "6", "input": ""},
    {"id": "7", "input": ""},
]


async def _run(step: Step, records):
    ctx = StepContext(gateway=None, prompts=None, seed=0)  # the step needs no model
    out = []
    for record in records:
        out.extend(as_list(await step.run(record, ctx)))
    return out


def test_step_is_a_sequential_step_with_yaml_kind():
    step = MinHashDedupStep(threshold=0.8, num_perm=64, fields=["input", "history"], ngram=3, policy="first", seed=2)
    assert isinstance(step, Step) and step.kind == "minhash_dedup" and step.sequential
    assert step.fields == ["input", "history"] and step.hasher.num_perm == 64 and step.hasher.seed == 2


async def test_keep_first_in_input_order():
    step = MinHashDedupStep()
    out = await _run(step, RECORDS)
    assert [r["id"] for r in out] == ["1", "2", "4", "6", "7"]
    assert step.stats() == {"records_in": 7, "kept": 5, "removed": 2, "empty_texts": 2}
    # reversed input: the first one seen is kept
    step = MinHashDedupStep()
    out = await _run(step, list(reversed(RECORDS)))
    assert [r["id"] for r in out] == ["7", "6", "5", "3", "2"]


async def test_tag_policy_passes_everything_with_fields():
    out = await _run(MinHashDedupStep(policy="tag"), RECORDS)
    assert len(out) == len(RECORDS)
    tags = {r["id"]: (r["cluster_id"], r["duplicate_of"]) for r in out}
    assert tags["1"] == (None, None) and tags["3"] == ("1", "1") and tags["5"] == ("4", "4")
    assert "duplicate_of" not in RECORDS[2]


async def test_streaming_agrees_with_batch_first():
    batch = deduplicate(RECORDS, policy="first")
    streamed = await _run(MinHashDedupStep(), RECORDS)
    assert [r["id"] for r in streamed] == [r["id"] for r in batch.kept]


async def test_chain_through_a_dropped_record_is_the_same_cluster():
    words = [f"w{i}" for i in range(80)]
    a = " ".join(words)
    words[10], words[30] = "x10", "x30"
    b = " ".join(words)
    words[50], words[70] = "x50", "x70"
    c = " ".join(words)
    spec = ShingleSpec("word", 3)
    assert exact_jaccard(shingle_set(a, spec), shingle_set(b, spec)) > 0.85  # a ~ b
    assert exact_jaccard(shingle_set(b, spec), shingle_set(c, spec)) > 0.85  # b ~ c
    assert exact_jaccard(shingle_set(a, spec), shingle_set(c, spec)) < 0.74  # a !~ c
    step = MinHashDedupStep(threshold=0.8, num_perm=256, policy="tag")
    out = await _run(step, [{"id": "a", "input": a}, {"id": "b", "input": b}, {"id": "c", "input": c}])
    assert out[1]["duplicate_of"] == "a"
    # c matches only b, which "first" would have dropped; c is still in a's cluster
    assert out[2]["cluster_id"] == "a"
    step = MinHashDedupStep(threshold=0.8, num_perm=256)
    assert len(await _run(step, [{"id": "a", "input": a}, {"id": "c", "input": c}])) == 2
    assert len(await _run(step, [{"id": "b", "input": b}])) == 0


async def test_reference_records_are_indexed_first():
    step = MinHashDedupStep()
    assert step.add_reference([RECORDS[0], RECORDS[3]]) == 2
    out = await _run(step, RECORDS[1:3] + RECORDS[4:5])
    assert [r["id"] for r in out] == ["2"]
    assert step.counters["reference_duplicates"] == 2


async def test_history_fields():
    step = MinHashDedupStep(fields=["input", "history"])
    a = {"id": "a", "input": "q", "history": [["hello there my friend", "hi how are you doing today"]]}
    b = {"id": "b", "input": "q", "history": "用户: hello there my friend\n助手: hi how are you doing today"}
    c = {"id": "c", "input": "q", "history": [["something else", "entirely"]]}
    out = await _run(step, [a, b, c])
    assert [r["id"] for r in out] == ["a", "c"]


def test_configuration_errors_say_what_to_change():
    with pytest.raises(ConfigError, match="joyforge dedup"):
        MinHashDedupStep(policy="longest")
    with pytest.raises(ConfigError, match="policy"):
        MinHashDedupStep(policy="last")
    with pytest.raises(ConfigError, match="threshold"):
        MinHashDedupStep(threshold=1.5)
    with pytest.raises(ConfigError, match="ngram"):
        MinHashDedupStep(ngram=0)
