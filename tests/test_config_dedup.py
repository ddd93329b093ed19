"""Settings of ``minhash_dedup``: each mistake is one line naming the file, the step, the setting; what the
MinHasher and the LSH index refuse is refused by the config first."""

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.methods.dedup.config import MinHashDedupConfig, banding_problem
from joydataforge.methods.dedup.step import MinHashDedupStep
from joydataforge.text.lsh import LSHIndex
from tests.support.config_errors import A_GOOD_FIRST_STEP, pipeline_error

WHERE = "pipeline.yaml: steps[0] (minhash_dedup)"


def error_of(settings: dict) -> str:
    """The message for a pipeline whose first step is a ``minhash_dedup`` with ``settings``."""
    return pipeline_error([{"minhash_dedup": settings}, A_GOOD_FIRST_STEP])


@pytest.mark.parametrize(
    "settings, message",
    [
        # wrong types
        ({"threshold": "high"}, ".threshold: must be a number (got 'high')"),
        ({"num_perm": 64.0}, ".num_perm: must be an integer (got 64.0)"),
        ({"seed": True}, ".seed: must be an integer (got true)"),
        ({"fields": 3}, ".fields: must be a name or a list of names (got 3)"),
        ({"fields": ["input", None]}, '.fields: must be a name or a list of names (got ["input", null])'),
        # out of range, invalid literal: what MinHasher(...) used to refuse, named by setting
        ({"threshold": 0}, ".threshold: must be > 0 (got 0)"),
        ({"threshold": 1.5}, ".threshold: must be <= 1 (got 1.5)"),
        ({"num_perm": 0}, ".num_perm: must be >= 1 (got 0)"),
        ({"ngram": 0}, ".ngram: must be >= 1 (got 0)"),
        ({"mode": "chars"}, ".mode: must be one of 'mixed', 'auto', 'word' or 'char' (got 'chars')"),
        ({"policy": "last"}, ".policy: must be one of 'first' or 'tag' (got 'last')"),
        (
            {"policy": "longest"},
            ".policy: 'longest' needs the whole dataset; a streaming step can only use 'first' or "
            "'tag'. Use `joyforge dedup DATA -o OUT --policy longest` (or "
            "joydataforge.text.minhash_dedup.deduplicate) instead",
        ),
        ({"fields": []}, ".fields: must name at least one field (got [])"),
        ({"id_field": ""}, ".id_field: must not be empty"),
        # unknown setting
        (
            {"field": "input"},
            ".field: unknown setting (did you mean 'fields'? known: fields, id_field, mode, name, "
            "ngram, num_perm, policy, reference, seed, threshold)",
        ),
        # cross-field: the LSH bands follow from threshold and num_perm together
        (
            {"threshold": 1.0, "num_perm": 300},
            ".num_perm: too long for threshold 1.0: the LSH bands it needs are too "
            "wide (rows may be at most 256); lower num_perm or threshold (got 300)",
        ),
    ],
)
def test_dedup_setting_errors(settings, message):
    assert error_of(settings) == f"{WHERE}{message}"


@pytest.mark.parametrize(
    "threshold, num_perm", [(1.0, 256), (1.0, 257), (0.99, 257), (0.9, 512), (0.8, 128), (1.0, 300)]
)
def test_the_banding_check_agrees_with_the_index(threshold, num_perm):
    try:
        LSHIndex(threshold, num_perm)
        refused = False
    except ValueError:
        refused = True
    assert (banding_problem(threshold, num_perm) is not None) == refused


def test_a_pipeline_step_is_built_from_its_config():
    settings = {
        "fields": "input",
        "threshold": 1,
        "num_perm": 64,
        "ngram": 2,
        "mode": "char",
        "policy": "tag",
        "seed": 3,
        "id_field": "key",
    }
    config = Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{"minhash_dedup": settings}]}).steps[0]
    step = build_step(config)
    assert isinstance(step, MinHashDedupStep) and step.sequential and step.fields == ["input"]
    assert step.threshold == 1.0 and step.policy == "tag" and step.index.num_perm == 64
    assert (step.hasher.num_perm, step.hasher.ngram, step.hasher.mode, step.hasher.seed) == (64, 2, "char", 3)
    assert step._assign_id.id_field == "key" and step.model_names() == [] and config.written() == settings


def test_the_python_api_takes_the_old_positional_form():
    step = MinHashDedupStep(0.7, 64, ["input", "history"], 3, "tag", 2, "word", "key", "dedup-2")
    assert isinstance(step.config, MinHashDedupConfig) and step.name == "dedup-2"
    assert (step.threshold, step.fields, step.policy, step._assign_id.id_field) == (
        0.7,
        ["input", "history"],
        "tag",
        "key",
    )
    assert (step.hasher.num_perm, step.hasher.ngram, step.hasher.seed, step.hasher.mode) == (64, 3, 2, "word")
    with pytest.raises(ConfigError) as info:
        MinHashDedupStep(ngram=0)
    assert str(info.value) == "step 'minhash_dedup'.ngram: must be >= 1 (got 0)"


def test_the_reference_example_validates():
    assert MinHashDedupConfig.from_settings(MinHashDedupConfig.example, where="example").fields == ["input"]
