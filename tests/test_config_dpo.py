"""The ``dpo`` step's settings: every mistake is one line naming the file, the step, the setting and the problem."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from joydataforge.config.messages import field_names
from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.step import StepContext
from joydataforge.errors import ConfigError
from joydataforge.methods.dpo.config import DEFAULT_ASPECTS, PairRule, PreferencePairsConfig
from joydataforge.methods.dpo.pairs import RULES
from joydataforge.methods.dpo.step import PreferencePairs
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.prompts.renderer import PromptLibrary
from tests.support.config_errors import pipeline_error

KNOWN = ", ".join(field_names(PreferencePairsConfig))


def error_of(settings: dict[str, Any], before: list[dict[str, Any]] | None = None) -> str:
    """The ConfigError text of a pipeline whose last step is ``dpo`` with ``settings``."""
    return pipeline_error([*(before or []), {"dpo": settings}])


@pytest.mark.parametrize(
    "settings, message",
    [
        # a wrong type (after another step, so the index is the step's own)
        ({"judges": ["j"], "samples": "two"}, "steps[1] (dpo).samples: must be an integer (got 'two')"),
        ({"judges": ["j"], "margin": True}, "steps[1] (dpo).margin: must be a number (got true)"),
        (
            {"judges": ["j"], "aspects": 5},
            "steps[1] (dpo).aspects: must be a list of aspect names or a mapping {name: description}",
        ),
        ({"judges": ["j"], "aspects": {"tone": 5}}, "steps[1] (dpo).aspects.tone: must be a string (got 5)"),
        # out of range
        ({"judges": ["j"], "min_candidates": 1}, "steps[1] (dpo).min_candidates: must be >= 2 (got 1)"),
        ({"judges": ["j"], "temperatures": [0.3, -1]}, "steps[1] (dpo).temperatures[1]: must be >= 0 (got -1)"),
        ({"judges": ["j"], "temperatures": []}, "steps[1] (dpo).temperatures: must have at least 1 item(s) (got [])"),
        ({"judges": []}, "steps[1] (dpo).judges: must have at least 1 item(s) (got [])"),
        # an invalid choice
        (
            {"judges": ["j"], "scorer": "vibes"},
            "steps[1] (dpo).scorer: must be one of 'pointwise', 'pairwise' or 'reward' (got 'vibes')",
        ),
        (
            {"judges": ["j"], "trl_format": "chatml"},
            "steps[1] (dpo).trl_format: must be one of 'conversational', 'standard' or 'auto' (got 'chatml')",
        ),
        # checks of one setting's value
        ({"judges": ["j"], "scale": [5, 1]}, "steps[1] (dpo).scale: must be [low, high] with low < high (got [5, 1])"),
        (
            {"judges": ["j"], "aspects": ["style"]},
            "steps[1] (dpo).aspects: ['style'] have no built-in description; give aspects as a mapping "
            "{name: description} (built in: helpfulness, correctness, harmlessness, instruction_following)",
        ),
        (
            {"judges": ["j"], "aspects": {"tone of voice": "Polite?"}},
            "steps[1] (dpo).aspects: aspect 'tone of voice' needs an identifier name and a description",
        ),
        # an unknown setting
        (
            {"judges": ["j"], "judge_model": "x"},
            f"steps[1] (dpo).judge_model: unknown setting (did you mean 'judge_prompt'? known: {KNOWN})",
        ),
        # checks across settings, blamed on the setting to change
        (
            {"judges": ["a", "b"], "scorer": "reward"},
            "steps[1] (dpo).judges: scorer 'reward' takes one reward model (reward scales of different models cannot "
            "be averaged), got ['a', 'b']",
        ),
        (
            {"judges": ["j"], "candidates_field": None},
            "steps[1] (dpo).candidates_field: no candidates: set candidates_field (read them from the record) and/or "
            "models (generate them)",
        ),
    ],
)
def test_a_mistake_is_one_line_naming_file_step_and_setting(settings, message):
    assert error_of(settings, before=[{"generate": {"model": "smollm2"}}]) == f"pipeline.yaml: {message}"


def test_a_missing_required_setting_is_named():
    assert error_of({"models": ["gen"]}) == "pipeline.yaml: steps[0] (dpo).judges: required setting is missing"


def test_valid_settings_keep_what_the_user_wrote_and_fill_the_defaults():
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": "in.jsonl"},
            "steps": [{"dpo": {"judges": "j", "models": ["g"], "temperatures": [0, 1], "margin": 1}}],
        },
        source="pipeline.yaml",
    )
    config = pipeline.step_configs[0]
    assert isinstance(config, PreferencePairsConfig)
    assert config.judges == ["j"] and config.temperatures == [0.0, 1.0] and config.margin == 1.0
    assert config.aspects == list(DEFAULT_ASPECTS) and config.scale == (1, 10)
    assert config.judge_prompt_ref() == "judge_pointwise" and config.model_names() == ["g", "j"]
    assert config.written() == {"judges": "j", "models": ["g"], "temperatures": [0, 1], "margin": 1}


def test_the_step_is_built_from_its_config():
    step = PreferencePairs(
        PreferencePairsConfig(judges=["rm"], scorer="reward", models=["g", "rm"], aspects={"tone": "Polite?"})
    )
    assert step.judge_prompt_ref is None and step.temperatures == [None]
    assert step.aspects == {"tone": "Polite?"} and step.model_names() == ["g", "rm"]


def test_the_python_api_still_takes_judges_by_position():
    step = PreferencePairs(["j1", "j2"], scorer="pairwise", rule="all_pairs")
    assert step.judges == ["j1", "j2"] and step.scorer == "pairwise" and step.judge_prompt_ref == "judge_pairwise"
    assert PreferencePairs("j").judges == ["j"]
    with pytest.raises(ConfigError) as err:
        PreferencePairs(["j"], "pairwise")
    assert str(err.value) == "step 'dpo': takes at most 1 positional setting(s) (judges), got 2"
    with pytest.raises(ConfigError) as err:
        PreferencePairs(["j"], margin=-0.5)
    assert str(err.value) == "step 'dpo'.margin: must be >= 0 (got -0.5)"


def test_the_pair_rules_are_the_configs_choices():
    assert RULES == get_args(PairRule) == ("best_vs_worst", "best_vs_random", "all_pairs")


def test_check_asks_the_models_capabilities_not_their_backend(tmp_path):
    # An OpenAI-compatible server may serve a chat model or a reward model: both scorers pass the check.
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "served": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1"},
                "chat": {"backend": "llamacpp", "model_path": "smollm2"},
                "rm": {"backend": "transformers", "model_path": str(tmp_path)},
            }
        },
        "test",
    )
    ctx = StepContext(Gateway(registry), PromptLibrary())
    PreferencePairs(["served"], scorer="reward").check(ctx)
    PreferencePairs(["served"], scorer="pairwise").check(ctx)
    with pytest.raises(ConfigError) as err:
        PreferencePairs(["chat"], scorer="reward").check(ctx)
    assert str(err.value) == (
        "step 'dpo': judge 'chat' cannot give reward scores (a chat model); scorer 'reward' needs a reward model"
    )
    with pytest.raises(ConfigError) as err:
        PreferencePairs(["rm"], scorer="pairwise", name="prefs").check(ctx)
    assert str(err.value) == (
        "step 'prefs': judge 'rm' cannot chat (a reward model); scorer 'pairwise' needs a "
        "chat model that answers in JSON; use scorer: reward"
    )
