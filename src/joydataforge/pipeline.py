"""A pipeline: where records come from, the steps they pass through, where results go.

YAML (for the CLI) and Python (for the library) build the same :class:`Pipeline`. The YAML is validated
before anything heavy is imported, and every error names the setting to change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .steps.base import Step
from .steps.registry import build_step


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    start: int = Field(default=0, ge=0, description="skip this many records first (the seed's threshold_low)")
    limit: int | None = Field(default=None, ge=0, description="read at most this many records")
    encoding: str | None = None
    sheet: str | None = None
    id_field: str = "id"
    on_bad_record: Literal["skip", "stop"] = "skip"


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dir: str = "out"
    formats: list[Literal["jsonl", "parquet"]] = Field(default_factory=lambda: ["jsonl"])
    order: Literal["input", "completion"] = "input"


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(default=32, ge=1, description="records in flight at once")
    seed: int = 0
    cache: str | None = Field(default=".joyforge-cache/calls.sqlite", description="call cache file; null disables")
    language: Literal["en", "zh"] = "en"
    prompts_dir: str | None = None
    retry_failed: bool = False
    progress: bool = True
    executor: Literal["local", "ray"] = Field(default="local",
                                              description="ray: run on a Ray cluster (pip install joydataforge[ray])")


class Pipeline(BaseModel):
    """Everything a run needs; ``steps`` are live :class:`Step` objects."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: str = "pipeline"
    input: InputConfig
    steps: list[Step]
    output: OutputConfig = Field(default_factory=OutputConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    models: str | None = Field(default=None, description="a models.yaml merged over the built-in one")
    base_dir: str = "."

    def resolve(self, path: str | None) -> Path | None:
        """Relative paths in a pipeline file are relative to that file, not to the shell's directory."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "Pipeline":
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"pipeline file not found: {file}")
        try:
            data = yaml.safe_load(file.read_text("utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(file), base_dir=str(file.parent), overrides=overrides)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<pipeline>", base_dir: str = ".",
                  overrides: dict[str, Any] | None = None) -> "Pipeline":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a pipeline is a mapping with input:, steps: and output:")
        data = dict(data)
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            data.setdefault(section, {})
            data[section] = {**data[section], key: value}
        raw_steps = data.pop("steps", None)
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ConfigError(f"{source}: 'steps' must be a non-empty list")
        steps = [_build(item, f"{source}: steps[{i}]") for i, item in enumerate(raw_steps)]
        try:
            return cls(steps=steps, base_dir=base_dir, **data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{source}: {problems}") from None


def _build(item: Any, where: str) -> Step:
    """A step is written ``- kind: {settings}`` or ``- {kind: ..., name: ..., ...}``."""
    if isinstance(item, dict) and "kind" in item:
        settings = {k: v for k, v in item.items() if k != "kind"}
        return build_step(str(item["kind"]), settings, where)
    if isinstance(item, dict) and len(item) == 1:
        kind, settings = next(iter(item.items()))
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: settings of step '{kind}' must be a mapping")
        return build_step(str(kind), settings, f"{where} ({kind})")
    raise ConfigError(f"{where}: write a step as '- generate: {{model: ..., prompt: ...}}'")
