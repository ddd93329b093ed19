"""Settings of ``critique_revise``: each mistake is one line naming the file, the step, the setting."""

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.critique.config import CritiqueReviseConfig
from joydataforge.methods.critique.step import CritiqueRevise
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

WHERE = "pipeline.yaml: steps[1] (critique_revise)"
PAIR = {"model": "author", "critic": "critic"}


def error_of(settings: dict) -> str:
    """The message for a pipeline whose second step is a ``critique_revise`` with ``settings``."""
    return pipeline_error([A_GOOD_FIRST_STEP, {"critique_revise": settings}])


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({**PAIR, "rounds": "two"}, ".rounds: must be an integer (got 'two')"),
        ({**PAIR, "rounds": True}, ".rounds: must be an integer (got true)"),
        ({**PAIR, "approve_score": 7.5}, ".approve_score: must be an integer (got 7.5)"),
        ({**PAIR, "critic_params": "cold"}, ".critic_params: must be a mapping (got 'cold')"),
        ({"model": "author"}, ".critic: required setting is missing"),
        # out of range, invalid literal
        ({**PAIR, "rounds": 0}, ".rounds: must be >= 1 (got 0)"),
        ({**PAIR, "approve_score": 11}, ".approve_score: must be <= 10 (got 11)"),
        ({**PAIR, "answer_field": ""}, ".answer_field: must not be empty"),
        ({**PAIR, "on_not_approved": "hope"}, ".on_not_approved: must be one of 'keep', 'drop' or 'fail' (got 'hope')"),
        # unknown setting
        (
            {**PAIR, "round": 3},
            ".round: unknown setting (did you mean 'rounds'? known: answer_field, approve_score, "
            "critic, critic_params, critique_prompt, draft_prompt, judge_sees_reasoning, keep_reasoning, model, name, "
            "on_not_approved, "
            "options, output_field, params, revise_prompt, rounds, rounds_field, summary_field, text_checks)",
        ),
    ],
)
def test_critique_setting_errors(settings, message):
    assert error_of(settings) == f"{WHERE}{message}"


def test_a_pipeline_step_is_built_from_its_config():
    config = Pipeline.from_dict(
        {"input": {"path": "in.jsonl"}, "steps": [{"critique_revise": {**PAIR, "approve_score": 8, "rounds": 3}}]}
    ).steps[0]
    step = build_step(config)
    assert isinstance(step, CritiqueRevise) and step.rounds == 3 and step.approve_score == 8
    assert step.model_names() == ["author", "critic"] and config.written() == {**PAIR, "approve_score": 8, "rounds": 3}


def test_the_python_api_takes_the_old_positional_form():
    step = CritiqueRevise("author", "critic", rounds=3, answer_field="target", critic_params={"temperature": 0})
    assert isinstance(step.config, CritiqueReviseConfig) and step.config.critic == "critic"
    assert (step.model, step.critic, step.rounds, step.answer_field) == ("author", "critic", 3, "target")
    assert step.critic_params == {"temperature": 0} and step.name == "critique_revise"
    assert CritiqueRevise("same", "same").model_names() == ["same"]
    with pytest.raises(ConfigError) as info:
        CritiqueRevise("author", "critic", rounds=0)
    assert str(info.value) == "step 'critique_revise'.rounds: must be >= 1 (got 0)"
