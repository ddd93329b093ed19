"""Vote and vote-then-cascade with scripted replies per model: every aggregation rule, tie, quorum
(int and fraction), weights, failed voters, all-failed, cascade gating, cascade failure."""

import asyncio
import json

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError, InputError, StepError
from joydataforge.methods.vote.aggregate import aggregate
from joydataforge.methods.vote.step import Cascade, Vote
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import registry_of, run_pipeline, step_context
from tests.support.harness import run_step as harness_run_step

NAMES = ["a", "b", "c", "d", "e", "strong"]
REGISTRY = registry_of(NAMES)
LABELS = ["drug", "other", "bmi"]


def says(label, reason="r"):
    """A backend that always answers ``label`` (or a raw string when ``label`` starts with 'RAW:')."""

    def reply(messages, schema):
        if label.startswith("RAW:"):
            return label[4:]
        return json.dumps({"label": label, "reason": f"{reason}:{label}"})

    return ScriptedBackend(reply)


def context(backends):
    ctx = step_context(backends, registry=REGISTRY)
    return ctx, ctx.gateway


def config_error(kind, settings):
    """The message a pipeline file with one step of ``kind`` gets for ``settings``."""
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{kind: settings}]}, source="pipeline.yaml")
    return str(info.value)


def run_step(step, record, backends):
    return harness_run_step(step, record, backends, registry=REGISTRY)


RECORD = {"id": "r1", "input": "can I take ibuprofen?"}


# --- the pure rules ---------------------------------------------------------------------------------


def test_unanimous_majority_has_agreement_one():
    result = aggregate({"a": "x", "b": "x", "c": "x"}, {"a": 1, "b": 1, "c": 1})
    assert (result.outcome, result.label, result.agreement, result.support) == ("majority", "x", 1.0, 3)


def test_two_of_three_is_a_majority_by_default_and_agreement_is_two_thirds():
    result = aggregate({"a": "x", "b": "y", "c": "x"}, {"a": 1, "b": 1, "c": 1})
    assert result.outcome == "majority" and result.label == "x"
    assert result.agreement == pytest.approx(2 / 3)
    assert result.counts == {"x": 2, "y": 1}
    assert result.as_dict()["required"] == ">1.5"


def test_default_quorum_two_of_four_is_a_tie_and_three_labels_of_four_no_quorum():
    weights = dict.fromkeys("abcd", 1)
    tie = aggregate({"a": "x", "b": "y", "c": "x", "d": "y"}, weights)
    assert tie.outcome == "tie" and tie.label is None and tie.tied == ["x", "y"]
    # 2 of 4 leads but is not more than half: no quorum (the seed's "3 of 4").
    no_quorum = aggregate({"a": "x", "b": "y", "c": "x", "d": "z"}, weights)
    assert no_quorum.outcome == "no_quorum" and no_quorum.label is None
    assert aggregate({"a": "x", "b": "x", "c": "x", "d": "z"}, weights).label == "x"


def test_three_way_split_is_a_tie_not_the_first_label_seen():
    result = aggregate({"a": "x", "b": "y", "c": "z"}, dict.fromkeys("abc", 1))
    assert result.outcome == "tie" and result.label is None and result.tied == ["x", "y", "z"]


def test_int_quorum():
    weights = dict.fromkeys("abcde", 1)
    votes = {"a": "x", "b": "x", "c": "y", "d": "z", "e": "w"}
    assert aggregate(votes, weights, quorum=2).outcome == "majority"
    assert aggregate(votes, weights, quorum=3).outcome == "no_quorum"


def test_fraction_quorum_counts_failed_voters_in_the_denominator():
    weights = dict.fromkeys("abc", 1)
    # Two agree out of three voters: 2/3 >= 0.6
    assert aggregate({"a": "x", "b": "x", "c": "y"}, weights, quorum=0.6).label == "x"
    # Two failed, one voted: agreement among valid votes is 1.0, but 1/3 < 0.6 of all voters.
    result = aggregate({"a": "x", "b": None, "c": None}, weights, quorum=0.6)
    assert result.outcome == "no_quorum" and result.agreement == 1.0 and result.failed == ["b", "c"]
    assert aggregate({"a": "x", "b": "x", "c": None}, weights, quorum=0.6).label == "x"
    assert aggregate({"a": "x", "b": "x", "c": None}, weights, quorum=0.7).outcome == "no_quorum"


def test_weights_decide_and_can_break_what_counts_would_call_a_tie():
    votes = {"a": "x", "b": "y", "c": "y"}
    assert aggregate(votes, {"a": 1, "b": 1, "c": 1}).label == "y"
    heavy = aggregate(votes, {"a": 3, "b": 1, "c": 1})
    assert heavy.label == "x" and heavy.support == 3 and heavy.agreement == pytest.approx(0.6)
    tie = aggregate({"a": "x", "b": "y", "c": "y"}, {"a": 2, "b": 1, "c": 1})
    assert tie.outcome == "tie"


def test_fractional_weights_strict_majority():
    # total 4; x has 2.5 > 2 -> majority; with 2.0 exactly half -> no quorum
    assert aggregate({"a": "x", "b": "y", "c": "z"}, {"a": 2.5, "b": 1, "c": 0.5}).label == "x"
    result = aggregate({"a": "x", "b": "y", "c": "z"}, {"a": 2.0, "b": 1.5, "c": 0.5})
    assert result.outcome == "no_quorum"


def test_failed_and_empty_labels_do_not_vote():
    result = aggregate({"a": "x", "b": "", "c": None}, dict.fromkeys("abc", 1), quorum=1)
    assert result.label == "x" and result.valid == 1 and result.failed == ["b", "c"]
    with pytest.raises(ValueError):
        aggregate({"a": None, "b": "  "}, {"a": 1, "b": 1})


@pytest.mark.parametrize("bad", [0, -1, 1.5, 0.0, True, "2"])
def test_bad_quorums_are_config_errors(bad):
    message = config_error("vote", {"models": ["a", "b", "c"], "quorum": bad})
    assert message.startswith("pipeline.yaml: steps[0] (vote).quorum: ") and "\n" not in message


# --- the vote step ----------------------------------------------------------------------------------


def test_vote_step_records_every_answer_and_the_aggregate():
    step = Vote(["a", "b", "c"], "en/vote_label", options={"labels": LABELS})
    backends = {"a": says("drug"), "b": says("other"), "c": says("drug")}
    out = run_step(step, RECORD, backends)
    assert out["votes"]["a"] == {"label": "drug", "reason": "r:drug"}
    assert out["votes"]["b"]["label"] == "other"
    assert out["vote"]["label"] == "drug" and out["vote"]["outcome"] == "majority"
    assert out["vote"]["counts"] == {"drug": 2, "other": 1} and out["vote"]["failed_voters"] == []
    assert [c["model"] for c in out["_meta"]["calls"]] == ["a", "b", "c"]
    # options.labels restricts every voter's schema enum
    assert backends["b"].calls[0]["schema"]["properties"]["label"]["enum"] == LABELS
    assert step.counters["outcome:majority"] == 1 and step.counters["label:drug"] == 1


class MeetingBackend(ScriptedBackend):
    """Answers only once ``expected`` calls, of all the voters, are under way together."""

    def __init__(self, reply, arrived: list[int], everyone: asyncio.Event, expected: int):
        super().__init__(reply)
        self.arrived, self.everyone, self.expected = arrived, everyone, expected

    async def chat(self, messages, params, *, json_schema=None, seed=None):
        self.arrived[0] += 1
        if self.arrived[0] == self.expected:
            self.everyone.set()
        await asyncio.wait_for(self.everyone.wait(), 30)  # one voter at a time would never get here
        return await super().chat(messages, params, json_schema=json_schema, seed=seed)


def test_voters_run_concurrently():
    async def scenario():
        arrived, everyone = [0], asyncio.Event()
        backends = {n: MeetingBackend(says("drug").reply, arrived, everyone, 3) for n in "abc"}
        ctx, _ = context(backends)
        step = Vote(["a", "b", "c"], "en/vote_label", options={"labels": LABELS})
        step.check(ctx)
        return await step.run(RECORD, ctx)

    out = asyncio.run(scenario())
    assert out["vote"]["label"] == "drug" and out["vote"]["counts"] == {"drug": 3}


def test_failed_voter_is_recorded_with_raw_and_does_not_vote():
    backends = {"a": says("drug"), "b": says("RAW:I think drug"), "c": says("other")}
    out = run_step(Vote(["a", "b", "c"], "en/vote_label", options={"labels": LABELS}), RECORD, backends)
    assert out["votes"]["b"]["raw"] == "I think drug" and "error" in out["votes"]["b"]
    # a and c disagree, b failed: a tie, never "drug" because a came first
    assert out["vote"]["outcome"] == "tie" and out["vote"]["label"] is None
    assert out["vote"]["failed_voters"] == ["b"] and out["vote"]["valid"] == 2


def test_empty_label_is_a_failed_voter_not_a_winner():
    backends = {"a": says(""), "b": says(""), "c": says("other")}
    schema = {"type": "object", "properties": {"label": {"type": "string"}, "reason": {"type": "string"}}}
    out = run_step(
        Vote(["a", "b", "c"], "en/vote_label", quorum=1, schema=schema, options={"labels": []}), RECORD, backends
    )
    assert out["vote"]["label"] == "other" and out["vote"]["failed_voters"] == ["a", "b"]
    assert "no label" in out["votes"]["a"]["error"]


def test_all_voters_failing_fails_the_record_with_the_raws():
    backends = {"a": says("RAW:nope"), "b": says("RAW:still no"), "c": says("RAW:{bad")}
    step = Vote(["a", "b", "c"], "en/vote_label", options={"labels": LABELS})
    with pytest.raises(StepError, match="every voter failed") as info:
        run_step(step, RECORD, backends)
    assert json.loads(info.value.raw) == {"a": "nope", "b": "still no", "c": "{bad"}
    assert step.counters["all_voters_failed"] == 1


def test_seed_fields_match_the_seed_output_shape():
    backends = {"a": says("drug"), "b": says("drug"), "c": says("other")}
    out = run_step(
        Vote(["a", "b", "c"], "en/vote_label", seed_fields=True, options={"labels": LABELS}), RECORD, backends
    )
    assert out["a_label"] == "drug" and out["c_reason"] == "r:other"
    assert out["a_scores"] == [] and out["a_res"] == []  # the original's values for a plain {label, reason}
    assert out["label_vote"] == "drug" and out["reason_vote"] == "voted"  # the original's word, not our outcome


def test_seed_fields_without_a_majority_are_empty_never_the_first_label():
    backends = {"a": says("drug"), "b": says("other"), "c": says("RAW:no json")}
    out = run_step(
        Vote(["a", "b", "c"], "en/vote_label", seed_fields=True, options={"labels": LABELS}), RECORD, backends
    )
    assert out["vote"]["outcome"] == "tie"
    assert (out["label_vote"], out["reason_vote"]) == ("", "")
    # A failed voter: what the original wrote once its retries ran out (no `_res`).
    assert (out["c_label"], out["c_reason"], out["c_scores"]) == ("", "", []) and "c_res" not in out


def test_weights_given_as_a_models_mapping():
    backends = {"a": says("drug"), "b": says("other"), "c": says("other")}
    out = run_step(Vote({"a": 3, "b": 1, "c": 1}, "en/vote_label", options={"labels": LABELS}), RECORD, backends)
    assert out["vote"]["label"] == "drug" and out["vote"]["counts"] == {"drug": 3, "other": 2}


def test_on_no_majority_drop_and_fail():
    backends = {"a": says("drug"), "b": says("other"), "c": says("bmi")}
    drop = Vote(["a", "b", "c"], "en/vote_label", on_no_majority="drop", options={"labels": LABELS})
    assert run_step(drop, RECORD, backends) is None and drop.counters["dropped:tie"] == 1
    fail = Vote(["a", "b", "c"], "en/vote_label", on_no_majority="fail", options={"labels": LABELS})
    with pytest.raises(StepError, match="tie"):
        run_step(fail, RECORD, backends)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"models": []}, "models: must have at least 1 item(s)"),
        ({"models": ["a", "a"]}, "models: a model may vote only once"),
        ({"models": ["a", "b"], "weights": {"z": 1}}, "weights: names models that do not vote: ['z']"),
        ({"models": ["a", "b"], "weights": {"a": 0}}, "weights.a: must be > 0"),
        ({"models": ["a", "b"], "quorum": 3}, "quorum: 3 can never be reached"),
        ({"models": ["a", "b"], "on_no_majority": "guess"}, "on_no_majority: must be one of"),
    ],
)
def test_vote_config_errors(settings, message):
    assert config_error("vote", settings).startswith(f"pipeline.yaml: steps[0] (vote).{message}")


# --- cascade ----------------------------------------------------------------------------------------


def voted(backends, quorum=None):
    return run_step(Vote(["a", "b", "c"], "en/vote_label", quorum=quorum, options={"labels": LABELS}), RECORD, backends)


def test_cascade_gates_by_label_list_and_keeps_the_vote():
    record = voted({"a": says("drug"), "b": says("drug"), "c": says("other")})
    strong = says("other", reason="strong")
    step = Cascade("strong", "en/cascade_label", gate_labels=["drug"], options={"labels": LABELS, "show_votes": True})
    out = run_step(step, record, {"strong": strong})
    assert out["label"] == "other" and out["reason"] == "strong:other" and out["label_source"] == "cascade"
    assert out["cascade"] == {
        "gated": True,
        "because": "label:drug",
        "model": "strong",
        "label": "other",
        "changed": True,
    }
    assert out["vote"]["label"] == "drug" and out["votes"]["a"]["label"] == "drug"
    # the stronger model saw the votes as context
    assert "- drug: r:drug" in strong.calls[0]["messages"][-1]["content"]
    assert step.counters["gated"] == 1 and step.counters["cascade_calls"] == 1
    assert step.counters["changed_by_cascade"] == 1


def test_cascade_passes_other_labels_without_a_call():
    record = voted({"a": says("other"), "b": says("other"), "c": says("drug")})
    strong = says("drug")
    step = Cascade("strong", "en/cascade_label", gate_labels=["drug"], options={"labels": LABELS})
    out = run_step(step, record, {"strong": strong})
    assert strong.calls == [] and out["label"] == "other" and out["label_source"] == "vote"
    assert out["cascade"] == {"gated": False} and step.counters["passed"] == 1


def test_cascade_gates_no_quorum_and_tie_only_when_asked():
    tie = voted({"a": says("drug"), "b": says("other"), "c": says("bmi")})
    no_quorum = voted({"a": says("drug"), "b": says("drug"), "c": says("other")}, quorum=3)
    assert tie["vote"]["outcome"] == "tie" and no_quorum["vote"]["outcome"] == "no_quorum"

    only_labels = Cascade("strong", "en/cascade_label", gate_labels=["drug"], options={"labels": LABELS})
    out = run_step(only_labels, tie, {"strong": says("bmi")})
    assert out["label"] is None and out["label_source"] == "undecided"
    out = run_step(only_labels, no_quorum, {"strong": says("bmi")})
    assert out["label"] is None and out["label_source"] == "undecided"  # no majority, so no label gate

    step = Cascade("strong", "en/cascade_label", gate_no_quorum=True, gate_tie=True, options={"labels": LABELS})
    assert run_step(step, no_quorum, {"strong": says("bmi")})["cascade"] == {
        "gated": True,
        "because": "no_quorum",
        "model": "strong",
        "label": "bmi",
    }  # no "changed": no label to change
    assert run_step(step, tie, {"strong": says("bmi")})["label"] == "bmi"
    assert step.counters["gated:no_quorum"] == 1 and step.counters["gated:tie"] == 1


def test_cascade_failure_fails_the_record_with_raw():
    record = voted({"a": says("drug"), "b": says("drug"), "c": says("other")})
    step = Cascade("strong", "en/cascade_label", gate_labels=["drug"], options={"labels": LABELS})
    with pytest.raises(StepError, match="cascade to 'strong' failed") as info:
        run_step(step, record, {"strong": says("RAW:it is a drug question")})
    assert info.value.raw == "it is a drug question" and step.counters["cascade_failures"] == 1


def test_cascade_failure_keep_vote_is_marked():
    record = voted({"a": says("drug"), "b": says("drug"), "c": says("other")})
    step = Cascade(
        "strong", "en/cascade_label", gate_labels=["drug"], on_cascade_failure="keep_vote", options={"labels": LABELS}
    )
    out = run_step(step, record, {"strong": says("RAW:garbage")})
    assert out["label"] == "drug" and out["label_source"] == "vote_kept_after_cascade_failure"
    assert out["cascade"]["raw"] == "garbage" and "error" in out["cascade"]
    # nothing to keep after a tie: still a failure
    tie = voted({"a": says("drug"), "b": says("other"), "c": says("bmi")})
    gate_tie = Cascade(
        "strong", "en/cascade_label", gate_tie=True, on_cascade_failure="keep_vote", options={"labels": LABELS}
    )
    with pytest.raises(StepError):
        run_step(gate_tie, tie, {"strong": says("RAW:garbage")})


def test_cascade_without_a_vote_names_the_field():
    step = Cascade("strong", "en/cascade_label", gate_labels=["drug"], options={"labels": LABELS})
    with pytest.raises(InputError) as info:
        run_step(step, RECORD, {"strong": says("drug")})
    assert info.value.field == "vote"


def test_cascade_config_errors():
    assert config_error("cascade", {"model": "strong"}).startswith(
        "pipeline.yaml: steps[0] (cascade).gate_labels: nothing would be gated"
    )
    assert config_error("cascade", {"model": "strong", "gate_tie": True, "on_cascade_failure": "ignore"}).startswith(
        "pipeline.yaml: steps[0] (cascade).on_cascade_failure: must be one of"
    )


# --- through the executor: counters in the summary, failures in failures.jsonl ----------------------


def test_vote_cascade_pipeline_counts_gated_and_passed(tmp_path):
    records = [
        {"id": "q1", "input": "DRUG dosage"},
        {"id": "q2", "input": "OTHER hello"},
        {"id": "q3", "input": "SPLIT what"},
        {"id": "q4", "input": "BROKEN"},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def voter(name):
        def reply(messages, schema):
            text = messages[-1]["content"]
            if "BROKEN" in text:
                return "not json"
            if "SPLIT" in text:
                return json.dumps({"label": {"a": "drug", "b": "other", "c": "bmi"}[name], "reason": name})
            return json.dumps({"label": "drug" if "DRUG" in text else "other", "reason": name})

        return ScriptedBackend(reply)

    strong = ScriptedBackend(lambda m, s: json.dumps({"label": "drug", "reason": "confirmed"}))
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [
                {"vote": {"models": ["a", "b", "c"], "prompt": "en/vote_label", "options": {"labels": LABELS}}},
                {
                    "cascade": {
                        "model": "strong",
                        "prompt": "en/cascade_label",
                        "gate_labels": ["drug"],
                        "gate_tie": True,
                        "options": {"labels": LABELS},
                    }
                },
            ],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False},
        }
    )
    backends = {"a": voter("a"), "b": voter("b"), "c": voter("c"), "strong": strong}
    summary = run_pipeline(pipeline, backends, registry=REGISTRY).summary
    out = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "data.jsonl").read_text().splitlines())}
    failures = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert summary.records_out == 3 and summary.failed == 1
    assert failures[0]["id"] == "q4" and "every voter failed" in failures[0]["error"]
    assert out["q1"]["label_source"] == "cascade" and out["q2"]["label_source"] == "vote"
    assert out["q3"]["cascade"]["because"] == "tie" and out["q3"]["label"] == "drug"
    assert summary.steps["cascade"]["gated"] == 2 and summary.steps["cascade"]["passed"] == 1
    assert summary.steps["cascade"]["cascade_calls"] == 2 and len(strong.calls) == 2
    assert summary.steps["vote"]["all_voters_failed"] == 1 and summary.steps["vote"]["outcome:tie"] == 1


def test_vote_and_cascade_as_python_objects(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(RECORD) + "\n")
    pipeline = Pipeline(
        input={"path": str(tmp_path / "in.jsonl")},
        steps=[
            Vote(["a", "b", "c"], "en/vote_label", quorum=0.5, options={"labels": LABELS}),
            Cascade("strong", "en/cascade_label", gate_labels=["drug"], options={"labels": LABELS}),
        ],
        output={"dir": str(tmp_path / "out")},
        run={"cache": None, "progress": False},
    )
    backends = {"a": says("drug"), "b": says("drug"), "c": says("other"), "strong": says("bmi")}
    summary = run_pipeline(pipeline, backends, registry=REGISTRY).summary
    out = json.loads((tmp_path / "out" / "data.jsonl").read_text())
    assert summary.records_out == 1 and out["vote"]["label"] == "drug" and out["label"] == "bmi"
