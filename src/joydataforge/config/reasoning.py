"""The ``keep_reasoning`` setting of generating steps: whether a thinking model's trace is kept.

The model layer always takes the trace out of the answer (models.yaml ``reasoning:``); this setting only says
whether the step stores it, beside the answer, as ``<output_field>_reasoning`` (docs/reasoning.md). The
``judge_sees_reasoning`` setting of judging steps says whether their judges read that trace with the answer.
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


def judge_sees_reasoning_field(what: str) -> Any:
    """The ``judge_sees_reasoning`` setting of a step whose model judges text: ``what`` it judges."""
    return Field(
        default=False,
        description=(
            f"Show {what} with its reasoning trace: `<think>\\ntrace\\n</think>\\n\\nanswer`, for judging how an "
            "answer was reached, not only the answer. False (default): the answer alone. Text that has no trace "
            "is shown as it is; dedup and text checks always read the answer alone (docs/reasoning.md)."
        ),
    )
