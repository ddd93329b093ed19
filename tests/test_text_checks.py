"""The shared text sanity rules: each rule, its switch and threshold, and what each generating step does
with a text that fails (issue 14: ``"}].join(["``, ``"123"`` and ``"2"`` kept as questions, instructions
and rewrites; Evol scoring ``"2"`` a valid instruction; a fused answer keeping ``候选回答 4：``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.config.text_checks import RULES, TextChecks
from joydataforge.errors import ConfigError, StepError
from joydataforge.methods.critique.step import CritiqueRevise
from joydataforge.methods.dpo.step import PreferencePairs
from joydataforge.methods.generate.step import Generate
from joydataforge.methods.joint.step import Joint
from joydataforge.prompts.renderer import PromptLibrary
from joydataforge.text.sanity import TextSanity, prompt_labels
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import registry_of, run_records, run_step
from tests.test_evol_instruct import ROOT, Script, eliminated, evolve_one, fresh

PROMPTS = PromptLibrary()
FUSE_ZH = PROMPTS.get("zh/joint_fuse")
RECORD = {"id": "r1", "input": "How do I boil an egg?"}
REGISTRY = registry_of(["m", "a", "b", "fuser", "author", "critic", "judge"])


def text(reply: str) -> ScriptedBackend:
    return ScriptedBackend(lambda messages, schema: reply)


def rule_of(text: str, prompt=None, **settings) -> str | None:
    problem = TextSanity(TextChecks(**settings)).problem(text, prompt)
    return problem.rule if problem else None


# ---------------------------------------------------------------- each rule, on and off


@pytest.mark.parametrize(
    ("junk", "rule"),
    [
        ("2", "no_letters"),
        ("123", "no_letters"),
        ("}{", "no_letters"),
        ("好", "too_short"),
        ('"}].join(["', "debris"),
        ('The answer is {"', "debris"),
        ('"}, {"input": "x', "debris"),
        ("{[(<a>)]};;", "debris"),
        ("the the the the the end", "repetition"),
        ("你好你好你好你好你好", "repetition"),
        ("### Instruction\nWrite a poem", "scaffolding"),
        ("<|im_start|>assistant\nHello", "scaffolding"),
        ("Candidate answer 2: boil it", "scaffolding"),
    ],
)
def test_each_rule_catches_its_junk_and_can_be_turned_off(junk, rule):
    assert rule_of(junk) == rule
    assert rule_of(junk, **{rule: False}) != rule  # its own switch turns it off
    assert TextSanity(TextChecks.model_validate(False)).problem(junk) is None  # `text_checks: false`: all off


@pytest.mark.parametrize(
    "fine",
    [
        "你好",
        "Paris is the capital of France.",
        "Use `print('hi')` to print, and `len(x)` for the length.",
        "def f(x):\n    return {'a': [x, (x)]}\n",
        '{"name": "Alice", "age": 30}',
        "f(x) = (a + b)(c + d)",
        "Price: 1000000 dollars, 0.0001 percent.",
        "注意：服药期间不要饮酒。",
        "哈哈哈哈，好的",
    ],
)
def test_ordinary_answers_pass(fine):
    assert TextSanity().problem(fine, FUSE_ZH) is None


def test_thresholds():
    assert rule_of("好", min_chars=1) is None
    assert rule_of("你好", min_chars=3) == "too_short"
    assert rule_of("f(x)=(a+b)(c+d)", max_symbol_share=0.3) == "debris"
    assert rule_of("the the the the the end", max_repeats=5) is None
    assert rule_of("the the end", max_repeats=1) == "repetition"
    assert rule_of("Write it NOW please", scaffolding_phrases=["now please"]) == "scaffolding"


def test_scaffolding_labels_come_from_the_prompt_template():
    labels = prompt_labels(FUSE_ZH.system, FUSE_ZH.user)
    assert labels is not None
    assert labels.search("综合来看，候选回答 4：说得最全") is not None  # a numbered label, anywhere
    assert labels.search("用户问题：如何煮蛋") is not None  # a plain label, at a line start
    assert labels.search("关于这个用户问题：我认为") is None  # ... not inside a sentence
    assert prompt_labels(PROMPTS.get("zh/answer").system, PROMPTS.get("zh/answer").user) is None
    assert rule_of("候选回答 4：先把水烧开", FUSE_ZH) == "scaffolding"
    assert rule_of("用户问题：如何煮蛋") is None  # without the prompt only the generic list applies
    revise = PROMPTS.get("en/revise")
    assert rule_of("Your previous answer:\nBoil it.", revise) == "scaffolding"


def test_a_label_in_the_record_is_not_scaffolding():
    """Labels come from the template's source: the record's own text, rendered into the prompt, is not one."""
    template = PROMPTS.get("en/answer")
    assert template.render({"input": "Question: what is 2+2?"})  # the record says "Question:"
    assert rule_of("Question: what is 2+2? Answer: 4.", template) is None


def test_settings_errors_name_the_field():
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(
            {"input": {"path": "in.jsonl"}, "steps": [{"generate": {"model": "m", "text_checks": {"min_char": 3}}}]},
            source="p.yaml",
        )
    assert "text_checks.min_char" in str(info.value) and "min_chars" in str(info.value)
    assert "\n" not in str(info.value)
    assert TextChecks.model_validate(True) == TextChecks()
    assert TextChecks().enabled() == list(RULES)


# ---------------------------------------------------------------- per step kind


def test_generate_fails_the_record_and_keeps_the_raw_reply(tmp_path: Path):
    records = [{"id": "ok", "input": "How do I boil an egg?"}, {"id": "junk", "input": "give me a json"}]

    def reply(messages, schema):
        return '"}].join(["' if "json" in messages[-1]["content"] else "Put it in boiling water."

    result = run_records(
        tmp_path, records, [{"generate": {"model": "m", "prompt": "en/answer"}}], {"m": ScriptedBackend(reply)}
    )
    assert [r["id"] for r in result.data] == ["ok"]
    [failure] = result.failures
    assert failure["id"] == "junk" and failure["raw"] == '"}].join(["' and "text check debris" in failure["error"]
    assert result.summary.steps["generate"]["text_check:debris"] == 1


def test_generate_with_the_rule_off_keeps_the_reply():
    step = Generate("m", "en/answer", text_checks={"no_letters": False})
    assert run_step(step, RECORD, {"m": text("123")}, registry=REGISTRY)["target"] == "123"
    with pytest.raises(StepError, match="no_letters"):
        run_step(Generate("m", "en/answer"), RECORD, {"m": text("123")}, registry=REGISTRY)


def test_rewrite_drops_and_counts_junk_cases(tmp_path: Path):
    def reply(messages, schema):
        return json.dumps(
            {
                "cases": [
                    {"type": "paraphrase", "input": "123"},
                    {"type": "tone", "input": '"}].join(["'},
                    {"type": "detail", "input": "How long should I boil an egg for a soft yolk?"},
                ]
            }
        )

    steps = [{"rewrite": {"model": "m", "types": ["paraphrase", "tone", "detail"]}}]
    result = run_records(tmp_path, [RECORD], steps, {"m": ScriptedBackend(reply)})
    assert [r["input"] for r in result.data] == ["How long should I boil an egg for a soft yolk?"]
    stats = result.summary.steps["rewrite"]
    assert stats["text_check:no_letters"] == 1 and stats["text_check:debris"] == 1


def test_seedless_rejects_junk_items_and_tops_up(tmp_path: Path):
    replies = iter(["2", "What should a beginner know about baking bread?"])

    def reply(messages, schema):
        return json.dumps({"records": [{"input": next(replies)}]})

    steps = [{"seedless": {"model": "m", "n_per_topic": 1}}]
    result = run_records(tmp_path, [{"id": "t", "topic": "baking"}], steps, {"m": ScriptedBackend(reply)})
    assert [r["input"] for r in result.data] == ["What should a beginner know about baking bread?"]
    assert result.summary.steps["seedless"]["text_check:no_letters"] == 1


def test_seedless_topic_with_only_junk_fails_naming_the_rule(tmp_path: Path):
    reply = json.dumps({"records": [{"input": "x"}]})
    steps = [{"seedless": {"model": "m", "n_per_topic": 1, "max_calls": 2}}]
    result = run_records(tmp_path, [{"id": "t", "topic": "baking"}], steps, {"m": text(reply)})
    [failure] = result.failures
    assert "last item not kept: text_check:too_short" in failure["error"] and failure["raw"] == reply


def test_joint_fused_answer_with_the_prompts_scaffolding_fails():
    step = Joint(["a", "b"], "fuser", draft_prompt="zh/answer", fuse_prompt="zh/joint_fuse")
    backends = {
        "a": text("把鸡蛋放进沸水里煮八分钟。"),
        "b": text("水开后煮七到九分钟。"),
        "fuser": text("候选回答 2：煮八分钟。"),
    }
    with pytest.raises(StepError, match="scaffolding") as info:
        run_step(step, {"id": "r", "input": "鸡蛋要煮多久？"}, backends, registry=REGISTRY)
    assert info.value.raw == "候选回答 2：煮八分钟。"
    assert step.counters["text_check:scaffolding"] == 1


def test_joint_junk_draft_is_a_failed_draft_the_fuser_never_sees():
    fuser = text("Boil it for eight minutes.")
    step = Joint(["a", "b", "a"], "fuser", draft_prompt="en/answer", min_drafts=2)
    out = run_step(step, RECORD, {"a": text("Boil it in water."), "b": text("}{"), "fuser": fuser}, registry=REGISTRY)
    assert "text check no_letters" in out["drafts"][1]["error"] and out["joint"]["used_drafts"] == [0, 2]
    assert "}{" not in fuser.calls[0]["messages"][-1]["content"]
    assert step.counters["text_check:no_letters"] == 1


def test_critique_revision_that_fails_a_check_fails_the_record():
    critique = json.dumps({"issues": ["too short"], "verdict": "revise", "score": 3})
    revisions = iter(["Boil the egg.", "the the the the the the"])
    author = ScriptedBackend(lambda messages, schema: next(revisions))
    step = CritiqueRevise("author", "critic", rounds=1)
    with pytest.raises(StepError, match="revision#1 .* repetition"):
        run_step(step, RECORD, {"author": author, "critic": text(critique)}, registry=REGISTRY)
    assert step.counters["text_check:repetition"] == 1


def test_evol_eliminates_a_bare_number_the_judge_would_call_valid():
    """Issue 14: Evol scored "2" a valid instruction (65). Now it never reaches the judge."""
    script = Script(
        evolve=lambda op, parent, count: ["2", *fresh(op, parent, count - 1)],
        judge=lambda instruction: {"valid": 1, "score": 65},
    )
    out, step = evolve_one(ROOT, script, rounds=1, operations=["constraints"], children=2)
    assert eliminated(out)["2"] == "text_check"
    entry = next(e for e in out["wizard_llm_querys"][0]["l_eliminated_instructions"] if e["instruction"] == "2")
    assert "no_letters" in entry["detail"]
    assert "2" not in [c["instruction"] for c in script.calls("judge")]
    assert step.counters["text_check:no_letters"] == 1 and step.counters["eliminated:text_check"] == 1


def test_evol_eliminates_a_child_whose_answer_is_junk():
    script = Script(evolve=fresh, answer=lambda instruction: '"}].join(["')
    out, step = evolve_one(ROOT, script, rounds=1, operations=["constraints"], children=1)
    [reason] = eliminated(out).values()
    assert reason == "text_check" and step.counters["text_check:debris"] == 1


def test_dpo_skips_generated_junk_candidates_but_not_given_ones():
    answers = iter(["Boil it for eight minutes.", "123"])
    generator = ScriptedBackend(lambda messages, schema: next(answers))

    def judge(messages, schema):
        return json.dumps({aspect: {"rationale": "ok", "score": 5} for aspect in schema["properties"]})

    step = PreferencePairs(
        judges=["judge"], models=["m"], samples=2, candidates_field="given", output="scores", min_candidates=2
    )
    record = {**RECORD, "given": ["7"]}
    out = run_step(step, record, {"m": generator, "judge": ScriptedBackend(judge)}, registry=REGISTRY)
    sources = out["candidate_sources"]
    assert "skipped" not in sources[0]  # "7" came with the record: data, not generated text
    assert sources[2]["skipped"] == "text_check:no_letters"
    assert out["candidate_scores"][2] is None and step.counters["text_check:no_letters"] == 1
