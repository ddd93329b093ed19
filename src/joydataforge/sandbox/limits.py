"""What a sandboxed run may use, and what became of it: two frozen values, no behaviour.

Kept apart from the runner so that settings (``config.py``) and steps can name them without starting anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["ok", "error", "timeout", "memory", "forbidden", "output_limit"]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run. The defaults suit a tool function or a unit test written by a model."""

    timeout_s: float = 10.0
    """Wall-clock seconds before the whole process group is killed (CPU time is capped at about the same)."""
    memory_mb: int = 512
    """Address space of the interpreter (RLIMIT_AS/RLIMIT_DATA), interpreter included."""
    max_processes: int = 1
    """Processes the code may be: 1 means no fork, no exec, no subprocess."""
    max_output_bytes: int = 1_000_000
    """stdout + stderr + the returned value; past it the run is killed with verdict ``output_limit``."""
    network: bool = False
    """Whether sockets may connect, bind or resolve names (off: refused, and a fresh network namespace if the
    kernel lets an unprivileged process make one)."""
    writable_dir: bool = True
    """Whether the fresh temporary working folder is writable; it is the only writable place either way."""
    site_packages: bool = False
    """Whether the code may import installed packages (the interpreter's site-packages); off: stdlib only."""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did. ``verdict`` is the one thing a caller must look at."""

    verdict: Verdict
    exit_code: int | None
    """The process's exit status; None when it was killed (timeout, output limit, a signal)."""
    stdout: str
    stderr: str
    value: Any = None
    """The JSON value returned by the function (``call_function`` only)."""
    reason: str = ""
    """One line for the user: why the verdict is not ``ok`` (the exception, the refused action, the limit)."""

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"
