"""Evol-Instruct with scripted models: every elimination rule, judging failures, selection arithmetic,
round pooling, sampling, flat lineage, labels and inputs. Each test pins exact outcomes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.step import StepContext
from joydataforge.errors import ConfigError, InputError, StepError
from joydataforge.io.exports import to_sharegpt
from joydataforge.methods.evol_instruct.operations import (
    JudgingError,
    TreeIndex,
    carry_count,
    count_words,
    is_unanswerable,
    leaked_phrase,
    parse_judgement,
    parse_verdict,
    select_top,
)
from joydataforge.methods.evol_instruct.step import EvolInstruct, labels_of
from joydataforge.models.backends.base import Completion
from joydataforge.models.gateway import Gateway
from joydataforge.prompts.renderer import PromptLibrary
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import registry_of

REGISTRY = registry_of(("m", "judge", "answerer"), max_concurrency=16, json_retries=0)

OPS = {
    "Add one more constraint": "constraints",
    "increase the depth and breadth": "deepen",
    "Replace general concepts": "concretize",
    "multiple-step reasoning": "reasoning",
    "Add concrete input": "complicate_input",
    "change the direction or the scope": "redirect",
    "Prompt Creator": "breadth",
}


def parse_prompt(messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
    """Which role a request plays and its key values, read back from the rendered en prompts."""
    user = messages[-1]["content"]
    if "Are they equal" in user or "Do you think they are equal" in user:
        first = re.search(r"The first instruction: (.*)", user).group(1)
        second = re.search(r"The second instruction: (.*)", user).group(1)
        return "equal", {"parent": first, "instruction": second}
    if "evaluate the query below" in user:
        return "judge", {"instruction": user.split("The query:\n", 1)[1].rsplit("\nReply with JSON", 1)[0]}
    if "#The Given Prompt#:\n" in user:
        op = next(name for phrase, name in OPS.items() if phrase in user)
        given = user.split("#The Given Prompt#:\n", 1)[1].split("\nWrite ", 1)[0]
        count = int(re.search(r"Write (\d+) different", user).group(1))
        category = re.search(r"#Category#: (.*)", user).group(1)
        return "evolve", {"op": op, "instruction": given, "count": count, "category": category, "text": user}
    return "answer", {"instruction": user}


class Script:
    """Replies by role. ``evolve(op, parent, count) -> list``; ``judge(instruction) -> dict|str``;
    ``equal(parent, child) -> bool``; ``answer(instruction) -> str``. Every request is logged."""

    def __init__(
        self,
        evolve: Callable[..., Any] | None = None,
        judge: Callable[[str], Any] | None = None,
        equal: Callable[[str, str], bool] | None = None,
        answer: Callable[[str], str] | None = None,
    ):
        self.evolve = evolve or (lambda op, parent, count: [f"{parent} [{op} {i}]" for i in range(count)])
        self.judge = judge or (lambda instruction: {"valid": 1, "score": 50})
        self.equal = equal or (lambda parent, child: False)
        self.answer = answer or (lambda instruction: f"A full answer about {instruction} with enough words.")
        self.log: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, messages, schema) -> str:
        role, values = parse_prompt(messages)
        self.log.append((role, values))
        if role == "evolve":
            reply = self.evolve(values["op"], values["instruction"], values["count"])
            return reply if isinstance(reply, str) else json.dumps({"instructions": reply}, ensure_ascii=False)
        if role == "judge":
            reply = self.judge(values["instruction"])
            return reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)
        if role == "equal":
            equal = self.equal(values["parent"], values["instruction"])
            return json.dumps({"verdict": "equal" if equal else "not_equal"})
        return self.answer(values["instruction"])

    def calls(self, role: str) -> list[dict[str, Any]]:
        return [values for r, values in self.log if r == role]


def evolve_one(
    record: dict[str, Any], script: Script, seed: int = 0, backend_cls=ScriptedBackend, **settings: Any
) -> Any:
    settings.setdefault("model", "m")
    settings.setdefault("answer_model", "m")
    step = EvolInstruct(**settings)
    backend = backend_cls(script)
    ctx = StepContext(
        Gateway(REGISTRY, backends={"m": backend, "judge": backend, "answerer": backend}), PromptLibrary(), seed=seed
    )
    step.check(ctx)
    result = asyncio.run(step.run(record, ctx))
    return result, step


def fresh(op: str, parent: str, count: int) -> list[str]:
    """Children that keep their parent's text but add enough new words not to be near-duplicates of it."""
    return [
        f"{parent} [{op} {i}] " + " ".join(f"{op[:3]}{i}n{len(parent)}w{j}" for j in range(24)) for i in range(count)
    ]


ROOT = {"id": "r1", "input": "How do I bake bread?", "task_label": "cooking"}


def candidates(out: dict[str, Any], round_no: int = 1) -> list[dict[str, Any]]:
    entry = out["wizard_llm_querys"][round_no - 1]
    return entry["l_depth_instructions"] + entry["l_breadth_instructions"]


def eliminated(out: dict[str, Any], round_no: int = 1) -> dict[str, str]:
    entries = out["wizard_llm_querys"][round_no - 1]["l_eliminated_instructions"]
    return {e["instruction"]: e["eliminated"] for e in entries}


# ---------------------------------------------------------------- the seed's shape and selection


def test_one_round_has_the_seeds_shape_and_carries_the_top_fifth():
    scores = {"deepen 0": 50, "deepen 1": 70, "deepen 2": 60, "breadth 0": 80, "breadth 1": 40, "breadth 2": 90}

    def judge(instruction):
        key = re.search(r"\[(\w+ \d)\]", instruction)
        return {"valid": 1, "score": scores[key.group(1)] if key else 20}

    script = Script(judge=judge)
    out, step = evolve_one(ROOT, script, rounds=1, operations=["deepen", "breadth"], children=3)
    entry = out["wizard_llm_querys"][0]
    assert entry["wizard_round_cnt"] == 1 and out["wizard_round_cnt"] == 1
    assert [c["score"] for c in entry["l_depth_instructions"]] == [50, 70, 60]
    assert [c["score"] for c in entry["l_breadth_instructions"]] == [80, 40, 90]
    first = entry["l_depth_instructions"][0]
    assert {"instruction", "task_label", "score", "valid", "pre_query"} <= set(first)
    assert first["pre_query"] == ROOT["input"] and first["task_label"] == "cooking"
    assert first["parent_id"] == "r1" and first["id"] == "r1:r1.1" and first["operation"] == "deepen"
    # 6 valid children, 20% -> floor(1.2) = 1: the 90.
    assert entry["selected"] == ["r1:r1.6"]
    assert [c["selected"] for c in entry["l_breadth_instructions"]] == [False, False, True]
    assert out["wizard_root"] == {
        "id": "r1",
        "parent_id": None,
        "round": 0,
        "operation": "root",
        "kind": "root",
        "instruction": ROOT["input"],
        "task_label": "cooking",
        "valid": 1,
        "score": 20,
    }
    assert step.counters["children"] == 6 and step.counters["carried"] == 1 and step.counters["evolve_calls"] == 2
    assert all(c["answer"].startswith("A full answer") for c in candidates(out))
    assert len(out["_meta"]["calls"]) == 2 + 6 * 3 + 1  # evolve, (equal + answer + judge) per child, root judge


def test_carry_count_is_computed_after_filtering_with_at_least_one():
    assert carry_count(0, 0.2) == 0
    assert [carry_count(n, 0.2) for n in (1, 4, 5, 9, 10, 14, 15)] == [1, 1, 1, 1, 2, 2, 3]
    assert carry_count(10, 0.5) == 5 and carry_count(3, 1.0) == 3
    # 10 children, 5 of them invalid: the seed would carry int(10 * 0.2) = 2; we carry floor(5 * 0.2) -> 1.
    pool = [{"valid": 1 if i % 2 else -1, "score": 30 + i} for i in range(10)]
    assert [c["score"] for c in select_top(pool, 0.2)] == [39]
    # Only invalid: nothing goes on.
    assert select_top([{"valid": -2, "score": 10}, {"valid": -1, "score": 30}], 0.2) == []


def test_ties_keep_generation_order():
    pool = [{"valid": 1, "score": s, "n": i} for i, s in enumerate([70, 90, 90, 50])]
    assert [c["n"] for c in select_top(pool, 0.5)] == [1, 2]
    assert [c["n"] for c in select_top(pool, 0.25)] == [1]
    assert [c["n"] for c in select_top(pool, 0.75)] == [1, 2, 0]


def test_invalid_children_are_judged_and_kept_but_never_carried_and_scores_are_capped():
    def judge(instruction):
        if "[deepen 0]" in instruction:
            return {"valid": -2, "score": 85}  # over the cap for an invalid query
        if "[deepen 1]" in instruction:
            return {"valid": -1, "score": 95}
        return {"valid": 1, "score": 40}

    out, step = evolve_one(ROOT, Script(judge=judge), rounds=1, operations=["deepen"], children=3, top_fraction=1.0)
    got = [(c["valid"], c["score"], c["selected"]) for c in candidates(out)]
    assert got == [(-2, 30, False), (-1, 30, False), (1, 40, True)]
    assert step.counters["score_capped"] == 2 and step.counters["invalid"] == 2


# ---------------------------------------------------------------- elimination rules


def test_leaked_prompt_words_are_eliminated_before_any_model_call():
    def evolve(op, parent, count):
        return [
            "#Rewritten Prompt#: How do I bake sourdough bread at altitude?",
            "Following the given prompt, explain kneading times for rye.",
            "How do I bake gluten-free bread that still rises well?",
        ]

    script = Script(evolve=evolve)
    out, step = evolve_one(ROOT, script, rounds=1, operations=["constraints"], children=3)
    assert eliminated(out) == {
        "#Rewritten Prompt#: How do I bake sourdough bread at altitude?": "leak",
        "Following the given prompt, explain kneading times for rye.": "leak",
    }
    judged = [c["instruction"] for c in script.calls("judge")]
    assert judged == [ROOT["input"], "How do I bake gluten-free bread that still rises well?"]
    assert step.counters["eliminated:leak"] == 2


def test_leak_phrases_cover_both_languages_and_are_case_insensitive():
    assert leaked_phrase("As the GIVEN   PROMPT says, ...") == "given prompt"
    assert leaked_phrase("#重写后的提示#：孕妇可以吃布洛芬吗") is not None
    assert leaked_phrase("How do I bake bread?") is None
    assert leaked_phrase("Use the secret word", ["SECRET word"]) == "SECRET word"


def test_near_duplicates_of_the_tree_and_of_siblings_are_eliminated():
    def evolve(op, parent, count):
        return [
            "how do i bake BREAD??",  # the root, up to case and punctuation
            "What flour should I use to bake a crusty sourdough loaf at home in winter?",
            "What flour should I use to bake a crusty sourdough loaf at home in the winter?",  # sibling
            "Why does my bread collapse in the oven?",
        ]

    out, step = evolve_one(ROOT, Script(evolve=evolve), rounds=1, operations=["deepen"], children=4)
    assert eliminated(out) == {
        "how do i bake BREAD??": "duplicate",
        "What flour should I use to bake a crusty sourdough loaf at home in the winter?": "duplicate",
    }
    entry = out["wizard_llm_querys"][0]
    details = {e["instruction"]: e["detail"] for e in entry["l_eliminated_instructions"]}
    assert "near-duplicate of r1 " in details["how do i bake BREAD??"]
    assert (
        "near-duplicate of r1:r1.2 "
        in details["What flour should I use to bake a crusty sourdough loaf at home in the winter?"]
    )
    assert len(candidates(out)) == 2


def test_tree_index_threshold_and_chinese():
    tree = TreeIndex(0.7)
    tree.add("a", "孕妇感冒了可以吃布洛芬吗？")
    assert tree.find("孕妇感冒了，可以吃布洛芬吗")[0] == "a"
    assert tree.find("儿童发烧可以用对乙酰氨基酚吗？") is None
    with pytest.raises(ValueError):
        TreeIndex(0)


def test_children_without_information_gain_are_eliminated_by_the_equal_judge():
    script = Script(equal=lambda parent, child: "[deepen 1]" in child)
    out, _ = evolve_one(ROOT, script, rounds=1, operations=["deepen"], children=2)
    assert eliminated(out) == {"How do I bake bread? [deepen 1]": "no_information_gain"}
    assert [c["parent"] for c in script.calls("equal")] == [ROOT["input"]] * 2
    # eliminated before the answer and the judge were asked
    assert [c["instruction"] for c in script.calls("answer")] == ["How do I bake bread? [deepen 0]"]


def test_unanswerable_children_are_eliminated_and_long_apologies_are_not():
    def answer(instruction):
        if "[deepen 0]" in instruction:
            return "Sorry, I cannot help with that."
        if "[deepen 1]" in instruction:
            return "... ?! the of"  # punctuation and stop words only
        return "Sorry for the long list: " + " ".join(f"step{i}" for i in range(90))

    out, step = evolve_one(ROOT, Script(answer=answer), rounds=1, operations=["deepen"], children=3)
    assert eliminated(out) == {
        "How do I bake bread? [deepen 0]": "unanswerable",
        "How do I bake bread? [deepen 1]": "unanswerable",
    }
    reasons = [e["detail"] for e in out["wizard_llm_querys"][0]["l_eliminated_instructions"]]
    assert reasons == ["the answering model's reply is a refusal", "the answering model's reply is a no content"]
    assert [c["instruction"] for c in candidates(out)] == ["How do I bake bread? [deepen 2]"]
    assert step.counters["eliminated:unanswerable"] == 2


def test_refusal_rule_counts_chinese_characters_as_words():
    assert is_unanswerable("抱歉，我无法回答这个问题。") == "refusal"
    assert is_unanswerable("抱歉" + "布洛芬是一种常用的解热镇痛药" * 10) is None
    assert count_words("abc 布洛芬 def") == 5
    assert is_unanswerable("I'm sorry", max_words=1) is None


def test_rules_can_be_switched_off():
    script = Script(evolve=lambda op, parent, count: ["#Rewritten Prompt# bake it"], equal=lambda p, c: True)
    out, _ = evolve_one(ROOT, script, rounds=1, operations=["deepen"], children=1, eliminate=["duplicate"])
    assert eliminated(out) == {} and len(candidates(out)) == 1


# ---------------------------------------------------------------- judging


def test_judging_failure_is_retried_with_new_samples_then_recorded_without_crashing():
    def judge(instruction):
        if "[deepen 0]" in instruction:
            return {"valid": 1, "score": "very hard"}
        if "[deepen 1]" in instruction:
            return "no json here"
        return {"valid": "1", "score": "65分"}

    script = Script(judge=judge)
    out, step = evolve_one(ROOT, script, rounds=1, operations=["deepen"], children=3, judge_retries=2)
    assert eliminated(out) == {
        "How do I bake bread? [deepen 0]": "judge_failed",
        "How do I bake bread? [deepen 1]": "judge_failed",
    }
    failed = out["wizard_llm_querys"][0]["l_eliminated_instructions"]
    assert "'very hard', not a number" in failed[0]["detail"] and "after 3 attempts" in failed[0]["detail"]
    assert failed[0]["raw"] == json.dumps({"valid": 1, "score": "very hard"})
    assert failed[1]["raw"] == "no json here"
    assert [c["instruction"] for c in script.calls("judge")].count("How do I bake bread? [deepen 0]") == 3
    assert [(c["valid"], c["score"]) for c in candidates(out)] == [(1, 65)]
    assert out["wizard_llm_querys"][0]["selected"] == ["r1:r1.3"]
    assert step.counters["judge_failures"] == 2


def test_a_judgement_that_fails_once_is_accepted_on_retry():
    seen: dict[str, int] = {}

    def judge(instruction):
        seen[instruction] = seen.get(instruction, 0) + 1
        return {"valid": 1, "score": "N/A"} if seen[instruction] == 1 else {"valid": 1, "score": 72.4}

    out, _ = evolve_one(ROOT, Script(judge=judge), rounds=1, operations=["deepen"], children=1)
    assert [(c["valid"], c["score"]) for c in candidates(out)] == [(1, 72)]
    assert out["wizard_root"]["score"] == 72


def test_a_failed_root_judgement_is_recorded_and_evolution_goes_on():
    out, _ = evolve_one(
        ROOT,
        Script(judge=lambda i: "x" if i == ROOT["input"] else {"valid": 1, "score": 50}),
        rounds=1,
        operations=["deepen"],
        children=1,
    )
    assert out["wizard_root"]["score"] is None and "after 3 attempts" in out["wizard_root"]["judge_error"]
    assert len(candidates(out)) == 1


@pytest.mark.parametrize(
    "reply, expected",
    [
        ({"valid": 1, "score": 65}, (1, 65, False)),
        ({"valid": "-2", "score": "20"}, (-2, 20, False)),
        ({"valid": -1, "score": "45 points"}, (-1, 30, True)),
        ({"valid": 1, "score": "80/100"}, (1, 80, False)),
        ({"valid": 1.0, "score": 59.6}, (1, 60, False)),
    ],
)
def test_parse_judgement_accepts_numbers_and_numeric_strings(reply, expected):
    assert parse_judgement(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        {"valid": 1, "score": "hard"},
        {"valid": 1, "score": None},
        {"valid": 1, "score": True},
        {"valid": 0, "score": 50},
        {"valid": 2, "score": 50},
        {"valid": 1, "score": 150},
        {"valid": 1, "score": -5},
        {"valid": 1, "score": float("nan")},
        {"valid": 1, "score": "60-70"},
        {"score": 50},
        [1, 50],
        "65",
    ],
)
def test_parse_judgement_rejects_unusable_values(reply):
    with pytest.raises(JudgingError):
        parse_judgement(reply)


def test_parse_verdict():
    assert parse_verdict({"verdict": "equal"}) is True
    assert parse_verdict({"verdict": "Not Equal"}) is False
    with pytest.raises(JudgingError):
        parse_verdict({"verdict": "maybe"})


# ---------------------------------------------------------------- rounds, pooling, sampling


def test_rounds_pool_the_carried_children_of_all_parents():
    def judge(instruction):
        return {"valid": 1, "score": 10 + 10 * instruction.count("[")}  # deeper = harder

    script = Script(evolve=fresh, judge=judge)
    out, step = evolve_one(
        ROOT, script, rounds=2, sample_size=2, operations=["deepen", "breadth"], children=2, top_fraction=0.5
    )
    r1, r2 = out["wizard_llm_querys"]
    assert r1["sampled"] == ["r1"] and len(r1["selected"]) == 2  # 4 valid, 50% -> 2
    assert sorted(r2["sampled"]) == sorted(r1["selected"])
    parents_in_r2 = {c["instruction"] for c in script.calls("evolve")[2:]}
    carried = {c["instruction"] for c in candidates(out, 1) if c["selected"]}
    assert parents_in_r2 == carried
    assert len(candidates(out, 2)) == 8  # 2 parents x 2 operations x 2 children
    assert {c["parent_id"] for c in candidates(out, 2)} == set(r1["selected"])
    assert all(c["pre_query"] in carried and c["round"] == 2 for c in candidates(out, 2))
    # round-2 selection pools all 8 children across both parents: 50% -> 4
    assert len(r2["selected"]) == 4 and step.counters["evolve_calls"] == 2 + 4


def test_sampling_is_seeded_per_record_and_bounded_by_sample_size():
    settings = {"rounds": 2, "sample_size": 1, "operations": ["deepen"], "children": 3, "top_fraction": 1.0}
    first, _ = evolve_one(ROOT, Script(fresh), seed=1, **settings)
    again, _ = evolve_one(ROOT, Script(fresh), seed=1, **settings)
    assert first["wizard_llm_querys"][1]["sampled"] == again["wizard_llm_querys"][1]["sampled"]
    assert len(first["wizard_llm_querys"][1]["sampled"]) == 1
    picks = {
        evolve_one(ROOT, Script(fresh), seed=s, **settings)[0]["wizard_llm_querys"][1]["sampled"][0] for s in range(8)
    }
    assert len(picks) > 1  # the seed matters


def test_evolution_stops_when_no_child_is_valid():
    out, step = evolve_one(
        ROOT,
        Script(judge=lambda i: {"valid": 1 if i == ROOT["input"] else -1, "score": 20}),
        rounds=3,
        operations=["deepen"],
        children=2,
    )
    assert out["wizard_round_cnt"] == 1 and out["wizard_llm_querys"][0]["selected"] == []
    assert step.counters["stopped_no_valid_child"] == 1


class InFlight(ScriptedBackend):
    """Counts how many calls are in flight at once."""

    def __init__(self, reply):
        super().__init__(reply, delay=0.02)
        self.now = self.peak = 0

    async def chat(self, messages, params, *, json_schema=None, seed=None) -> Completion:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await super().chat(messages, params, json_schema=json_schema, seed=seed)
        finally:
            self.now -= 1


def test_independent_calls_of_a_round_run_concurrently():
    step = EvolInstruct(
        model="m", answer_model="m", rounds=1, operations=["constraints", "deepen", "breadth"], children=3
    )
    backend = InFlight(Script())
    ctx = StepContext(Gateway(REGISTRY, backends={"m": backend}), PromptLibrary())
    asyncio.run(step.run(ROOT, ctx))
    assert backend.peak >= 3  # three evolution calls, then nine children checked side by side


# ---------------------------------------------------------------- inputs and labels


def test_a_string_task_label_is_one_label_and_redirect_gives_a_new_one():
    def evolve(op, parent, count):
        if op == "redirect":
            return [{"instruction": "Which proofing temperature suits rye dough best?", "task_label": "fermentation"}]
        return ["Which oven rack position gives the crispiest crust?"]

    script = Script(evolve=evolve)
    out, _ = evolve_one(ROOT, script, rounds=1, operations=["redirect", "breadth"], children=1)
    assert {c["category"] for c in script.calls("evolve")} == {"cooking"}  # not "c, o, o, k, i, n, g"
    by_op = {c["operation"]: c["task_label"] for c in candidates(out)}
    assert by_op == {"redirect": "fermentation", "breadth": "cooking"}
    assert labels_of("药品") == ["药品"] and labels_of(["a", "b"]) == ["a", "b"] and labels_of(None) == []
    with pytest.raises(InputError):
        labels_of({"a": 1})


def test_list_labels_are_listed_in_the_prompt():
    script = Script()
    evolve_one({**ROOT, "task_label": ["baking", "chemistry"]}, script, rounds=1, operations=["deepen"], children=1)
    assert script.calls("evolve")[0]["category"] == "baking, chemistry"


def test_rewrite_query_is_preferred_and_history_is_context_for_the_root_only():
    record = {
        "id": "h",
        "input": "and for rye?",
        "rewrite_query": "How long should rye bread proof?",
        "history": [["How long should wheat bread proof?", "About an hour."]],
        "task_label": ["baking"],
    }
    script = Script(judge=lambda i: {"valid": 1, "score": 50})
    out, _ = evolve_one(record, script, rounds=2, operations=["deepen"], children=1)
    first, second = script.calls("evolve")
    assert first["instruction"] == "How long should rye bread proof?"
    assert "About an hour." in first["text"] and "About an hour." not in second["text"]
    script = Script()
    evolve_one({**record, "rewrite_query": ""}, script, rounds=1, operations=["deepen"], children=1, use_history=False)
    assert script.calls("evolve")[0]["instruction"] == "and for rye?"
    assert "About an hour." not in script.calls("evolve")[0]["text"]
    with pytest.raises(InputError) as err:
        evolve_one({"id": "x", "input": "  "}, Script(), rounds=1)
    assert err.value.field == "input"


def test_a_failed_evolution_call_is_recorded_and_the_rest_goes_on():
    out, step = evolve_one(
        ROOT,
        Script(evolve=lambda op, p, n: "not json" if op == "deepen" else ["Rare bread?"]),
        rounds=1,
        operations=["deepen", "breadth"],
        children=1,
    )
    entry = out["wizard_llm_querys"][0]
    assert [e["operation"] for e in entry["errors"]] == ["deepen"] and entry["errors"][0]["raw"] == "not json"
    assert [c["instruction"] for c in candidates(out)] == ["Rare bread?"]
    with pytest.raises(StepError) as err:
        evolve_one(ROOT, Script(evolve=lambda op, p, n: "not json"), rounds=1, operations=["deepen"])
    assert err.value.raw == "not json"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"operations": ["deepen", "fly"]}, r"operations\[1\]: must be one of 'constraints'.* \(got 'fly'\)"),
        ({"top_fraction": 0}, "top_fraction"),
        ({"eliminate": ["equal", "vibes"]}, r"eliminate\[1\]: must be one of 'equal'.* \(got 'vibes'\)"),
        ({"rounds": 0}, "rounds"),
        ({"children": {"deepen": 2, "fly": 1}}, r"children.fly: must be one of .*\(got 'fly'\)"),
        ({"output": "tree"}, "output"),
        ({"language": "fr"}, "language"),
        ({"prompts": {"evolve": "x.yaml"}}, r"prompts.evolve: must be one of 'depth'.* \(got 'evolve'\)"),
    ],
)
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        EvolInstruct(model="m", **settings)


def test_children_per_operation_can_differ():
    script = Script()
    out, _ = evolve_one(ROOT, script, rounds=1, operations=["deepen", "breadth"], children={"deepen": 1, "breadth": 2})
    assert [c["count"] for c in script.calls("evolve")] == [1, 2]
    assert len(candidates(out)) == 3


# ---------------------------------------------------------------- flat output through the executor


def own(instruction: str) -> str:
    """The operation and round an instruction was made by (scripted evolutions mark them), or ``root``."""
    marks = re.findall(r"\[(\w+ \d)\]", instruction)
    return marks[-1] if marks else "root"


def run_flat_evol(tmp_path: Path) -> Any:
    """Evol-Instruct's flat output, made by the step through the executor (two roots, two rounds): the summary."""
    (tmp_path / "in.jsonl").write_text(
        json.dumps(ROOT) + "\n" + json.dumps({**ROOT, "id": "r2", "input": "Why knead?"}) + "\n", "utf-8"
    )
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [
                {
                    "evol_instruct": {
                        "model": "m",
                        "answer_model": "m",
                        "rounds": 2,
                        "operations": ["deepen", "breadth"],
                        "children": 2,
                        "top_fraction": 0.5,
                        "output": "flat",
                    }
                }
            ],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False},
        }
    )

    script = Script(
        evolve=fresh, judge=lambda i: {"valid": -1 if own(i) == "breadth 1" else 1, "score": 10 + 5 * len(i) % 80}
    )
    gateway = Gateway(REGISTRY, backends={"m": ScriptedBackend(script)})
    return LocalExecutor(pipeline, registry=REGISTRY, gateway=gateway).run_sync()


def test_flat_output_fans_out_with_lineage_ready_for_export(tmp_path: Path):
    summary = run_flat_evol(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    assert summary.failed == 0 and len(rows) == summary.records_out
    ids = {row["id"] for row in rows}
    assert len(ids) == len(rows)
    for row in rows:
        evol = row["evol"]
        assert row["valid"] == 1 and row["_meta"]["source_id"] == evol["root_id"]
        assert row["id"].startswith(evol["root_id"] + ":r")
        if evol["round"] == 1:
            assert evol["parent_id"] == evol["root_id"]
        else:
            assert evol["parent_id"] in ids  # the parent is itself a flat record
        assert "history" not in row and row["target"].startswith("A full answer")
    assert {row["evol"]["round"] for row in rows} == {1, 2}
    assert all(r["evol"]["operation"] in ("deepen", "breadth") for r in rows)
    # per root: 3 of 4 valid in round 1, floor(3 * 0.5) = 1 carried; its 4 children, 3 valid, in round 2
    assert len(rows) == 2 * (3 + 3)
    assert not any(own(r["input"]) == "breadth 1" for r in rows)  # judged invalid: not exported
    exported = to_sharegpt(rows[0])
    assert exported["conversations"][0] == {"from": "human", "value": rows[0]["input"]}
    assert exported["conversations"][1] == {"from": "gpt", "value": rows[0]["target"]}


# ---------------------------------------------------------------- the per-round report


def test_round_report_from_nested_and_flat_output(tmp_path: Path):
    import numpy as np
    from click.testing import CliRunner

    from joydataforge.cli.evol import evol_group
    from joydataforge.methods.evol_instruct.report import add_vendi, all_texts, collect_rounds, format_report

    def judge(instruction):
        return {"valid": 1, "score": 20 + 10 * instruction.count("[")}

    settings = {"rounds": 2, "sample_size": 1, "operations": ["deepen", "breadth"], "children": 2, "top_fraction": 0.5}
    nested, _ = evolve_one(
        ROOT,
        Script(
            evolve=fresh,
            judge=judge,
            answer=lambda i: (
                "Sorry." if "[breadth 1]" in i[-300:] and i.count("[") == 1 else "A full answer with enough words."
            ),
        ),
        **settings,
    )
    stats = collect_rounds([nested])
    assert [s.round for s in stats] == [0, 1, 2]
    assert (stats[0].generated, stats[0].valid, stats[0].mean_score) == (1, 1, 20)
    assert (stats[1].generated, stats[1].judged, stats[1].valid, stats[1].carried) == (4, 3, 3, 1)
    assert stats[1].eliminated == {"unanswerable": 1} and stats[1].mean_score == 30
    assert (stats[2].generated, stats[2].valid, stats[2].mean_score) == (4, 4, 40)
    texts = all_texts(stats)
    assert len(texts) == 1 + 3 + 4 and texts[0] == ROOT["input"]
    # identical vectors within a round -> Vendi 1; orthogonal -> n
    vectors = np.zeros((8, 8))
    vectors[0, 0] = 1
    vectors[1:4, 1] = 1
    vectors[4:8] = np.eye(8)[4:8]
    add_vendi(stats, vectors)
    assert [round(s.vendi, 6) for s in stats] == [1.0, 1.0, 4.0] and stats[2].vendi_per_item == 1.0
    with pytest.raises(ValueError):
        add_vendi(stats, vectors[:5])
    assert "mean score" in format_report(stats) and "unanswerable 1" in format_report(stats)

    flat, _ = evolve_one(ROOT, Script(evolve=fresh, judge=judge), output="flat", **settings)
    flat_stats = collect_rounds(flat)
    assert [(s.round, s.valid) for s in flat_stats] == [(0, 1), (1, 4), (2, 4)]
    assert flat_stats[2].mean_score == 40
    with pytest.raises(ValueError, match="not evol_instruct output"):
        collect_rounds([{"id": "x", "input": "y"}])

    data = tmp_path / "nested.jsonl"
    data.write_text(json.dumps(nested) + "\n", "utf-8")
    result = CliRunner().invoke(evol_group, ["report", str(data), "--embedder", "none", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rounds"]
    assert [r["mean_score"] for r in rows] == [20, 30, 40] and rows[2]["vendi"] is None


def test_children_copied_from_the_evolving_prompt_or_without_content_are_eliminated():
    def evolve(op, parent, count):
        return [
            "Which underlying health problems can cause constantly cold hands and feet?",  # the prompt's example
            "...",
            "How do I bake bread in a wood-fired oven?",
        ]

    def labelled(op, parent, count):
        return [{"instruction": x, "task_label": "t"} for x in evolve(op, parent, count)]

    out, _ = evolve_one(
        ROOT, Script(evolve=labelled), rounds=1, operations=["redirect"], children=3, eliminate=["leak", "duplicate"]
    )
    assert eliminated(out) == {
        "Which underlying health problems can cause constantly cold hands and feet?": "leak",
        "...": "empty",
    }
    # repeating the parent is not a leak (the parent's text is cut out of the prompt): the equal rule's job
    out, _ = evolve_one(
        ROOT, Script(evolve=lambda op, p, n: [p]), rounds=1, operations=["deepen"], children=1, eliminate=["leak"]
    )
    assert eliminated(out) == {} and len(candidates(out)) == 1
