"""Check a pipeline file before paying for it: settings, models, prompts, and the fields the prompts need.

``joyforge validate`` runs this. It makes no model call and loads no model: every model is reached through a
backend that refuses to be called, so a check that tried would show up as a problem, not as a bill. Every
problem found is listed, one line each, so a user fixes a file in one pass instead of one error per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..config.base import StepConfig
from ..config.pipeline import InputConfig, Pipeline, RunConfig, step_config
from ..errors import ConfigError, JoyForgeError, ModelError
from ..io.readers import iter_records
from ..models.backends.base import Backend, Completion, Messages
from ..models.config import ModelRegistry
from ..models.gateway import Gateway
from ..prompts.renderer import OPTIONAL_FIELDS, PromptLibrary
from .registry import build_step
from .step import Step, StepContext

RECORDS_CHECKED = 20
"""How many input records the fields check reads: enough to catch a wrong file, cheap on any file."""


class _NoCalls(Backend):
    """Stands in for every model during validation: a model call here would be a bug, said as a problem."""

    def __init__(self, name: str):
        self.name = name

    def _refuse(self) -> ModelError:
        return ModelError(f"model '{self.name}': joyforge validate makes no model calls", model=self.name)

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        raise self._refuse()

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        raise self._refuse()

    async def complete_n(
        self, prompt: str, params: dict[str, Any], n: int, *, seed: int | None = None
    ) -> list[Completion]:
        raise self._refuse()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        raise self._refuse()

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        raise self._refuse()

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        raise self._refuse()

    async def chat_template(self) -> Any:
        raise self._refuse()


@dataclass
class Validation:
    """What ``joyforge validate`` found: the problems (one line each) and what was checked."""

    source: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    records_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line for a pipeline without problems."""
        models = ", ".join(self.models) or "none"
        return (
            f"ok: {self.source}: {len(self.kinds)} step(s) ({', '.join(self.kinds)}); models: {models}; "
            f"prompts load; steps[0]'s fields present in the first {self.records_checked} record(s); "
            "0 model calls"
        )

    def add(self, where: str, message: str) -> None:
        """A problem, one line per line of ``message``, each saying where."""
        for line in str(message).splitlines() or [""]:
            self.problems.append(f"{where}: {line}" if where else line)


@dataclass
class _Parts:
    """The parts of a pipeline file that are valid, so one bad setting does not hide the other problems."""

    steps: list[tuple[int, StepConfig]]
    input: InputConfig | None
    run: RunConfig
    models: str | None
    base_dir: Path

    def resolve(self, path: str) -> Path:
        from ..io.hub_files import HubPath, is_hub_path

        if is_hub_path(path):
            return HubPath(path)  # type: ignore[return-value]
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _section(model: type[BaseModel], value: Any) -> Any:
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError:
        return None  # said already by Pipeline.from_dict, with the file and the field


def _read(path: Path, report: Validation) -> dict[str, Any] | None:
    if not path.is_file():
        report.add("", f"pipeline file not found: {path}")
        return None
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        report.add(report.source, "not valid YAML: " + " ".join(str(exc).split()))
        return None
    if not isinstance(data, dict):
        report.add(report.source, "a pipeline is a mapping with input:, steps: and output:")
        return None
    return data


def _parts(data: dict[str, Any], report: Validation, base_dir: Path) -> _Parts:
    """Validate the whole file the way ``joyforge run`` does (every problem), then keep what is usable."""
    try:
        Pipeline.from_dict(data, source=report.source, base_dir=str(base_dir))
    except ConfigError as exc:
        report.add("", str(exc))
    steps: list[tuple[int, StepConfig]] = []
    raw_steps = data.get("steps")
    for i, item in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        try:
            steps.append((i, step_config(item, f"{report.source}: steps[{i}]")))
        except ConfigError:
            pass  # reported above
    models = data.get("models")
    return _Parts(
        steps=steps,
        input=_section(InputConfig, data.get("input")),
        run=_section(RunConfig, data.get("run")) or RunConfig(),
        models=models if isinstance(models, str) else None,
        base_dir=base_dir,
    )


def _registry(parts: _Parts, models_file: str | None, report: Validation) -> ModelRegistry:
    """The models a run would see: the built-in ones, under the pipeline's ``models:`` file, or under
    ``--models`` instead of it (as ``joyforge run --models`` does)."""
    registry = ModelRegistry.load()
    extra = Path(models_file) if models_file is not None else (parts.resolve(parts.models) if parts.models else None)
    if extra is not None:
        try:
            registry = registry.merged(ModelRegistry.load(extra))
        except ConfigError as exc:
            report.add("" if models_file is not None else f"{report.source}: models", str(exc))
    return registry


def _where(report: Validation, index: int, config: StepConfig) -> str:
    return f"{report.source}: steps[{index}] ({config.kind})"


def _check_steps(parts: _Parts, registry: ModelRegistry, report: Validation) -> list[tuple[int, Step]]:
    """Every model a step names exists; each step builds and passes its own check (its prompts load)."""
    gateway = Gateway(registry, cache=None, backends={name: _NoCalls(name) for name in registry.names()})
    search = [parts.base_dir]
    if parts.run.prompts_dir:
        search.insert(0, parts.resolve(parts.run.prompts_dir))
    ctx = StepContext(gateway, PromptLibrary(search, language=parts.run.language), seed=parts.run.seed)
    built: list[tuple[int, Step]] = []
    for index, config in parts.steps:
        where = _where(report, index, config)
        unknown: set[str] = set()
        for name in config.model_names():
            try:
                registry.get(name)
            except ConfigError as exc:
                unknown.add(str(exc))
                report.add(where, str(exc))
            else:
                report.models.append(name)
        try:
            step = build_step(config)
        except JoyForgeError as exc:
            report.add(where, str(exc))
            continue
        try:
            step.check(ctx)
        except JoyForgeError as exc:
            message = str(exc).removeprefix(f"step '{step.name}': ")
            if str(exc) not in unknown:  # the unknown model the step stopped at is said already
                report.add(where, message)
            continue
        built.append((index, step))
    report.models = list(dict.fromkeys(report.models))
    return built


def _check_records(parts: _Parts, first: Step | None, limit: int, report: Validation) -> None:
    """The fields the first step's prompts need, on the first records of the input.

    Only the first step reads the records as they are in the file; later steps may read fields that earlier
    ones add, which cannot be known before the run.
    """
    cfg = parts.input
    if cfg is None:
        return
    path = parts.resolve(cfg.path)
    if not path.exists():
        report.add(f"{report.source}: input.path", f"no such file or folder: {path}")
        return
    needed = sorted(first.required_fields() - OPTIONAL_FIELDS) if first is not None else []
    window = limit if cfg.limit is None else min(limit, cfg.limit)
    try:
        for item in iter_records(path, start=cfg.start, limit=window, encoding=cfg.encoding, sheet=cfg.sheet):
            report.records_checked += 1
            if item.error is not None or item.record is None:
                if cfg.on_bad_record == "stop":
                    report.add("", f"{item.error} (on_bad_record: stop ends the run here)")
                else:
                    report.notes.append(f"{item.error} (skipped: on_bad_record is skip)")
                continue
            for name in needed:
                if name not in item.record:
                    assert first is not None
                    report.add(
                        f"{item.location}:{name}",
                        f"the record lacks this field, which steps[0] ({first.kind}) needs for its prompt",
                    )
    except JoyForgeError as exc:
        report.add(f"{report.source}: input", str(exc))


def _check_budget(parts: _Parts, registry: ModelRegistry, built: list[tuple[int, Step]], report: Validation) -> None:
    """A budget over a model the run does not know, or in money over a model with no known price."""
    from ..models.budget import BudgetLimits, budget_problems

    used = {name for _, step in built for name in step.model_names()}
    for problem in budget_problems(BudgetLimits.of(parts.run.budget), registry, used):
        report.add(report.source, problem)


def validate_pipeline(
    path: str | Path, *, models_file: str | None = None, records: int = RECORDS_CHECKED
) -> Validation:
    """Check ``path`` without calling a model; the result lists every problem found."""
    file = Path(path)
    report = Validation(source=str(file))
    data = _read(file, report)
    if data is None:
        return report
    parts = _parts(data, report, file.parent)
    report.kinds = [config.kind for _, config in parts.steps]
    registry = _registry(parts, models_file, report)
    built = _check_steps(parts, registry, report)
    _check_budget(parts, registry, built, report)
    first = next((step for index, step in built if index == 0), None)  # None: its problem is said already
    _check_records(parts, first, records, report)
    return report
