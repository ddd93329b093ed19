"""Sandbox limits as settings: the pydantic model a step's config nests (``sandbox: {timeout_s: 5}``).

Plain data, importable by configs without the runner; :meth:`SandboxSettings.limits` gives the frozen
:class:`~joydataforge.sandbox.limits.SandboxLimits` the runner takes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .limits import SandboxLimits

_DEFAULTS = SandboxLimits()


class SandboxSettings(BaseModel):
    """Limits of the subprocess that runs model-written or user-written Python (see docs/sandbox.md)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(
        default=_DEFAULTS.timeout_s,
        gt=0,
        le=600,
        description="Wall-clock seconds one run may take; then its whole process group is killed (verdict timeout).",
    )
    memory_mb: int = Field(
        default=_DEFAULTS.memory_mb,
        ge=32,
        le=65536,
        description=(
            "Address space of the interpreter in MiB (RLIMIT_AS), interpreter included; past it allocations fail "
            "(verdict memory). Libraries that reserve large virtual areas (numpy's BLAS threads) need more."
        ),
    )
    max_processes: int = Field(
        default=_DEFAULTS.max_processes,
        ge=1,
        le=64,
        description="Processes the code may be; 1 refuses fork, exec and subprocess (verdict forbidden).",
    )
    max_output_bytes: int = Field(
        default=_DEFAULTS.max_output_bytes,
        ge=1024,
        description="Bytes of stdout + stderr + returned value; past it the run is killed (verdict output_limit).",
    )
    network: bool = Field(
        default=_DEFAULTS.network,
        description="Allow sockets to connect, bind and resolve names. Off: refused (verdict forbidden).",
    )
    writable_dir: bool = Field(
        default=_DEFAULTS.writable_dir,
        description="The run's fresh temporary working folder is writable (the only writable place either way).",
    )
    site_packages: bool = Field(
        default=_DEFAULTS.site_packages,
        description="Let the code import installed packages; off: the standard library only.",
    )

    def limits(self) -> SandboxLimits:
        return SandboxLimits(**self.model_dump())
