"""Other steps reading verify verdicts: a verifier as a voter, a cascade gated on a failed check, and a pipeline
that filters on the verdict. (dpo and evol_instruct: tests/test_verify_dpo_evol.py.)"""

from __future__ import annotations

import json

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError, InputError
from joydataforge.methods.vote.step import Cascade, Vote
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import registry_of, run_records
from tests.support.harness import run_step as harness_run_step

REGISTRY = registry_of(["a", "b", "strong"])
LABELS = {"labels": ["correct", "wrong"]}


def says(label):
    return ScriptedBackend(lambda messages, schema: json.dumps({"label": label, "reason": "r"}))


def run_step(step, record, backends):
    return harness_run_step(step, record, backends, registry=REGISTRY)


def config_error(kind, settings):
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{kind: settings}]}, source="pipeline.yaml")
    return str(info.value)


PASSED = {"passed": True, "status": "passed", "checker": "math", "reason": "6 equals 6", "details": {}}
FAILED = {"passed": False, "status": "failed", "checker": "math", "reason": "5 differs from 6", "details": {}}
UNDECIDED = {"passed": False, "status": "error", "checker": "math", "reason": "unreadable reference", "details": {}}


# --- vote ---------------------------------------------------------------------------------------------


def test_a_verifier_breaks_a_tie_between_two_models():
    step = Vote(["a", "b"], options=LABELS, verifiers=[{"pass_label": "correct", "fail_label": "wrong"}])
    backends = {"a": says("correct"), "b": says("wrong")}
    out = run_step(step, {"input": "q", "verify": FAILED}, backends)
    assert out["vote"]["outcome"] == "majority" and out["vote"]["label"] == "wrong"
    assert out["votes"]["verify"] == {
        "label": "wrong",
        "reason": "5 differs from 6",
        "verifier": "verify",
        "status": "failed",
    }
    assert out["vote"]["voters"] == 3
    assert run_step(step, {"input": "q", "verify": PASSED}, backends)["vote"]["label"] == "correct"
    assert step.counters["verifier:verify:failed"] == 1 and step.counters["verifier:verify:passed"] == 1


def test_a_weighted_verifier_outvotes_both_models():
    step = Vote(["a", "b"], options=LABELS, verifiers=[{"pass_label": "correct", "fail_label": "wrong", "weight": 3}])
    out = run_step(step, {"input": "q", "verify": FAILED}, {"a": says("correct"), "b": says("correct")})
    assert out["vote"]["label"] == "wrong" and out["vote"]["counts"] == {"wrong": 3, "correct": 2}


def test_an_undecided_or_unlabelled_failed_check_does_not_vote():
    step = Vote(
        ["a", "b"], options=LABELS, verifiers=[{"verdict_field": "check", "name": "math", "pass_label": "correct"}]
    )
    backends = {"a": says("correct"), "b": says("wrong")}
    for verdict in (UNDECIDED, FAILED):
        out = run_step(step, {"input": "q", "check": verdict}, backends)
        assert out["vote"]["outcome"] == "tie" and out["vote"]["failed_voters"] == ["math"]
        assert "error" in out["votes"]["math"]


def test_a_missing_verdict_is_bad_input():
    step = Vote(["a"], options=LABELS, verifiers=[{"pass_label": "correct"}])
    with pytest.raises(InputError) as caught:
        run_step(step, {"input": "q"}, {"a": says("correct")})
    assert caught.value.field == "verify"


def test_verifier_settings_are_checked():
    assert "steps[0] (vote).verifiers: voter names must be unique" in config_error(
        "vote", {"models": ["a", "verify"], "verifiers": [{"pass_label": "x"}]}
    )
    assert "(vote).verifiers[0].fail_label: 'bad' is not one of options.labels" in config_error(
        "vote",
        {"models": ["a"], "options": {"labels": ["x", "y"]}, "verifiers": [{"pass_label": "x", "fail_label": "bad"}]},
    )
    assert "(vote).verifiers[0].pass_label: required setting is missing" in config_error(
        "vote", {"models": ["a"], "verifiers": [{}]}
    )
    # a quorum counts the verifiers' weight: 4 is reachable by two models and a verifier of weight 2
    Pipeline.from_dict(
        {
            "input": {"path": "x"},
            "steps": [{"vote": {"models": ["a", "b"], "quorum": 4, "verifiers": [{"pass_label": "x", "weight": 2}]}}],
        }
    )


# --- cascade ------------------------------------------------------------------------------------------

VOTE = {"label": "correct", "outcome": "majority", "counts": {"correct": 2}}


def test_cascade_sends_records_whose_check_failed():
    step = Cascade("strong", gate_labels=["never"], gate_on_failed_verify=True, options=LABELS)
    backends = {"strong": says("wrong")}
    gated = run_step(step, {"input": "q", "vote": VOTE, "verify": FAILED}, backends)
    assert gated["cascade"]["because"] == "verify_failed" and gated["label"] == "wrong"
    assert gated["label_source"] == "cascade" and gated["cascade"]["changed"] is True
    undecided = run_step(step, {"input": "q", "vote": VOTE, "verify": UNDECIDED}, backends)
    assert undecided["cascade"]["because"] == "verify_failed"
    passed = run_step(step, {"input": "q", "vote": VOTE, "verify": PASSED}, backends)
    assert passed["cascade"] == {"gated": False} and passed["label"] == "correct"
    assert step.counters["gated:verify_failed"] == 2 and len(backends["strong"].calls) == 2


def test_cascade_gate_on_verify_alone_is_enough_and_needs_the_verdict():
    step = Cascade("strong", gate_on_failed_verify=True, verify_field="check", options=LABELS)
    with pytest.raises(InputError) as caught:
        run_step(step, {"input": "q", "vote": VOTE}, {"strong": says("x")})
    assert caught.value.field == "check"
    assert "gate_on_failed_verify" in config_error("cascade", {"model": "strong"})


# --- a pipeline that filters on the verdict -----------------------------------------------------------


def test_generate_then_verify_drops_wrong_answers(tmp_path):
    answers = {"What is 2+3?": "2 + 3 = 5, so the answer is 5.", "What is 2*3?": "The answer is \\boxed{5}"}
    backend = ScriptedBackend(lambda messages, schema: answers[messages[-1]["content"]])
    records = [
        {"id": "add", "input": "What is 2+3?", "answer": "5"},
        {"id": "mul", "input": "What is 2*3?", "answer": "6"},
    ]
    steps = [
        {"generate": {"model": "a", "prompt": "answer"}},
        {"verify": {"checker": "math", "reference_field": "answer", "on_fail": "drop"}},
    ]
    result = run_records(tmp_path, records, steps, {"a": backend})
    assert [r["id"] for r in result.data] == ["add"]
    assert result.data[0]["verify"]["details"]["answer"] == "5"
    assert result.summary.steps["verify"] == {"passed": 1, "failed": 1, "dropped": 1}
    assert result.failures == []
