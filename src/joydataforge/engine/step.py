"""What a step is: one record in, zero or more records out, models reached only through ``ctx``.

Steps never open files or sockets. Everything they need from the outside (a model, a prompt, a seeded
random generator, counters) comes from the :class:`StepContext` the executor hands them, which is what
lets the local and the Ray executor run the very same step objects.
"""

from __future__ import annotations

import abc
import random
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

from ..config.base import StepConfig
from ..errors import ConfigError
from ..records import content_hash

if TYPE_CHECKING:
    from ..models.gateway import Gateway, ModelClient
    from ..prompts.renderer import PromptLibrary, PromptTemplate

Record = dict[str, Any]


class StepContext:
    """The door between a step and the world, for one run."""

    def __init__(self, gateway: "Gateway", prompts: "PromptLibrary", seed: int = 0):
        self.gateway = gateway
        self.prompts = prompts
        self.seed = seed

    def model(self, name: str) -> "ModelClient":
        return self.gateway.model(name)

    def rng(self, record_id: str, step_name: str) -> random.Random:
        """A generator that depends only on the run seed, the step and the record.

        Concurrency changes the order in which records are processed; seeding per record keeps the
        results identical from run to run anyway.
        """
        return random.Random(content_hash([self.seed, step_name, record_id], 8))


class Step(abc.ABC):
    """Base of synthesis methods, filters and scorers: the runner of one step kind.

    A step is built from its kind's settings (``Config``, a :class:`~joydataforge.config.base.StepConfig`):
    ``Generate(GenerateConfig(...))``, or, the Python API, ``Generate("m", prompt="zh/answer")``, which
    validates the same way a pipeline file does. Subclasses derive what they need from ``self.config`` in
    :meth:`setup` and implement :meth:`run`.

    ``sequential`` steps see records one at a time in input order (needed by stateful filters such as
    streaming dedup, whose "keep the first" must mean the first in the input, not the first to finish);
    the local executor runs them in order ahead of the concurrent steps.
    """

    kind: ClassVar[str] = "step"
    Config: ClassVar[type[StepConfig]] = StepConfig
    sequential: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__ and cls.Config.kind:
            cls.kind = cls.Config.kind
        elif "kind" in cls.__dict__ and cls.Config is StepConfig:
            # A step without settings of its own (only ``name``) needs no Config class written out.
            cls.Config = type(
                f"{cls.__name__}Config",
                (StepConfig,),
                {"kind": cls.kind, "__module__": cls.__module__, "__doc__": cls.__doc__},
            )

    def __init__(self, *args: Any, **settings: Any):
        if len(args) == 1 and not settings and isinstance(args[0], StepConfig):
            config = args[0]
            if not isinstance(config, self.Config):
                raise ConfigError(
                    f"step '{self.kind}' is built from a {self.Config.__name__}, not a {type(config).__name__}"
                )
        else:
            config = self.Config.from_python(args, settings, where=f"step '{self.kind}'")
        self.config = config
        self.name = config.name or self.kind
        self.counters: Counter[str] = Counter()
        self.setup()

    def setup(self) -> None:  # noqa: B027  (optional hook: most steps derive nothing)
        """Derive working state from ``self.config`` (parsed tables, helper objects). Settings are already valid."""

    def settings(self) -> dict[str, Any]:
        """The settings as the user wrote them (defaults left out): what the run fingerprint is made of."""
        return self.config.written()

    def model_names(self) -> list[str]:
        """Named models this step calls, so the run can check them before it starts."""
        return self.config.model_names()

    def prompt(self, ctx: StepContext, ref: str) -> "PromptTemplate":
        """A prompt this step renders, remembered so :meth:`required_fields` can report what they need."""
        used: dict[str, PromptTemplate] = self.__dict__.setdefault("_prompts_used", {})
        if ref not in used:
            used[ref] = ctx.prompts.get(ref)
        return used[ref]

    def required_fields(self) -> set[str]:
        """Record fields that must be present: those of the prompts this step has loaded."""
        used = self.__dict__.get("_prompts_used", {})
        return set().union(*(t.required_fields for t in used.values())) if used else set()

    def check(self, ctx: StepContext) -> None:
        """Fail fast before the run (missing prompt, unknown model). Override to add checks."""
        for name in self.model_names():
            # api_key() raises when the key's environment variable is unset: better now than as a
            # failure on every record.
            ctx.gateway.registry.get(name).api_key()

    @abc.abstractmethod
    async def run(self, record: Record, ctx: StepContext) -> list[Record] | Record | None:
        """Return the output record(s); ``None`` or ``[]`` drops the record (a filter)."""

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


def with_source_id(record: Record, source_id: str) -> Record:
    """A copy of ``record`` that knows its run id in ``_meta.source_id`` (steps seed their RNG with it)."""
    meta = record.get("_meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["source_id"] = source_id
    return {**record, "_meta": meta}


def source_id_of(record: Record) -> str:
    """The id of the input record this one descends from; a content hash for records built by hand."""
    meta = record.get("_meta")
    if isinstance(meta, dict) and meta.get("source_id"):
        return str(meta["source_id"])
    from ..records import record_id

    return record_id(record)


def as_list(result: list[Record] | Record | None) -> list[Record]:
    if result is None:
        return []
    if isinstance(result, dict):
        return [result]
    return list(result)
