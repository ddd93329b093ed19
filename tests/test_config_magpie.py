"""Settings of the Magpie steps (magpie, magpie_response, magpie_tag): what a wrong one reads like, and what
the checks before a run say about the model's chat template."""

import subprocess
import sys
from types import SimpleNamespace
from typing import get_args

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.magpie.cleaning import CleaningRules
from joydataforge.methods.magpie.config import (
    TAGS,
    ControlTask,
    MagpieInstructionConfig,
    MagpieResponseConfig,
    MagpieTagConfig,
    TagName,
)
from joydataforge.methods.magpie.control_tasks import CONTROL_TASKS
from joydataforge.methods.magpie.step import MagpieInstruction, MagpieResponse, MagpieTag
from joydataforge.models.config import ModelRegistry
from tests.support.config_errors import pipeline_error

INSTRUCTION_KNOWN = (
    "attempts, cleaning, control_task, language, model, name, on_drop, output_field, params, samples, "
    "samples_per_call, system, template"
)
RESPONSE_KNOWN = (
    "cleaning, input_field, instruction_model, instruction_params, keep_reasoning, model, name, output_field, params, "
    "template, turns"
)
TAG_KNOWN = "input_field, keep, model, name, params, prompts, tags"


def error_of(kind: str, settings: dict, before: list | None = None) -> str:
    """The message of the ConfigError a pipeline file with this step gets; it must be one plain line."""
    return pipeline_error([*(before or []), {kind: settings}], input_path="slots.jsonl")


# --- magpie --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"samples": "two"}, "samples: must be an integer (got 'two')"),
        ({"params": [1]}, "params: must be a mapping (got [1])"),
        (
            {"language": ["zh", "en"]},
            'language: must be one language code such as zh (got ["zh", "en"]); a list goes in cleaning.languages',
        ),
        ({"samples": 0}, "samples: must be >= 1 (got 0)"),
        ({"attempts": -1}, "attempts: must be >= 1 (got -1)"),
        ({"samples_per_call": 0}, "samples_per_call: must be >= 1 (got 0)"),
        ({"control_task": "poetry"}, "control_task: must be one of 'math', 'code' or 'translation' (got 'poetry')"),
        ({"on_drop": "tag"}, "on_drop: must be one of 'drop' or 'keep' (got 'tag')"),
        ({"model": ""}, "model: must not be empty"),
        ({"cleaning": {"min_units": -1}}, "cleaning.min_units: must be >= 0 (got -1)"),
        ({"sample": 2}, f"sample: unknown setting (did you mean 'samples'? known: {INSTRUCTION_KNOWN})"),
        (
            {"cleaning": {"min_len": 2}},
            "cleaning.min_len: unknown setting (did you mean 'min_units'? known: languages, "
            "max_units, min_units, require_request)",
        ),
        (
            {"system": "You help with maths.", "control_task": "math"},
            "control_task: give system or control_task, not both (control_task is a built-in system prompt)",
        ),
        (
            {"cleaning": {"min_units": 10, "max_units": 5}},
            "cleaning.max_units: must be >= min_units (10), else every instruction is dropped (got 5)",
        ),
        ({"params": {"stop": ["\n"]}}, "params.stop: is set from the chat template's end-of-turn markers; remove it"),
    ],
)
def test_magpie_settings(settings, expected):
    assert error_of("magpie", {"model": "smollm2", **settings}) == f"pipeline.yaml: steps[0] (magpie).{expected}"


def test_magpie_without_a_model():
    assert error_of("magpie", {}) == "pipeline.yaml: steps[0] (magpie).model: required setting is missing"


def test_magpie_settings_as_written_and_as_used():
    config = Pipeline.from_dict(
        {
            "input": {"path": "slots.jsonl"},
            "steps": [
                {
                    "magpie": {
                        "model": "qwen-vllm",
                        "template": None,
                        "language": "zh",
                        "cleaning": {"languages": "zh", "min_units": 1},
                        "params": {"max_tokens": 256},
                    }
                }
            ],
        }
    ).steps[0]
    assert isinstance(config, MagpieInstructionConfig)
    assert config.template == "auto"  # unset or empty: the model's own
    assert CleaningRules.from_config(config.cleaning) == CleaningRules(min_units=1, languages=("zh",))
    assert config.written()["template"] is None  # the fingerprint keeps what was written
    step = MagpieInstruction(config)
    assert step.params == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 256}
    assert step.system.startswith("你是") and step.rules.languages == ("zh",)
    assert step.model_names() == ["qwen-vllm"]


def test_magpie_language_filters_unless_cleaning_says_otherwise():
    assert MagpieInstruction("m", language="zh").rules.languages == ("zh",)
    assert MagpieInstruction("m", language="zh", cleaning={"languages": ["zh", "en"]}).rules.languages == ("zh", "en")
    assert MagpieInstruction("m").rules == CleaningRules()
    assert MagpieInstruction("m", control_task="code", language="zh").system == CONTROL_TASKS["code"]["zh"]


# --- magpie_response -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"turns": "two"}, "turns: must be an integer (got 'two')"),
        ({"instruction_params": "hot"}, "instruction_params: must be a mapping (got 'hot')"),
        ({"turns": 0}, "turns: must be >= 1 (got 0)"),
        ({"instruction_model": ""}, "instruction_model: must not be empty"),
        ({"turn": 2}, f"turn: unknown setting (did you mean 'turns'? known: {RESPONSE_KNOWN})"),
        (
            {"cleaning": {"language": "zh"}},
            "cleaning.language: unknown setting (did you mean 'languages'? known: "
            "languages, max_units, min_units, require_request)",
        ),
        (
            {"instruction_params": {"stop": "<|im_end|>"}},
            "instruction_params.stop: is set from the chat template's end-of-turn markers; remove it",
        ),
        (
            {"cleaning": {"max_units": 2}},
            "cleaning.max_units: must be >= min_units (3), else every instruction is dropped (got 2)",
        ),
    ],
)
def test_magpie_response_settings(settings, expected):
    assert (
        error_of("magpie_response", {"model": "smollm2", **settings})
        == f"pipeline.yaml: steps[0] (magpie_response).{expected}"
    )


def test_magpie_response_models_and_defaults():
    step = MagpieResponse("answerer", turns=2, instruction_model="writer")
    assert step.model_names() == ["answerer", "writer"]
    assert step.instruction_params is None and step.rules is None and step.template is None  # from the record
    assert MagpieResponse("m", cleaning={}).rules == CleaningRules()
    assert MagpieResponse("m", params=None).params == {}


# --- magpie_tag ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"tags": 5}, "tags: must be a list (got 5)"),
        ({"keep": ["good"]}, 'keep: must be a mapping (got ["good"])'),
        ({"tags": ["mood"]}, "tags[0]: must be one of 'task_category', 'input_quality' or 'difficulty' (got 'mood')"),
        ({"tags": []}, "tags: must have at least 1 item(s) (got [])"),
        (
            {"prompts": {"mood": "mood.yaml"}},
            "prompts.mood: must be one of 'task_category', 'input_quality' or 'difficulty' (got 'mood')",
        ),
        ({"tag": ["difficulty"]}, f"tag: unknown setting (did you mean 'tags'? known: {TAG_KNOWN})"),
        (
            {"tags": ["difficulty"], "keep": {"input_quality": ["good"]}},
            "keep: names fields ['input_quality'] that the tags ['difficulty'] do not produce (they produce: difficulty, "
            "intent, knowledge)",
        ),
    ],
)
def test_magpie_tag_settings(settings, expected):
    assert error_of("magpie_tag", {"model": "judge", **settings}) == f"pipeline.yaml: steps[0] (magpie_tag).{expected}"


def test_magpie_tag_shorthands():
    step = MagpieTag("judge", "input_quality", {"input_quality": "good"}, {"input_quality": "mine.yaml"})
    assert step.tags == ["input_quality"] and step.keep == {"input_quality": ["good"]}
    assert step.prompt_refs == {"input_quality": "mine.yaml"}
    assert MagpieTag("judge").prompt_refs == {tag: prompt for tag, (prompt, _) in TAGS.items()}
    assert MagpieTag("judge", keep={"difficulty": ["easy", 3]}).keep == {"difficulty": ["easy", "3"]}


# --- all three -----------------------------------------------------------------------------------------


def test_a_step_index_names_the_step_in_a_longer_pipeline():
    assert (
        error_of("magpie_tag", {"model": "judge", "tags": []}, before=[{"magpie": {"model": "smollm2"}}])
        == "pipeline.yaml: steps[1] (magpie_tag).tags: must have at least 1 item(s) (got [])"
    )


def test_python_api_takes_the_old_positional_form():
    step = MagpieInstruction(
        "m", "llama3", None, "math", "zh", 4, 2, {"min_units": 1}, "keep", "question", {"max_tokens": 64}, 2
    )
    config = step.config
    assert (config.model, config.template, config.control_task, config.language) == ("m", "llama3", "math", "zh")
    assert (step.samples, step.attempts, step.on_drop, step.output_field, step.samples_per_call) == (
        4,
        2,
        "keep",
        "question",
        2,
    )
    assert step.rules.min_units == 1 and step.params["max_tokens"] == 64
    response = MagpieResponse(
        "a", 3, "w", "chatml", {"max_tokens": 9}, {"temperature": 0.5}, {"min_units": 2}, "q", "a_field"
    )
    assert (
        response.turns,
        response.instruction_model,
        response.template,
        response.input_field,
        response.output_field,
    ) == (3, "w", "chatml", "q", "a_field")
    assert response.instruction_params == {"temperature": 0.5} and response.rules.min_units == 2
    tag = MagpieTag("j", ["difficulty"], None, None, {"max_tokens": 5}, "question")
    assert tag.tags == ["difficulty"] and tag.params == {"max_tokens": 5} and tag.input_field == "question"
    with pytest.raises(ConfigError, match="samples: must be >= 1"):
        MagpieInstruction("m", "auto", None, None, None, 0)
    with pytest.raises(ConfigError, match="takes at most 6 positional"):
        MagpieTag("j", ["difficulty"], None, None, {}, "input", "extra")


def test_kind_names_and_literals_follow_their_tables():
    assert set(get_args(ControlTask)) == set(CONTROL_TASKS)
    assert list(get_args(TagName)) == list(TAGS)
    assert [c.kind for c in (MagpieInstructionConfig, MagpieResponseConfig, MagpieTagConfig)] == [
        "magpie",
        "magpie_response",
        "magpie_tag",
    ]
    for config in (MagpieInstructionConfig, MagpieResponseConfig, MagpieTagConfig):
        assert config.summary and config.__doc__
        assert all(field.description for field in config.model_fields.values()), config.kind
        config.model_validate(config.example)  # the example is a working setting


def test_configs_validate_without_the_engine_or_templates():
    code = (
        "import sys, joydataforge.methods.magpie.config; "
        "print([m for m in sys.modules if m.startswith(('joydataforge.engine', 'joydataforge.models', 'jinja2'))])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- checks before the run: the model's chat template ---------------------------------------------------


def check(model: str, models: dict, template: str = "auto") -> None:
    registry = ModelRegistry.from_dict({"models": models}, "test")
    MagpieInstruction(model, template).check(SimpleNamespace(gateway=SimpleNamespace(registry=registry)))


@pytest.mark.parametrize(
    "entry",
    [
        {"backend": "llamacpp", "model": "anything", "model_path": "x.gguf"},  # the GGUF's own
        {"backend": "vllm", "model": "org/anything"},  # the tokenizer's own
        {
            "backend": "openai",
            "model": "anything",
            "base_url": "http://127.0.0.1:9/v1",
            "chat_template": "/models/served/tokenizer_config.json",
        },  # the file models.yaml names
        {"backend": "openai", "model": "Qwen2.5-7B-Instruct", "base_url": "http://127.0.0.1:9/v1"},  # from the name
        {"backend": "llamacpp", "model": "x", "model_path": "x.gguf", "chat_template": "chatml"},  # the chat format's
    ],
)
def test_auto_template_is_known(entry):
    check("m", {"m": entry})


@pytest.mark.parametrize(
    "entry",
    [
        {"backend": "openai", "model": "anything", "base_url": "http://127.0.0.1:9/v1"},
        # a llama.cpp chat format replaces the GGUF's template, and this one names no family we know
        {"backend": "llamacpp", "model": "x", "model_path": "x.gguf", "chat_template": "functionary-v2"},
    ],
)
def test_auto_template_unknown_fails_before_the_run(entry):
    with pytest.raises(ConfigError, match="cannot tell the chat template of model 'm'.*set template:"):
        check("m", {"m": entry})
    check("m", {"m": entry}, template="chatml")  # naming it is enough


def test_a_model_that_cannot_continue_raw_text_fails_before_the_run():
    with pytest.raises(ConfigError, match="model 'rm' .transformers backend. cannot continue raw text"):
        check("rm", {"rm": {"backend": "transformers", "model": "org/reward-model"}})
