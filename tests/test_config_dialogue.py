"""Settings of ``dialogue_intent`` and ``intent_binary``: each mistake is one line naming the file, the step,
the setting; label sets are written as names or as names with descriptions."""

from pathlib import Path

import pytest

from joydataforge.config.messages import SettingError
from joydataforge.config.pipeline import Pipeline
from joydataforge.config.tables import named_table
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.dialogue.config import CDSS_LABELS, DialogueIntentConfig, IntentBinaryConfig
from joydataforge.methods.dialogue.step import DialogueIntent, IntentBinaryCheck
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODEL = {"model": "smollm2-dialogue"}


def error_of(kind: str, settings: dict) -> str:
    """The message for a pipeline whose second step is ``kind`` with ``settings``."""
    return pipeline_error([A_GOOD_FIRST_STEP, {kind: settings}])


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({**MODEL, "retries": "two"}, ".retries: must be an integer (got 'two')"),
        ({**MODEL, "history_rounds": 2.5}, ".history_rounds: must be an integer (got 2.5)"),
        ({**MODEL, "check_content": "no"}, ".check_content: must be true or false (got 'no')"),
        ({**MODEL, "keep_fields": "time"}, ".keep_fields: must be a list (got 'time')"),
        ({**MODEL, "labels": 3}, ".labels: must be a list of names or a mapping name -> description (got 3)"),
        (
            {**MODEL, "labels": ["BMI", 2]},
            '.labels: must be a list of names or a mapping name -> description (got ["BMI", 2])',
        ),
        ({"prompt": "zh/dialogue_intent"}, ".model: required setting is missing"),
        # out of range, invalid literal
        ({**MODEL, "history_rounds": -1}, ".history_rounds: must be >= 0 (got -1)"),
        ({**MODEL, "retries": -1}, ".retries: must be >= 0 (got -1)"),
        ({**MODEL, "reason_max_chars": 0}, ".reason_max_chars: must be >= 1 (got 0)"),
        ({**MODEL, "dialog_id_field": ""}, ".dialog_id_field: must not be empty"),
        ({**MODEL, "history_format": "xml"}, ".history_format: must be one of 'text' or 'messages' (got 'xml')"),
        ({**MODEL, "labels": ["BMI"]}, '.labels: must name at least two non-empty labels (got ["BMI"])'),
        (
            {**MODEL, "labels": {"ask": "a question", " ": "blank"}},
            '.labels: must name at least two non-empty labels (got {"ask": "a question", " ": "blank"})',
        ),
        # unknown setting
        (
            {**MODEL, "history_round": 3},
            ".history_round: unknown setting (did you mean 'history_rounds'? known: "
            "check_content, dialog_field, dialog_id_field, history_format, history_rounds, "
            "keep_fields, keep_reasoning, labels, model, name, options, params, pin_turns, prompt, "
            "reason_max_chars, retries)",
        ),
    ],
)
def test_dialogue_intent_setting_errors(settings, message):
    assert error_of("dialogue_intent", settings) == f"pipeline.yaml: steps[1] (dialogue_intent){message}"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({**MODEL, "check_labels": "药品"}, ".check_labels: must be a list (got '药品')"),
        ({**MODEL, "label_field": 1}, ".label_field: must be a string (got 1)"),
        ({**MODEL, "on_reject": "ignore"}, ".on_reject: must be one of 'tag', 'drop' or 'relabel' (got 'ignore')"),
        ({**MODEL, "labels": ["only"]}, '.labels: must name at least two non-empty labels (got ["only"])'),
        (
            {**MODEL, "fallback": "其他"},
            ".fallback: unknown setting (did you mean 'fallback_label'? known: check_labels, "
            "fallback_label, label_field, label_prompts, labels, model, name, on_reject, options, params, "
            "prompt)",
        ),
    ],
)
def test_intent_binary_setting_errors(settings, message):
    assert error_of("intent_binary", settings) == f"pipeline.yaml: steps[1] (intent_binary){message}"


def test_label_sets_are_names_or_names_with_descriptions():
    named = DialogueIntentConfig(model="m", labels=["BMI", "闲聊"])
    assert named.labels == ["BMI", "闲聊"]  # what the user wrote; the table fills in known descriptions
    assert named.label_table() == {"BMI": CDSS_LABELS["BMI"], "闲聊": ""}
    described = IntentBinaryConfig(model="m", labels={"ask": "a question", "say": None})
    assert described.label_table() == {"ask": "a question", "say": ""}
    assert DialogueIntentConfig(model="m").label_table() == CDSS_LABELS
    assert named_table(None, CDSS_LABELS, "labels", "description") is not CDSS_LABELS  # a copy, never the default
    with pytest.raises(SettingError) as info:
        named_table("BMI", CDSS_LABELS, "labels", "description")
    assert info.value.field == "labels"


def test_a_pipeline_step_is_built_from_its_config():
    data = {
        "input": {"path": "in.jsonl"},
        "steps": [
            {"dialogue_intent": {**MODEL, "labels": ["BMI", "其他"], "history_rounds": None, "keep_fields": ["time"]}},
            {"intent_binary": {"model": "judge", "check_labels": ["BMI"], "on_reject": "relabel"}},
        ],
    }
    intent_config, binary_config = Pipeline.from_dict(data).steps
    intent, binary = build_step(intent_config), build_step(binary_config)
    assert isinstance(intent, DialogueIntent)
    assert intent.labels == {"BMI": CDSS_LABELS["BMI"], "其他": CDSS_LABELS["其他"]}
    assert intent.history_rounds is None and intent.keep_fields == ["time"] and intent.prompt_ref == "dialogue_intent"
    assert intent.retries == 2 and intent.pin_turns and intent.check_content and intent.dialog_field == "dialogs"
    assert isinstance(binary, IntentBinaryCheck) and binary.check_labels == {"BMI"} and binary.on_reject == "relabel"
    assert binary.labels == CDSS_LABELS and binary.fallback_label == "其他" and binary.model_names() == ["judge"]
    assert intent_config.written() == data["steps"][0]["dialogue_intent"]


def test_the_python_api_takes_the_old_positional_form():
    step = DialogueIntent("m", "zh/dialogue_intent", retries=1, history_format="messages")
    assert isinstance(step.config, DialogueIntentConfig) and step.config.prompt == "zh/dialogue_intent"
    assert (step.model, step.prompt_ref) == ("m", "zh/dialogue_intent")
    assert (step.retries, step.history_format) == (1, "messages")
    binary = IntentBinaryCheck("judge", "zh/dialogue_intent_binary", on_reject="drop")
    assert (binary.model, binary.prompt_ref, binary.on_reject) == ("judge", "zh/dialogue_intent_binary", "drop")
    with pytest.raises(ConfigError) as info:
        DialogueIntent("m", labels=["only"])
    assert str(info.value) == "step 'dialogue_intent'.labels: must name at least two non-empty labels (got [\"only\"])"


def test_the_examples_and_the_reference_example_validate():
    for config in (DialogueIntentConfig, IntentBinaryConfig):
        assert config.from_settings(config.example, where="example").model_names() == [config.example["model"]]
    for name in ("dialogue.yaml", "dialogue_binary.yaml"):
        pipeline = Pipeline.from_yaml(EXAMPLES / name)
        assert [type(step) for step in pipeline.steps] in ([DialogueIntentConfig], [IntentBinaryConfig])
