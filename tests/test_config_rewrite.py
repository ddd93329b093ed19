"""Settings of ``rewrite``: each mistake is one line naming the file, the step, the setting."""

from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.config.tables import named_table
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.rewrite.config import DEFAULT_TYPES, RewriteConfig
from joydataforge.methods.rewrite.step import Rewrite
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WHERE = "pipeline.yaml: steps[1] (rewrite)"
MODEL = {"model": "smollm2-rewriter"}


def error_of(settings: dict) -> str:
    """The message for a pipeline whose second step is a ``rewrite`` with ``settings``."""
    return pipeline_error([A_GOOD_FIRST_STEP, {"rewrite": settings}])


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({**MODEL, "per_type": "1"}, ".per_type: must be an integer (got '1')"),
        ({**MODEL, "max_chars": 1.5}, ".max_chars: must be an integer (got 1.5)"),
        ({**MODEL, "fields": 3}, ".fields: must be a name or a list of names (got 3)"),
        ({**MODEL, "fields": ["input", 2]}, '.fields: must be a name or a list of names (got ["input", 2])'),
        ({**MODEL, "types": [1, 2]}, ".types: must be a list of names or a mapping name -> instruction (got [1, 2])"),
        ({**MODEL, "drop_fields": "target"}, ".drop_fields: must be a list (got 'target')"),
        # out of range
        ({**MODEL, "per_type": 0}, ".per_type: must be >= 1 (got 0)"),
        ({**MODEL, "max_cases": 0}, ".max_cases: must be >= 1 (got 0)"),
        ({**MODEL, "min_cases": 0}, ".min_cases: must be >= 1 (got 0)"),
        ({**MODEL, "types": []}, ".types: must name at least one non-empty rewrite type (got [])"),
        ({**MODEL, "fields": []}, ".fields: must be one or more record field names, none starting with '_' (got [])"),
        (
            {**MODEL, "fields": ["_meta"]},
            ".fields: must be one or more record field names, none starting with '_' (got [\"_meta\"])",
        ),
        (
            {**MODEL, "fields": ["input", "rewrite_type", "id"]},
            '.fields: cannot include ["id", "rewrite_type"] (the step sets them)',
        ),
        # unknown setting
        (
            {**MODEL, "type": ["paraphrase"]},
            ".type: unknown setting (did you mean 'types'? known: drop_fields, fields, keep_reasoning, "
            "max_cases, max_chars, min_cases, model, name, options, params, per_type, "
            "prompt, show_fields, text_checks, types)",
        ),
        # cross-field checks
        (
            {**MODEL, "types": ["paraphrase"], "min_cases": 2},
            ".min_cases: must be <= max_cases (1, the number of types times per_type) (got 2)",
        ),
        ({**MODEL, "max_cases": 2, "min_cases": 3}, ".min_cases: must be <= max_cases (2) (got 3)"),
        (
            {**MODEL, "fields": ["input", "target"], "show_fields": ["input"]},
            '.show_fields: must include the fields to rewrite ["input", "target"] (got ["input"])',
        ),
    ],
)
def test_rewrite_setting_errors(settings, message):
    assert error_of(settings) == f"{WHERE}{message}"


def test_cases_per_record_default_to_types_times_per_type():
    assert RewriteConfig(model="m", types=["paraphrase", "tone"], per_type=2, min_cases=4).case_cap() == 4
    assert RewriteConfig(model="m").case_cap() == len(DEFAULT_TYPES)
    assert RewriteConfig(model="m", max_cases=9).case_cap() == 9
    assert named_table(["tone", "legalese"], DEFAULT_TYPES, "types", "instruction") == {
        "tone": DEFAULT_TYPES["tone"],
        "legalese": "",
    }


def test_a_pipeline_step_is_built_from_its_config():
    settings = {
        **MODEL,
        "fields": "input",
        "types": {"formal": "make it formal", "short": None},
        "per_type": 2,
        "drop_fields": ["target"],
        "max_chars": 80,
    }
    config = Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{"rewrite": settings}]}).steps[0]
    step = build_step(config)
    assert isinstance(step, Rewrite) and step.fields == ["input"] and step.max_cases == 4 and step.min_cases == 1
    assert step.types == {"formal": "make it formal", "short": ""} and step.drop_fields == {"target"}
    assert step.schema["properties"]["cases"]["maxItems"] == 4
    assert step.schema["properties"]["cases"]["items"]["properties"]["input"]["maxLength"] == 80
    assert step.model_names() == ["smollm2-rewriter"] and config.written() == settings


def test_the_python_api_takes_the_old_positional_form():
    step = Rewrite("m", "zh/rewrite", fields=("input",), types=["paraphrase"], show_fields=["input", "history"])
    assert isinstance(step.config, RewriteConfig) and (step.model, step.prompt_ref) == ("m", "zh/rewrite")
    assert step.types == {"paraphrase": DEFAULT_TYPES["paraphrase"]} and step.show_fields == ["input", "history"]
    with pytest.raises(ConfigError) as info:
        Rewrite("m", "zh/rewrite", per_type=0)
    assert str(info.value) == "step 'rewrite'.per_type: must be >= 1 (got 0)"


def test_the_example_and_the_reference_example_validate():
    assert RewriteConfig.from_settings(RewriteConfig.example, where="example").model_names() == ["smollm2-rewriter"]
    rewrite = Pipeline.from_yaml(EXAMPLES / "rewrite.yaml").steps[0]
    assert isinstance(rewrite, RewriteConfig) and list(rewrite.type_table()) == ["问句药名替换", "表达润色"]
