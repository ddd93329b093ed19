"""Settings of ``seedless``: each mistake is one line naming the file, the step, the setting."""

from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.seedless.config import SeedlessConfig
from joydataforge.methods.seedless.step import Seedless
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WHERE = "pipeline.yaml: steps[1] (seedless)"
MODEL = {"model": "smollm2-writer"}


def error_of(settings: dict) -> str:
    """The message for a pipeline whose second step is a ``seedless`` with ``settings``."""
    return pipeline_error([A_GOOD_FIRST_STEP, {"seedless": settings}], input_path="topics.yaml")


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({**MODEL, "n_per_topic": 2.5}, ".n_per_topic: must be an integer (got 2.5)"),
        ({**MODEL, "per_call": True}, ".per_call: must be an integer (got true)"),
        ({**MODEL, "threshold": "high"}, ".threshold: must be a number (got 'high')"),
        ({**MODEL, "personas": "a nurse"}, ".personas: must be a list (got 'a nurse')"),
        ({**MODEL, "fields": {"input": 1}}, '.fields: must be a name or a list of names (got {"input": 1})'),
        # out of range, invalid literal
        ({**MODEL, "n_per_topic": 0}, ".n_per_topic: must be >= 1 (got 0)"),
        ({**MODEL, "subtopics_per_call": 0}, ".subtopics_per_call: must be >= 1 (got 0)"),
        ({**MODEL, "max_calls": 0}, ".max_calls: must be >= 1 (got 0)"),
        ({**MODEL, "threshold": 0}, ".threshold: must be > 0 (got 0)"),
        ({**MODEL, "threshold": 1.2}, ".threshold: must be <= 1 (got 1.2)"),
        ({**MODEL, "num_perm": 0}, ".num_perm: must be >= 1 (got 0)"),
        ({**MODEL, "dedup": "fuzzy"}, ".dedup: must be one of 'minhash', 'exact' or 'none' (got 'fuzzy')"),
        ({**MODEL, "dedup_scope": "global"}, ".dedup_scope: must be one of 'topic' or 'run' (got 'global')"),
        (
            {**MODEL, "fields": ["input", "persona", "id"]},
            '.fields: cannot include ["id", "persona"] (the step sets them)',
        ),
        (
            {**MODEL, "fields": ["_x"]},
            ".fields: must be one or more field names, none starting with '_' (got [\"_x\"])",
        ),
        # unknown setting
        (
            {**MODEL, "threshhold": 0.5},
            ".threshhold: unknown setting (did you mean 'threshold'? known: dedup, "
            "dedup_scope, difficulties, fields, keep_reasoning, max_calls, max_chars, model, n_per_topic, "
            "name, num_perm, options, params, per_call, personas, prompt, "
            "subtopics_per_call, text_checks, threshold)",
        ),
        # cross-field: an LSH index cannot band this signature length at this threshold
        (
            {**MODEL, "num_perm": 512, "threshold": 1.0},
            ".num_perm: too long for threshold 1.0: the LSH bands it needs "
            "are too wide (rows may be at most 256); lower num_perm or "
            "threshold (got 512)",
        ),
    ],
)
def test_seedless_setting_errors(settings, message):
    assert error_of(settings) == f"{WHERE}{message}"


def test_signature_length_only_matters_for_minhash_dedup():
    assert SeedlessConfig(model="m", num_perm=512, threshold=1.0, dedup="exact").num_perm == 512
    assert SeedlessConfig(model="m", num_perm=512, threshold=0.7).num_perm == 512


def test_a_pipeline_step_is_built_from_its_config():
    settings = {
        **MODEL,
        "n_per_topic": 3,
        "fields": "input",
        "personas": ["a nurse"],
        "dedup_scope": "run",
        "threshold": 1,
    }
    config = Pipeline.from_dict({"input": {"path": "topics.yaml"}, "steps": [{"seedless": settings}]}).steps[0]
    step = build_step(config)
    assert isinstance(step, Seedless) and step.n_per_topic == 3 and step.fields == ["input"]
    assert step.personas == ["a nurse"] and step.difficulties == [] and step.threshold == 1.0
    assert step._run_index is not None and step.max_calls is None and step.prompt_ref == "seedless"
    assert step.model_names() == ["smollm2-writer"] and config.written() == settings


def test_the_python_api_takes_the_old_positional_form():
    step = Seedless("m", "en/seedless", n_per_topic=2, per_call=2, difficulties=("easy", "hard"))
    assert isinstance(step.config, SeedlessConfig) and (step.model, step.prompt_ref) == ("m", "en/seedless")
    assert (step.n_per_topic, step.per_call, step.difficulties) == (2, 2, ["easy", "hard"])
    assert step._run_index is None  # topic scope: one index per topic, made in run()
    with pytest.raises(ConfigError) as info:
        Seedless("m", "en/seedless", n_per_topic=0)
    assert str(info.value) == "step 'seedless'.n_per_topic: must be >= 1 (got 0)"


def test_the_example_and_the_reference_example_validate():
    assert SeedlessConfig.from_settings(SeedlessConfig.example, where="example").model_names() == ["smollm2-writer"]
    seedless = Pipeline.from_yaml(EXAMPLES / "seedless.yaml").steps[0]
    assert isinstance(seedless, SeedlessConfig) and seedless.max_calls == 6 and seedless.options["task"]
