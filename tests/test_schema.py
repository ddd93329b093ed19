"""``joyforge schema``: a valid JSON Schema that every example accepts and an unknown setting fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from joydataforge.cli.schema import schema_command
from joydataforge.config.describe import shipped
from joydataforge.config.json_schema import pipeline_schema
from joydataforge.config.kinds import BUILTIN_CONFIGS

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = sorted(
    p for p in (ROOT / "examples").glob("*.yaml") if "steps" in (yaml.safe_load(p.read_text("utf-8")) or {})
)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(CliRunner().invoke(schema_command, []).output)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text("utf-8"))


def test_the_command_prints_the_schema_and_can_write_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(schema_command, ["-o", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text("utf-8")) == pipeline_schema()


def test_every_kind_has_a_short_and_a_long_form() -> None:
    forms = pipeline_schema()["properties"]["steps"]["items"]["oneOf"]
    titles = {form["title"] for form in forms}
    for kind in shipped(BUILTIN_CONFIGS):
        assert {f"{kind} (short form)", f"{kind} (long form)"} <= titles


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_example_pipeline_validates(validator: Draft202012Validator, path: Path) -> None:
    errors = [e.message for e in validator.iter_errors(load(path))]
    assert not errors


def test_the_long_form_validates(validator: Draft202012Validator) -> None:
    data = load(ROOT / "examples" / "demo.yaml")
    data["steps"] = [{"kind": "generate", "model": "smollm2", "prompt": "zh/answer"}]
    assert not list(validator.iter_errors(data))


@pytest.mark.parametrize("form", ["short", "long"])
def test_an_unknown_setting_does_not_validate(validator: Draft202012Validator, form: str) -> None:
    data = load(ROOT / "examples" / "demo.yaml")
    bad = copy.deepcopy(data)
    if form == "short":
        bad["steps"][0]["generate"]["temprature"] = 0.5
    else:
        bad["steps"][0] = {"kind": "generate", "model": "smollm2", "temprature": 0.5}
    assert list(validator.iter_errors(bad))


@pytest.mark.parametrize(
    "change",
    [
        {"input": {"path": "x.jsonl", "limt": 3}},  # unknown input setting
        {"outputs": {"dir": "o"}},  # unknown top-level key
        {"run": {"concurrency": 0}},  # out of range
    ],
)
def test_pipeline_sections_are_checked(validator: Draft202012Validator, change: dict) -> None:
    data = {**load(ROOT / "examples" / "demo.yaml"), **change}
    assert list(validator.iter_errors(data))


def test_an_unknown_kind_does_not_validate_but_a_plugin_class_path_does(validator: Draft202012Validator) -> None:
    data = load(ROOT / "examples" / "demo.yaml")
    data["steps"] = [{"generat": {"model": "smollm2"}}]
    assert list(validator.iter_errors(data))
    data["steps"] = [{"my_package.steps.MyStep": {"anything": 1}}]
    assert not list(validator.iter_errors(data))
