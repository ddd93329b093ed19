"""Settings of ``joint``: each mistake is one line naming the file, the step, the setting."""

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.joint.config import JointConfig
from joydataforge.methods.joint.step import Joint
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

WHERE = "pipeline.yaml: steps[1] (joint)"
DRAFT = {"drafters": ["a", "b", "c"], "fuser": "f"}


def error_of(settings: dict) -> str:
    """The message for a pipeline whose second step is a ``joint`` with ``settings`` (the first one is fine)."""
    return pipeline_error([A_GOOD_FIRST_STEP, {"joint": settings}])


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({**DRAFT, "min_drafts": "two"}, ".min_drafts: must be an integer (got 'two')"),
        ({**DRAFT, "min_drafts": True}, ".min_drafts: must be an integer (got true)"),
        ({**DRAFT, "drafters": "a"}, ".drafters: must be a list (got 'a')"),
        ({**DRAFT, "draft_params": [1]}, ".draft_params: must be a mapping (got [1])"),
        ({"drafters": ["a", "b"]}, ".fuser: required setting is missing"),
        # out of range, invalid literal
        ({**DRAFT, "min_drafts": 0}, ".min_drafts: must be >= 1 (got 0)"),
        ({**DRAFT, "drafters": []}, ".drafters: must have at least 1 item(s) (got [])"),
        ({**DRAFT, "mode": "vote"}, ".mode: must be one of 'fuse' or 'pick' (got 'vote')"),
        # unknown setting
        (
            {**DRAFT, "fuse_param": {}},
            ".fuse_param: unknown setting (did you mean 'fuse_params'? known: draft_params, "
            "draft_prompt, drafters, drafts_field, fuse_params, fuse_prompt, fuser, joint_field, keep_reasoning, "
            "min_drafts, mode, name, options, output_field, pick_order, pick_prompt, text_checks)",
        ),
        # cross-field checks
        ({**DRAFT, "min_drafts": 4}, ".min_drafts: must be at most the number of drafters (3) (got 4)"),
        ({"drafters": ["a"], "fuser": "f"}, ".min_drafts: must be at most the number of drafters (1) (got 2)"),
        (
            {**DRAFT, "mode": "pick", "min_drafts": 1},
            ".min_drafts: mode 'pick' needs min_drafts >= 2 (picking from one draft is no choice)",
        ),
    ],
)
def test_joint_setting_errors(settings, message):
    assert error_of(settings) == f"{WHERE}{message}"


def test_one_drafter_is_enough_to_fuse_when_min_drafts_says_so():
    config = Pipeline.from_dict(
        {"input": {"path": "in.jsonl"}, "steps": [{"joint": {"drafters": ["a"], "fuser": "f", "min_drafts": 1}}]}
    ).steps[0]
    step = build_step(config)
    assert isinstance(step, Joint) and step.min_drafts == 1 and step.final_prompt == "joint_fuse"


def test_the_python_api_takes_the_old_positional_form():
    joint = Joint(["a", "a", "b"], "fuser", mode="pick", pick_prompt="en/joint_pick", fuse_params={"max_tokens": 8})
    assert isinstance(joint.config, JointConfig) and joint.config.drafters == ["a", "a", "b"]
    assert joint.drafters == ["a", "a", "b"] and joint.fuser == "fuser" and joint.mode == "pick"
    assert joint.final_prompt == "en/joint_pick" and joint.fuse_params == {"max_tokens": 8}
    assert joint.model_names() == ["a", "b", "fuser"] and joint.name == "joint"
    with pytest.raises(ConfigError) as info:
        Joint(["a", "b"], "fuser", min_drafts=3)
    assert str(info.value) == "step 'joint'.min_drafts: must be at most the number of drafters (2) (got 3)"
