"""The ``keep_reasoning`` setting of generating steps: whether a thinking model's trace is kept.

The model layer always takes the trace out of the answer (models.yaml ``reasoning:``); this setting only says
whether the step stores it, beside the answer, as ``<output_field>_reasoning`` (docs/reasoning.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field


def keep_reasoning_field(where: str = "`<output_field>_reasoning`") -> Any:
    """The ``keep_reasoning`` setting of a step, described for where that step puts the trace."""
    return Field(
        default=True,
        description=(
            f"Keep a thinking model's reasoning trace in {where}, apart from the answer; false drops it (the "
            "answer is the same either way, and judges, votes, dedup and text checks only ever see the answer). "
            "Its tokens are counted in `_meta.calls[].reasoning_tokens` either way (docs/reasoning.md)."
        ),
    )
