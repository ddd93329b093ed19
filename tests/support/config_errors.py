"""The one-line message a pipeline with a setting mistake gets, checked to be ours and not Python's."""

from __future__ import annotations

from typing import Any

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError

# Words that only appear when a Python or pydantic message leaks through to the user.
PYTHON_WORDS = ("Traceback", "validation error", "For further information", "Value error", "type=", "pydantic")
A_GOOD_FIRST_STEP: dict[str, Any] = {"generate": {"model": "m"}}


def pipeline_error(steps: list[dict[str, Any]], *, input_path: str = "in.jsonl") -> str:
    """The ConfigError text of ``pipeline.yaml`` with these steps; fails the test unless it is one plain line."""
    data = {"input": {"path": input_path}, "steps": steps}
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(data, source="pipeline.yaml")
    message = str(info.value)
    assert "\n" not in message, message
    for words in PYTHON_WORDS:
        assert words not in message, message
    return message
