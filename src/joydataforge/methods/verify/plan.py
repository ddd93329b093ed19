"""What ``verify`` costs before it runs (``joyforge plan``): no model call. Its checkers compare values, run
tests in the sandbox, validate JSON or match text; none asks a model. It hands every record on with its
verdict (``on_fail: keep``), or only those that pass (``drop``, ``fail``): ``verify.fail_rate`` is the share
that does not, which only changes what later steps see.
"""

from __future__ import annotations

from ...engine.fanout import Assumption, Assumptions, FanOut, MethodPlan
from ...engine.step import Record
from .config import VerifyConfig

FAIL_RATE = Assumption(
    "verify.fail_rate",
    0.0,
    "share of records whose answer does not pass verify (dropped or failed unless on_fail: keep)",
)


def fan_out(config: VerifyConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    if config.on_fail == "keep":
        return FanOut([], 1.0)
    return FanOut([], 1.0 - assume[FAIL_RATE.name], exact_outputs=False)


VERIFY = MethodPlan(fan_out, None, (FAIL_RATE,))  # type: ignore[arg-type]
