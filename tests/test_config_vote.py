"""Settings of ``vote`` and ``cascade``: each mistake is one line naming the file, the step, the setting."""

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.vote.config import CascadeConfig, VoteConfig
from joydataforge.methods.vote.step import Cascade, Vote
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

WHERE = "pipeline.yaml: steps[1]"


def error_of(kind: str, settings: dict) -> str:
    """The message for a pipeline whose second step is ``kind`` with ``settings`` (the first one is fine)."""
    return pipeline_error([A_GOOD_FIRST_STEP, {kind: settings}])


VOTERS = {"models": ["a", "b", "c"]}


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({**VOTERS, "seed_fields": "often"}, "(vote).seed_fields: must be true or false (got 'often')"),
        ({"models": "a"}, "(vote).models: must be a list of model names or a mapping name -> weight (got 'a')"),
        ({**VOTERS, "quorum": "two"}, "(vote).quorum: must be an integer (votes) or a fraction in (0, 1] (got 'two')"),
        ({**VOTERS, "quorum": True}, "(vote).quorum: must be an integer (votes) or a fraction in (0, 1] (got true)"),
        ({**VOTERS, "weights": {"a": True}}, "(vote).weights.a: must be a number (got true)"),
        ({"models": ["a", ""]}, "(vote).models[1]: must not be empty"),
        # out of range, invalid literal
        ({**VOTERS, "quorum": 0}, "(vote).quorum: must be at least 1 vote, or a fraction in (0, 1] (got 0)"),
        ({**VOTERS, "quorum": 1.5}, "(vote).quorum: a fractional quorum must be in (0, 1] (got 1.5)"),
        ({"models": []}, "(vote).models: must have at least 1 item(s) (got [])"),
        (
            {**VOTERS, "on_no_majority": "guess"},
            "(vote).on_no_majority: must be one of 'keep', 'drop' or 'fail' (got 'guess')",
        ),
        # unknown setting
        (
            {**VOTERS, "quorom": 2},
            "(vote).quorom: unknown setting (did you mean 'quorum'? known: judge_sees_reasoning, models, name, "
            "on_no_majority, options, output_field, params, prompt, quorum, schema, seed_fields, "
            "verifiers, votes_field, weights)",
        ),
        # cross-field checks
        ({**VOTERS, "quorum": 4}, "(vote).quorum: 4 can never be reached by voters of total weight 3"),
        (
            {"models": {"a": 1, "b": 1}, "quorum": 3},
            "(vote).quorum: 3 can never be reached by voters of total weight 2",
        ),
        (
            {"models": ["a", "b", "a"]},
            "(vote).models: a model may vote only once, ['a'] listed twice "
            "(add a named variant in models.yaml for a second voter)",
        ),
        (
            {**VOTERS, "weights": {"z": 2}},
            "(vote).weights: names models that do not vote: ['z'] (voters: ['a', 'b', 'c'])",
        ),
        (
            {"models": {"a": 2, "b": 1}, "weights": {"a": 3}},
            "(vote).weights: give weights either in models: {name: weight} or in weights:, not both",
        ),
    ],
)
def test_vote_setting_errors(settings, message):
    assert error_of("vote", settings) == f"{WHERE} {message}"


def test_a_non_positive_weight_is_refused_in_either_form():
    assert error_of("vote", {**VOTERS, "weights": {"b": -1}}).startswith(f"{WHERE} (vote).weights.b: must be > 0")
    assert error_of("vote", {"models": {"a": 1, "b": 0}}).startswith(f"{WHERE} (vote).models.b: must be > 0")


STRONG = {"model": "strong", "gate_tie": True}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({**STRONG, "gate_labels": "drug"}, "(cascade).gate_labels: must be a list (got 'drug')"),
        (
            {**STRONG, "gate_no_quorum": "sometimes"},
            "(cascade).gate_no_quorum: must be true or false (got 'sometimes')",
        ),
        (
            {**STRONG, "on_cascade_failure": "ignore"},
            "(cascade).on_cascade_failure: must be one of 'fail' or 'keep_vote' (got 'ignore')",
        ),
        ({**STRONG, "cascade_field": ""}, "(cascade).cascade_field: must not be empty"),
        ({"gate_tie": True}, "(cascade).model: required setting is missing"),
        (
            {**STRONG, "gate_ties": True},
            "(cascade).gate_ties: unknown setting (did you mean 'gate_tie'? known: cascade_field, gate, "
            "gate_labels, gate_no_quorum, gate_on_failed_verify, gate_tie, judge_sees_reasoning, keep_reasoning, model, "
            "name, on_cascade_failure, "
            "options, "
            "output_field, params, prefix, prompt, schema, seed_fields, verify_field, vote_field, votes_field)",
        ),
        ({**STRONG, "gate": ["drug"]}, "(cascade).gate: must be one of 'vote' or 'all' (got [\"drug\"])"),
        (
            {"model": "strong"},
            "(cascade).gate_labels: nothing would be gated; set gate_labels, gate_tie, gate_no_quorum or "
            "gate_on_failed_verify (or gate: all for every record)",
        ),
        (
            {"model": "strong", "gate_labels": []},
            "(cascade).gate_labels: an empty list gates nothing; to send every record to the model write gate: all",
        ),
        (
            {"model": "strong", "gate": "all", "gate_labels": []},
            "(cascade).gate_labels: has no effect with gate: all, which sends every record; remove one or the other",
        ),
        (
            {"model": "strong", "gate": "all", "gate_tie": True},
            "(cascade).gate_tie: has no effect with gate: all, which sends every record; remove one or the other",
        ),
        (
            {**STRONG, "seed_fields": True, "output_field": "final"},
            "(cascade).seed_fields: writes label and reason at the top level; leave output_field and prefix unset",
        ),
    ],
)
def test_cascade_setting_errors(settings, message):
    assert error_of("cascade", settings) == f"{WHERE} {message}"


def test_quorum_keeps_votes_and_fractions_apart():
    """``1`` is one vote, ``1.0`` every voter's weight: the setting must not turn one into the other."""
    one_vote = VoteConfig.from_settings({**VOTERS, "quorum": 1}, where="w")
    everyone = VoteConfig.from_settings({**VOTERS, "quorum": 1.0}, where="w")
    assert type(one_vote.quorum) is int and type(everyone.quorum) is float
    assert Vote(one_vote).quorum == 1 and isinstance(Vote(everyone).quorum, float)


def test_models_mapping_is_names_plus_weights_and_the_fingerprint_keeps_what_was_written():
    config = Pipeline.from_dict(
        {"input": {"path": "in.jsonl"}, "steps": [{"vote": {"models": {"a": 2, "b": 1, "c": 1}, "quorum": 3}}]}
    ).steps[0]
    assert config.voters() == ["a", "b", "c"] and config.model_names() == ["a", "b", "c"]
    assert config.voter_weights() == {"a": 2.0, "b": 1.0, "c": 1.0}
    assert config.written() == {"models": {"a": 2, "b": 1, "c": 1}, "quorum": 3}
    step = build_step(config)
    assert isinstance(step, Vote) and step.models == ["a", "b", "c"] and step.weights == config.voter_weights()


def test_the_python_api_takes_the_old_positional_form():
    vote = Vote(["a", "b"], "en/vote_label", quorum=0.5, weights={"a": 2}, options={"labels": ["x", "y"]})
    assert isinstance(vote.config, VoteConfig) and vote.config.prompt == "en/vote_label"
    assert vote.models == ["a", "b"] and vote.weights == {"a": 2.0, "b": 1.0} and vote.quorum == 0.5
    assert vote.options == {"labels": ["x", "y"]} and vote.name == "vote"
    assert Vote({"a": 3, "b": 1}).weights == {"a": 3.0, "b": 1.0}

    cascade = Cascade("strong", "en/cascade_label", gate_labels=["x"], on_cascade_failure="keep_vote", name="judge")
    assert isinstance(cascade.config, CascadeConfig) and cascade.model == "strong"
    assert cascade.prompt_ref == "en/cascade_label" and cascade.gate_labels == {"x"} and cascade.name == "judge"
    assert Cascade("strong", gate_tie=True).prompt_ref == "cascade_label"

    with pytest.raises(ConfigError) as info:
        Vote(["a", "a"])
    assert str(info.value).startswith("step 'vote'.models: a model may vote only once")
    with pytest.raises(ConfigError, match=r"takes at most 2 positional setting\(s\) \(model, prompt\), got 3"):
        Cascade("strong", "en/cascade_label", ["x"])
