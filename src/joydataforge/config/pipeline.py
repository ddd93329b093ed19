"""A pipeline: where records come from, the steps they pass through, where results go.

YAML (for the CLI) and Python (for the library) build the same :class:`Pipeline`. The YAML is validated
before anything heavy is imported, and every error names the setting to change.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from . import defaults
from .base import StepConfig
from .kinds import BUILTIN_CONFIGS
from .messages import SettingError, describe_errors, field_names


class InputConfig(BaseModel):
    """Where records come from: a file or a folder of files, and which part of it to read."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(
        description=(
            "The input: a JSONL, JSON, CSV, Parquet, XLSX or YAML (taxonomy) file, or a folder of them (read in name "
            "order); relative to the pipeline file."
        )
    )
    start: int = Field(
        default=0,
        ge=0,
        description=("Skip this many records first (the seed's `threshold_low`); bad lines count as records."),
    )
    limit: int | None = Field(
        default=None, ge=0, description=("Read at most this many records (after `start`); null reads to the end.")
    )
    encoding: str | None = Field(
        default=None,
        description=("Text encoding of JSONL, JSON and CSV files (`utf-8`, `gb18030`, ...); null detects it."),
    )
    sheet: str | None = Field(default=None, description="XLSX: the sheet to read; null reads the first.")
    id_field: str = Field(
        default="id",
        description=(
            "Field holding a record's own id; a record without one gets a hash of its content. Repeated ids get "
            "`#2`, `#3`... in input order."
        ),
    )
    on_bad_record: Literal["skip", "stop"] = Field(
        default="skip",
        description=(
            "A line that cannot be read, or a record whose fields a step needs are missing or of the wrong type: "
            "`skip` records it in failures.jsonl (file, line, field) and goes on; `stop` ends the run there "
            "(exit status 2)."
        ),
    )


class OutputConfig(BaseModel):
    """Where results go: the run folder and the file formats written into it."""

    model_config = ConfigDict(extra="forbid")
    dir: str = Field(
        default="out",
        description=(
            "The run folder (data, failures, ledger, summary), relative to the pipeline file; `joyforge run -o` "
            "overrides it. Re-running into it resumes."
        ),
    )
    formats: list[Literal["jsonl", "parquet"]] = Field(
        default_factory=lambda: ["jsonl"],
        description=(
            "Files to write: `jsonl` always (`data.jsonl`), plus `parquet` (`data.parquet`, made at the end)."
        ),
    )
    order: Literal["input", "completion"] = Field(
        default="input",
        description=(
            "`input`: outputs in input order, whatever the order they finish in; `completion`: as they finish."
        ),
    )


class LimitConfig(BaseModel):
    """What one model may spend in a run: money, tokens, or both."""

    model_config = ConfigDict(extra="forbid")
    cost: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Money, in the currency of the model's prices (`pricing:` in models.yaml, else the price table: "
            "docs/cost.md). null: no limit."
        ),
    )
    tokens: int | None = Field(
        default=None, ge=0, description="Prompt plus completion tokens, as the backend counts them. null: no limit."
    )


class BudgetConfig(LimitConfig):
    """What a run may spend: money and/or tokens, in all and per model, counted from real usage over every run
    of the output folder (a resume goes on from what earlier runs spent; cache hits are free). A call that could
    cross a limit is not made: the run stops cleanly (exit status 5) and says how to go on with a larger budget."""

    cost: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Money for the whole run, all models together (`joyforge run --budget` overrides it). null: no limit."
        ),
    )
    tokens: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Prompt plus completion tokens for the whole run, all models together (`--budget-tokens` overrides "
            "it). null: no limit."
        ),
    )
    models: dict[str, LimitConfig] = Field(
        default_factory=dict,
        description="Limits of single models, by name: `{gpt-4o: {cost: 3.0}, local: {tokens: 500000}}`.",
    )

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        limits = [self, *self.models.values()]
        return any(limit.cost is not None or limit.tokens is not None for limit in limits)


class RunConfig(BaseModel):
    """How a run behaves; every setting but ``seed`` may change between a run and its resume."""

    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(
        default=defaults.RECORDS_IN_FLIGHT,
        ge=1,
        description=(
            "Records in flight at once (each model's own max_concurrency still caps its requests). Unset: 32, or "
            "the widest model's max_concurrency when larger: an in-process vLLM model's (so its batches fill) or an "
            "adaptive model's (at most 1024, so the limit it finds is not capped by the records feeding it)."
        ),
    )
    seed: int = Field(
        default=defaults.SEED,
        description=(
            "The run seed: every record draws its samples from (seed, step, record id), so a run repeats itself "
            "whatever the concurrency. Part of the run's fingerprint."
        ),
    )
    cache: str | None = Field(
        default=defaults.CACHE_PATH,
        description=(
            "The persistent call cache (SQLite), relative to the pipeline file: a call already paid for is never paid "
            "again, across runs. null: no cache."
        ),
    )
    language: Literal["en", "zh"] = Field(
        default="en",
        description=(
            "Language of the built-in prompts a step names without a language folder (`answer` -> `en/answer`)."
        ),
    )
    prompts_dir: str | None = Field(
        default=None, description=("A folder searched first for prompt files, to override built-in prompts by name.")
    )
    retry_failed: bool = Field(
        default=False,
        description=("Redo the records that failed in an earlier run of this output folder (`--retry-failed`)."),
    )
    progress: bool = Field(default=True, description="Show a progress bar (off in logs: `--no-progress`).")
    executor: Literal["local", "ray"] = Field(
        default="local",
        description=(
            "Where records run: `local` (asyncio in this process) or `ray` (a Ray cluster; "
            "pip install joydataforge[ray]). The same steps either way."
        ),
    )
    max_failures: int | str | None = Field(
        default=None,
        description=(
            "Stop the run early (cleanly, resumable, exit status 5) when records keep failing: `N` once more than N "
            "records failed in this run, `P%` once more than P percent of the records it finished failed (judged "
            "from 20 finished records on); bad input lines do not count. null: never. `joyforge run --max-failures` "
            "overrides it."
        ),
    )

    budget: BudgetConfig = Field(
        default_factory=BudgetConfig,
        description=(
            "What the run may spend (docs/cost.md, Budgets): `cost` (money) and/or `tokens` for the whole run, and "
            "per model under `models` (`{cost: 5.0, tokens: 2000000, models: {gpt-4o: {cost: 3.0}}}`). Counted "
            "from real usage over every run of the output folder; cache hits are free. A call that could cross a "
            "limit is not made: the run stops cleanly (exit status 5), every finished record kept. Empty: no "
            "limit. `joyforge run --budget COST` / `--budget-tokens N` override the run's limits."
        ),
    )

    @field_validator("max_failures", mode="before")
    @classmethod
    def _failure_limit(cls, value: Any) -> int | str | None:
        """``10``, ``"10"`` or ``"5%"``; kept as an int (a count) or a ``"P%"`` string (a rate)."""
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = -1.0
            if 0 <= percent <= 100:
                return f"{percent:g}%"
        raise ValueError(f"a number of records (10) or a percentage (5%), not {value!r}")


class Pipeline(BaseModel):
    """Everything a run needs. ``steps`` are step configs (plain data); the Python API may also hand built
    steps (``Generate("m")``), which are run as they are."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: str = Field(
        default="pipeline",
        min_length=1,
        description=("The pipeline's name: shown in logs and the summary, and stamped on every record's provenance."),
    )
    input: InputConfig = Field(description="Where records come from.")
    steps: list[Any] = Field(
        min_length=1,
        description=("The steps records pass through, in order: `- kind: {settings}` (`joyforge steps list`)."),
    )
    output: OutputConfig = Field(default_factory=OutputConfig, description="What the run writes, and where.")
    run: RunConfig = Field(default_factory=RunConfig, description="How the run behaves: concurrency, seed, cache.")
    models: str | None = Field(
        default=None, description=("A models.yaml merged over the built-in one (relative to the pipeline file).")
    )
    base_dir: str = Field(
        default=".",
        description=(
            "The folder relative paths are resolved from: the pipeline file's own folder (not a setting of the file)."
        ),
    )

    @field_validator("steps")
    @classmethod
    def _steps_are_steps(cls, steps: list[Any]) -> list[Any]:
        from ..engine.step import Step

        for i, step in enumerate(steps):
            if not isinstance(step, (StepConfig, Step)):
                raise SettingError(f"steps[{i}]", f"a step config or a Step, not {type(step).__name__}")
        return steps

    @property
    def step_configs(self) -> list[StepConfig]:
        """Every step's settings, also of steps handed in built (the Python API)."""
        from ..engine.step import Step

        return [s.config if isinstance(s, Step) else s for s in self.steps]

    def resolve(self, path: str | None) -> Path | None:
        """Relative paths in a pipeline file are relative to that file, not to the shell's directory."""
        if path is None:
            return None
        from ..io.hub_files import HubPath, is_hub_path

        if is_hub_path(path):  # hf://datasets/OWNER/NAME/...: a place on the Hub, not relative to anything
            return HubPath(path)  # type: ignore[return-value]
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
    def from_dict(
        cls, data: Any, *, source: str = "<pipeline>", base_dir: str = ".", overrides: dict[str, Any] | None = None
    ) -> "Pipeline":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a pipeline is a mapping with input:, steps: and output:")
        data = dict(data)
        if "base_dir" in data:
            raise ConfigError(
                f"{source}: base_dir: unknown setting (paths in a pipeline file are relative to the file)"
            )
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            data.setdefault(section, {})
            data[section] = {**data[section], key: value}
        raw_steps = data.pop("steps", None)
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ConfigError(f"{source}: 'steps' must be a non-empty list")
        problems: list[str] = []
        steps: list[StepConfig] = []
        for i, item in enumerate(raw_steps):
            try:
                steps.append(step_config(item, f"{source}: steps[{i}]"))
            except ConfigError as exc:
                problems.extend(str(exc).splitlines())
        try:
            pipeline = cls(steps=steps, base_dir=base_dir, **data)
        except ValidationError as exc:
            lines = describe_errors(exc, source, field_names(cls), cls)
            if problems:  # a step that did not validate is already said; the list is not "empty"
                lines = [line for line in lines if not line.startswith(f"{source}.steps")]
            problems.extend(line.replace(f"{source}.", f"{source}: ", 1) for line in lines)
        if problems:
            raise ConfigError("\n".join(problems))
        return pipeline


def _config_class(kind: str, where: str) -> type[StepConfig]:
    if "." in kind:  # a plugin named by its class path: importing it is the only way to learn its settings
        from ..engine.registry import import_step_class

        return import_step_class(kind, where).Config
    try:
        return BUILTIN_CONFIGS[kind]
    except KeyError:
        close = difflib.get_close_matches(kind, list(BUILTIN_CONFIGS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"{where}: unknown step kind '{kind}' ({hint}known: {', '.join(sorted(BUILTIN_CONFIGS))}; "
            "`joyforge steps list` describes them)"
        ) from None


def step_config(item: Any, where: str) -> StepConfig:
    """A step is written ``- kind: {settings}`` or ``- {kind: ..., name: ..., ...}``."""
    if isinstance(item, dict) and "kind" in item:
        kind = item["kind"]
        settings = {k: v for k, v in item.items() if k != "kind"}
    elif isinstance(item, dict) and len(item) == 1:
        kind, settings = next(iter(item.items()))
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ConfigError(
                f"{where} ({kind}): the settings of a step are a mapping (write '- {kind}: {{setting: value, ...}}')"
            )
    else:
        raise ConfigError(f"{where}: write a step as '- generate: {{model: ..., prompt: ...}}'")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}: a step's kind is a name such as 'generate' (got {kind!r})")
    where = f"{where} ({kind})"
    config = _config_class(kind, where).from_settings(settings, where=where)
    if "." in kind:
        config._step_class_path = kind
    return config
