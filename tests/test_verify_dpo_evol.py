"""Verdicts in ``dpo`` (chosen passes, rejected fails) and ``evol_instruct`` (unverifiable children eliminated)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.dpo.pairs import select_pairs
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, run_pipeline, write_jsonl
from tests.test_dpo_step import REGISTRY, pointwise, run
from tests.test_evol_instruct import ROOT, Script, candidates, eliminated, evolve_one, fresh


def config_error(kind, settings):
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{kind: settings}]}, source="pipeline.yaml")
    return str(info.value)


# --- dpo ----------------------------------------------------------------------------------------------

MATH = {"id": "q", "input": "What is 2+3?", "answer": "5"}


def test_select_pairs_over_verified_pools():
    scores = [9.0, 8.0, 3.0, 1.0]
    both = select_pairs(scores, "best_vs_worst", chosen_from={1, 2}, rejected_from={0, 3})
    assert both.pairs == [(1, 3)]
    # the judge prefers the failed answer: the pair would teach the wrong order, so it is dropped
    against = select_pairs(scores, "best_vs_worst", chosen_from={2}, rejected_from={0})
    assert against.pairs == [] and against.dropped == Counter({"tie": 1})
    assert select_pairs(scores, "all_pairs", chosen_from={0, 1}, rejected_from={2, 3}).pairs == [
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
    ]
    assert select_pairs(scores, "best_vs_worst", chosen_from=set(), rejected_from={0}).dropped == Counter(
        {"no_passing_candidate": 1}
    )
    assert select_pairs(scores, "best_vs_worst", chosen_from={0}, rejected_from=set()).dropped == Counter(
        {"no_failing_candidate": 1}
    )
    # without pools the rule is what it always was
    assert select_pairs(scores, "best_vs_worst").pairs == [(0, 3)]


@pytest.mark.parametrize("rule", ["best_vs_worst", "best_vs_random"])
def test_select_pairs_when_the_only_failing_candidate_is_the_best(rule):
    import random

    # only "rejected" is checked and the best candidate is the one that failed: no other candidate to reject
    picked = select_pairs([9.0, 8.0], rule, rejected_from={0}, rng=random.Random(0))
    assert picked.pairs == [] and picked.dropped == Counter({"no_failing_candidate": 1})


def test_dpo_chosen_passes_and_rejected_fails_a_math_check(tmp_path):
    # The judge likes the long wrong answer best; the check keeps it out of "chosen".
    texts = ["It is 6, clearly and in many words.", "2 + 3 = 5", "The answer is \\boxed{5}", "Maybe 7."]
    judge = ScriptedBackend(pointwise(dict(zip(texts, [9, 6, 5, 1]))))
    step = {"judges": ["judge1"], "require_verified": {"checker": "math", "reference_field": "answer"}}
    summary, out, failures = run(tmp_path, [{**MATH, "response_candidates": texts}], step, {"judge1": judge})
    assert not failures and len(out) == 1
    pair = out[0]
    assert pair["chosen"][0]["content"] == "2 + 3 = 5" and pair["rejected"][0]["content"] == "Maybe 7."
    assert pair["source_chosen"]["verified"]["passed"] is True
    assert pair["source_rejected"]["verified"]["status"] == "failed"
    stats = summary.steps["dpo"]
    assert stats["verify:passed"] == 2 and stats["verify:failed"] == 2


def test_dpo_reads_the_verdicts_of_an_earlier_verify_step(tmp_path):
    texts = ["It is 5", "It is 4", "It is 5, surely"]
    judge = ScriptedBackend(pointwise(dict(zip(texts, [7, 2, 8]))))
    record = {**MATH, "response_candidates": texts}
    write_jsonl(tmp_path / "in.jsonl", [record])
    steps = [
        {
            "verify": {
                "checker": "math",
                "reference_field": "answer",
                "answer_field": "response_candidates",
                "each": True,
            }
        },
        {"dpo": {"judges": ["judge1"], "require_verified": {"verdicts_field": "verify"}}},
    ]
    result = run_pipeline(make_pipeline(tmp_path, steps), {"judge1": judge}, registry=REGISTRY)
    assert not result.failures
    pair = result.data[0]
    assert pair["chosen"][0]["content"] == "It is 5, surely" and pair["rejected"][0]["content"] == "It is 4"
    assert pair["source_chosen"]["verified"]["reason"] == "5 equals the reference 5"


def test_dpo_records_without_a_failing_candidate_make_no_pair(tmp_path):
    texts = ["5", "five: 5", "\\boxed{5}"]
    judge = ScriptedBackend(pointwise(dict(zip(texts, [3, 6, 9]))))
    step = {"judges": ["judge1"], "require_verified": {"checker": "math", "reference_field": "answer"}}
    summary, out, failures = run(tmp_path, [{**MATH, "response_candidates": texts}], step, {"judge1": judge})
    assert out == [] and failures == []
    assert summary.steps["dpo"]["dropped:no_failing_candidate"] == 1


def test_dpo_require_verified_settings():
    base = {"judges": ["j"]}
    assert "steps[0] (dpo).require_verified.checker: needs a checker" in config_error(
        "dpo", {**base, "require_verified": {}}
    )
    assert "(dpo).require_verified.checker: give verdicts_field or the check's settings" in config_error(
        "dpo", {**base, "require_verified": {"verdicts_field": "verify", "checker": "math"}}
    )
    assert "(dpo).require_verified.reference_field: checker math needs" in config_error(
        "dpo", {**base, "require_verified": {"checker": "math"}}
    )


# --- evol_instruct ------------------------------------------------------------------------------------


def numbered_answers(instruction: str) -> str:
    """Children of the first parent answered with a number; the others with none."""
    return "The result is 42." if "[deepen 0]" in instruction else "It depends on many things, hard to say in general."


def test_evol_eliminates_children_whose_answer_has_no_checkable_value():
    script = Script(evolve=fresh, answer=numbered_answers)
    out, step = evolve_one(
        ROOT, script, rounds=1, operations=["deepen"], children=2, eliminate=[], verify={"checker": "math"}
    )
    kept = candidates(out)
    assert len(kept) == 1 and kept[0]["verified"]["passed"] is True
    gone = out["wizard_llm_querys"][0]["l_eliminated_instructions"]
    assert [e["eliminated"] for e in gone] == ["unverifiable"]
    assert gone[0]["detail"] == "no final answer found in the reply"
    assert step.counters["eliminated:unverifiable"] == 1 and step.counters["verify_checks"] == 2


def test_evol_agreement_of_several_answers():
    asked: Counter[str] = Counter()

    def answers(instruction: str) -> str:
        asked[instruction] += 1
        if "[deepen 0]" in instruction:  # the same answer every time
            return "The answer is 12."
        return f"The answer is {10 + asked[instruction]}."  # a new answer each time: not checkable

    script = Script(evolve=fresh, answer=answers)
    out, step = evolve_one(
        ROOT,
        script,
        rounds=1,
        operations=["deepen"],
        children=2,
        eliminate=[],
        verify={"checker": "math", "samples": 3},
    )
    assert [c["instruction"].split(" [")[1][:8] for c in candidates(out)] == ["deepen 0"]
    reasons = list(eliminated(out).values())
    assert reasons == ["unverifiable"]
    detail = out["wizard_llm_querys"][0]["l_eliminated_instructions"][0]["detail"]
    assert re.match(r"answer 2 of 3 disagrees: ", detail)
    # the agreeing child was asked three times, the other twice (stopped at its first disagreement)
    assert sorted(asked.values()) == [2, 3]


def test_evol_code_children_must_run():
    def programs(instruction: str) -> str:
        if "[deepen 0]" in instruction:
            return "```python\ndef f(x):\n    return 2 * x\n\nassert f(2) == 4\n```"
        return "```python\ndef f(x):\n    return 2 * x\n\nassert f(2) == 5\n```"

    script = Script(evolve=fresh, answer=programs)
    out, _ = evolve_one(
        ROOT, script, rounds=1, operations=["deepen"], children=2, eliminate=[], verify={"checker": "code"}
    )
    assert len(candidates(out)) == 1 and candidates(out)[0]["verified"]["checker"] == "code"
    gone = out["wizard_llm_querys"][0]["l_eliminated_instructions"]
    assert gone[0]["eliminated"] == "unverifiable" and "AssertionError" in gone[0]["detail"]


def test_evol_verify_settings():
    assert "steps[0] (evol_instruct).verify: checks each child's answer: set answer_model" in config_error(
        "evol_instruct", {"model": "m", "verify": {"checker": "math"}}
    )
    assert "(evol_instruct).verify.reference_field: has no record to read here" in config_error(
        "evol_instruct", {"model": "m", "answer_model": "m", "verify": {"checker": "math", "reference_field": "a"}}
    )
    assert "(evol_instruct).verify.samples: agreement between answers needs checker math" in config_error(
        "evol_instruct", {"model": "m", "answer_model": "m", "verify": {"checker": "json", "samples": 2}}
    )
    assert "(evol_instruct).verify.pattern: checker text needs a pattern" in config_error(
        "evol_instruct", {"model": "m", "answer_model": "m", "verify": {"checker": "text"}}
    )
