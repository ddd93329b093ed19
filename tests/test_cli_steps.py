"""``joyforge steps list`` and ``joyforge steps show``: every kind listed, every setting shown, typos named."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from joydataforge.cli.steps import steps_group
from joydataforge.config.describe import shipped
from joydataforge.config.kinds import BUILTIN_CONFIGS

SHIPPED = shipped(BUILTIN_CONFIGS)  # plugins other tests register (@register_step) are listed too, not checked


def invoke(*args: str):
    return CliRunner().invoke(steps_group, list(args))


def test_list_has_every_kind_with_its_summary_on_one_line() -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(BUILTIN_CONFIGS)
    by_kind = {line.split()[0]: line for line in lines}
    assert set(by_kind) == set(BUILTIN_CONFIGS)
    for kind, config in SHIPPED.items():
        assert config.summary, f"{kind} has no summary"
        assert by_kind[kind].endswith(config.summary)


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_show_prints_every_setting_with_type_default_and_meaning(kind: str) -> None:
    config = SHIPPED[kind]
    result = invoke("show", kind)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"{kind}: {config.summary}")
    for name, info in config.model_fields.items():
        shown = info.alias or name
        line = next((x for x in out.splitlines() if x.startswith(f"  {shown}: ")), None)
        assert line is not None, f"setting {shown} of {kind} not shown"
        assert ("required" in line) == info.is_required()
        if info.description:
            first_words = " ".join(info.description.split()[:4])
            assert first_words in " ".join(out.split()), f"description of {kind}.{shown} not shown"
    assert f"- {kind}:" in out.split("example (in steps:):", 1)[1]


def test_show_example_is_yaml_that_validates_as_the_kind() -> None:
    import yaml

    from joydataforge.config.pipeline import step_config

    for kind in SHIPPED:
        out = invoke("show", kind).output
        example = yaml.safe_load(out.split("example (in steps:):\n", 1)[1])
        assert step_config(example[0], f"steps show {kind}").kind == kind


def test_unknown_kind_is_one_line_with_the_closest_kind_and_exit_2() -> None:
    result = invoke("show", "critque_revise")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "unknown step kind 'critque_revise'" in lines[0] and "did you mean 'critique_revise'?" in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)
