"""Run model-written or user-written Python in a fenced subprocess: tool functions, unit tests.

    result = await run_python("print(1 + 1)")
    result = await call_function(source, "get_weather", {"city": "Paris"}, limits=SandboxLimits(timeout_s=5))
    if result.verdict == "ok": use(result.value)

What the fences stop and what they do not is in docs/sandbox.md: they contain mistakes (an endless loop, a
memory bomb, a stray write, a fork loop), they are not a boundary against a determined attacker.
"""

from __future__ import annotations

from .config import SandboxSettings
from .limits import SandboxLimits, SandboxResult, Verdict
from .runner import call_function, run_python

__all__ = ["SandboxLimits", "SandboxResult", "SandboxSettings", "Verdict", "call_function", "run_python"]
