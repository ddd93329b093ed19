"""A model-free step for the crash tests: deterministic, and told by the environment which records fail.

Named in pipeline files by its class path (``- tests.crash_steps.Flaky: {}``), so a child ``joyforge run``
process can use it. Records whose input holds ``broken`` always fail; those holding ``flaky`` fail while
``JOYFORGE_TEST_FLAKY=fail`` (a first run) and succeed otherwise (the ``--retry-failed`` run); ``twice``
gives two outputs, so that a record's several lines are checked too.
"""

from __future__ import annotations

import os

from joydataforge.engine.step import Record, Step, StepContext
from joydataforge.errors import StepError


class Flaky(Step):
    kind = "test_flaky"

    async def run(self, record: Record, ctx: StepContext) -> list[Record] | Record:
        text = record["input"]
        if "broken" in text or ("flaky" in text and os.environ.get("JOYFORGE_TEST_FLAKY") == "fail"):
            raise StepError(f"failed on purpose: {text}")
        out = {**record, "target": f"done: {text}"}
        return [out, {**out, "target": f"again: {text}"}] if "twice" in text else out
