"""The ``evol_instruct`` step's settings: every mistake is one line naming the file, the step, the setting and
the problem; the defaults and shorthands mean what they meant."""

from __future__ import annotations

from typing import Any

import pytest

from joydataforge.config.messages import field_names
from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.evol_instruct.config import ELIMINATION_RULES, OPERATION_NAMES, EvolInstructConfig
from joydataforge.methods.evol_instruct.operations import OPERATIONS
from joydataforge.methods.evol_instruct.step import EvolInstruct
from tests.support.config_errors import pipeline_error

KNOWN = ", ".join(field_names(EvolInstructConfig))
OPERATION_CHOICES = "'constraints', 'deepen', 'concretize', 'reasoning', 'complicate_input', 'redirect' or 'breadth'"


def error_of(settings: dict[str, Any], before: list[dict[str, Any]] | None = None) -> str:
    """The ConfigError text of a pipeline whose last step is ``evol_instruct`` with ``settings``."""
    return pipeline_error([*(before or []), {"evol_instruct": settings}])


@pytest.mark.parametrize(
    "settings, message",
    [
        # a wrong type (after another step, so the index is the step's own)
        ({"model": "m", "rounds": "two"}, "steps[1] (evol_instruct).rounds: must be an integer (got 'two')"),
        (
            {"model": "m", "use_history": "maybe"},
            "steps[1] (evol_instruct).use_history: must be true or false (got 'maybe')",
        ),
        (
            {"model": "m", "children": "many"},
            "steps[1] (evol_instruct).children: must be a number or a mapping {operation: number}",
        ),
        ({"model": "m", "operations": "deepen"}, "steps[1] (evol_instruct).operations: must be a list (got 'deepen')"),
        # out of range
        ({"model": "m", "top_fraction": 0}, "steps[1] (evol_instruct).top_fraction: must be > 0 (got 0)"),
        ({"model": "m", "top_fraction": 1.5}, "steps[1] (evol_instruct).top_fraction: must be <= 1 (got 1.5)"),
        ({"model": "m", "rounds": 0}, "steps[1] (evol_instruct).rounds: must be >= 1 (got 0)"),
        ({"model": "m", "judge_retries": -1}, "steps[1] (evol_instruct).judge_retries: must be >= 0 (got -1)"),
        ({"model": "m", "children": {"deepen": 0}}, "steps[1] (evol_instruct).children.deepen: must be >= 1 (got 0)"),
        (
            {"model": "m", "operations": []},
            "steps[1] (evol_instruct).operations: must have at least 1 item(s) (got [])",
        ),
        # an invalid choice
        ({"model": "m", "language": "fr"}, "steps[1] (evol_instruct).language: must be one of 'en' or 'zh' (got 'fr')"),
        (
            {"model": "m", "operations": ["deepen", "fly"]},
            f"steps[1] (evol_instruct).operations[1]: must be one of {OPERATION_CHOICES} (got 'fly')",
        ),
        (
            {"model": "m", "children": {"fly": 2}},
            f"steps[1] (evol_instruct).children.fly: must be one of {OPERATION_CHOICES} (got 'fly')",
        ),
        (
            {"model": "m", "eliminate": ["equal", "vibes"]},
            "steps[1] (evol_instruct).eliminate[1]: must be one of 'equal', 'leak', 'unanswerable' or 'duplicate' "
            "(got 'vibes')",
        ),
        (
            {"model": "m", "prompts": {"evolve": "x.yaml"}},
            "steps[1] (evol_instruct).prompts.evolve: must be one of 'depth', 'redirect', 'breadth', 'equal', 'judge' "
            "or 'answer' (got 'evolve')",
        ),
        # an unknown setting
        (
            {"model": "m", "judge": "x"},
            f"steps[1] (evol_instruct).judge: unknown setting (did you mean 'judge_root'? known: {KNOWN})",
        ),
        # a required setting
        ({"judge_model": "m"}, "steps[1] (evol_instruct).model: required setting is missing"),
    ],
)
def test_a_mistake_is_one_line_naming_file_step_and_setting(settings, message):
    assert error_of(settings, before=[{"generate": {"model": "smollm2"}}]) == f"pipeline.yaml: {message}"


def test_defaults_and_shorthands():
    config = Pipeline.from_dict(
        {
            "input": {"path": "in.jsonl"},
            "steps": [{"evol_instruct": {"model": "m", "children": {"deepen": 1}, "prompts": {"judge": "mine.yaml"}}}],
        },
        source="pipeline.yaml",
    ).step_configs[0]
    assert isinstance(config, EvolInstructConfig)
    assert config.operations == list(OPERATION_NAMES) and config.eliminate == list(ELIMINATION_RULES)
    assert config.children_per_operation() == {**dict.fromkeys(OPERATION_NAMES, 3), "deepen": 1}
    assert config.prompt_refs() == {
        "depth": "en/evol_depth",
        "redirect": "en/evol_redirect",
        "breadth": "en/evol_breadth",
        "equal": "en/evol_equal",
        "judge": "mine.yaml",
        "answer": "en/answer",
    }
    assert config.written() == {"model": "m", "children": {"deepen": 1}, "prompts": {"judge": "mine.yaml"}}


@pytest.mark.parametrize(
    "settings, models",
    [
        ({}, ["m"]),
        ({"judge_model": "j"}, ["m", "j"]),
        ({"judge_model": "j", "answer_model": "a"}, ["m", "j", "a"]),
        ({"judge_model": "j", "equal_model": "e"}, ["m", "j", "e"]),
        ({"judge_model": "j", "equal_model": "e", "eliminate": ["leak"]}, ["m", "j"]),  # no equal check, no model
    ],
)
def test_the_models_a_step_calls(settings, models):
    assert EvolInstructConfig(model="m", **settings).model_names() == models


def test_the_operations_of_the_config_are_those_the_step_knows_in_order():
    assert tuple(OPERATIONS) == OPERATION_NAMES


def test_the_step_is_built_from_its_config():
    step = EvolInstruct(
        EvolInstructConfig(
            model="m",
            operations=["breadth", "deepen", "breadth"],
            children=2,
            eliminate=["leak"],
            language="zh",
            leak_phrases=["#x#"],
        )
    )
    assert [op.name for op in step.operations] == ["breadth", "deepen"]  # a repeated operation runs once
    assert step.children == dict.fromkeys(OPERATION_NAMES, 2) and step.rules == {"leak"}
    assert step.judge_model == step.equal_model == "m" and step.prompt_refs["depth"] == "zh/evol_depth"
    assert step.leak_phrases[-1] == "#x#" and len(step.leak_phrases) > 1


def test_the_python_api_still_takes_the_model_by_position():
    step = EvolInstruct("m", judge_model="j", rounds=1)
    assert (step.model, step.judge_model, step.equal_model, step.rounds) == ("m", "j", "j", 1)
    with pytest.raises(ConfigError) as err:
        EvolInstruct("m", "j")
    assert str(err.value) == "step 'evol_instruct': takes at most 1 positional setting(s) (model), got 2"
    with pytest.raises(ConfigError) as err:
        EvolInstruct("m", sample_size=0)
    assert str(err.value) == "step 'evol_instruct'.sample_size: must be >= 1 (got 0)"
