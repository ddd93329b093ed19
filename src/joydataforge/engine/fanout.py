"""What a step will ask of its models, said before it runs: the vocabulary of ``joyforge plan``.

Each method's ``plan.py`` says, from the step's settings alone, how many calls of each kind one record
costs: its *fan-out* (voters, candidates x samples, judges x pairs x 2 orders, Evol rounds x operations,
rewrite cases). It also renders the requests it would send for a record with the step's own templates,
so the plan counts their tokens with the model's tokenizer and finds the ones already in the call cache.

Whatever depends on the replies (how many records a gate lets through, how many children survive
elimination, how often a JSON reply is re-asked) is an :class:`Assumption`: named, with a default and a
plausible range, settable by the user (``--assume cascade.gate_rate=0.3``), and listed in every plan with
where its value came from.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config.base import StepConfig
    from .step import Record, Step, StepContext

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Assumption:
    """A number the plan cannot know before the replies: its default and the range it plausibly takes."""

    name: str
    default: float
    description: str
    low: float = 0.0
    """The plausible range, over which the plan's ranges are evaluated: ``low`` to ``high``."""
    high: float = 1.0
    minimum: float = 0.0
    """The values that mean something (a share: 0 to 1): what ``--assume`` accepts."""
    maximum: float = 1.0

    def check(self, value: float) -> float:
        if not self.minimum <= value <= self.maximum:
            raise ConfigError(f"--assume {self.name}={value:g}: must be between {self.minimum:g} and {self.maximum:g}")
        return value


class Assumptions:
    """The values a plan uses: the user's, else the defaults; it remembers which ones were read.

    ``overrides`` replaces values for one evaluation (the plan's ranges evaluate each assumption at its low
    and high end); ``known`` is every assumption of every method, so a misspelt name is caught.
    """

    def __init__(self, known: Mapping[str, Assumption], values: Mapping[str, float] | None = None):
        self.known = dict(known)
        self.values = dict(values or {})
        self.read: set[str] = set()
        self.overrides: dict[str, float] = {}

    def __getitem__(self, name: str) -> float:
        if name not in self.known:
            raise KeyError(f"unknown assumption {name!r}")  # a bug in a plan.py, not the user's
        self.read.add(name)
        if name in self.overrides:
            return self.overrides[name]
        return self.values.get(name, self.known[name].default)

    def source(self, name: str) -> str:
        return "set" if name in self.values else "default"

    def evaluated_at(self, overrides: Mapping[str, float]) -> "Assumptions":
        """The same assumptions with some values replaced (for one evaluation of a range)."""
        copy = Assumptions(self.known, self.values)
        copy.overrides = dict(overrides)
        return copy

    @classmethod
    def parse(cls, known: Mapping[str, Assumption], items: list[str], file: str | None = None) -> "Assumptions":
        """``NAME=VALUE`` items (``--assume``) over a YAML or JSON file of ``NAME: VALUE`` (``--assume-file``).

        Every mistake is one line naming the assumption; an unknown name is compared with the known ones.
        """
        values: dict[str, Any] = {}
        if file is not None:
            path = Path(file)
            if not path.is_file():
                raise ConfigError(f"assumptions file not found: {path}")
            try:
                data = yaml.safe_load(path.read_text("utf-8")) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: expected a mapping of assumption names to numbers")
            values.update({str(k): v for k, v in _flatten(data).items()})
        for item in items:
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--assume {item}: write NAME=VALUE, e.g. --assume cascade.gate_rate=0.3")
            values[name.strip()] = value.strip()
        parsed: dict[str, float] = {}
        for name, value in values.items():
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(f"--assume {name}: unknown assumption ({hint}`joyforge plan --list-assumptions`)")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"--assume {name}={value}: not a number") from None
            parsed[name] = known[name].check(number)
        return cls(known, parsed)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{cascade: {gate_rate: 0.3}}`` and ``{cascade.gate_rate: 0.3}`` say the same."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class Calls:
    """Calls of one kind: expected first attempts per record the step sees, by one model.

    ``exact``: the count follows from the settings and the record alone, not from any reply. ``json``: the
    reply is parsed against a schema, so an invalid one is re-asked (counted apart, from ``json.invalid_rate``
    and the model's ``json_retries``). ``params`` are the step's sampling parameters for these calls (their
    ``max_tokens`` bounds the reply); ``n`` is samples per request (raw completions drawn together).
    """

    role: str
    model: str
    count: float
    exact: bool = True
    json: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    n: int = 1


@dataclass(frozen=True)
class FanOut:
    """A step's calls per record it sees, and the records it hands on per record (a filter < 1, fan-out > 1).

    ``adds`` names the fields the outputs gain and the role whose reply fills each, so the plan can size the
    prompts of later steps that read them.
    """

    calls: list[Calls]
    outputs: float = 1.0
    exact_outputs: bool = True
    adds: Mapping[str, str] = field(default_factory=dict)
    once_per: str | None = None
    """Calls are made once per distinct value (a dialogue id): a later record with the same one costs none."""


@dataclass(frozen=True)
class Request:
    """One request a step would send for a record, rendered with the step's own templates and settings.

    Parts that come from replies not known before the run (a draft shown to a critic, candidates shown to a
    judge) are left empty; ``inserts`` says whose replies they are (role -> how many), so the plan adds their
    expected length. A request without inserts is the very request of the run: ``keyed`` then lets the plan
    look its cache key up, with the gateway's own key function.
    """

    role: str
    model: str
    payload: Messages | str | dict[str, Any]
    verb: str = "chat"
    params: Mapping[str, Any] = field(default_factory=dict)
    schema: Mapping[str, Any] | None = None
    sample: int = 0
    n: int = 1
    inserts: Mapping[str, float] = field(default_factory=dict)
    keyed: bool = True

    @property
    def known(self) -> bool:
        return self.keyed and not self.inserts


FanOutFn = Callable[["StepConfig", Assumptions, "Record | None"], FanOut]
RequestsFn = Callable[["Step", "StepContext", "Record"], "list[Request] | Awaitable[list[Request]]"]


@dataclass(frozen=True)
class MethodPlan:
    """What a step kind tells the planner: its fan-out, optionally its requests, and its assumptions."""

    fan_out: FanOutFn
    requests: RequestsFn | None = None
    assumptions: tuple[Assumption, ...] = ()


JSON_INVALID = Assumption(
    "json.invalid_rate",
    0.0,
    "share of JSON replies that do not parse or match their schema and are re-asked (up to the model's json_retries)",
    0.0,
    0.5,
)
COMPLETION_FILL = Assumption(
    "completion.fill",
    1.0,
    "share of max_tokens a reply uses (1: every reply runs to max_tokens, an upper bound)",
    0.05,
    1.0,
)
DEFAULT_MAX_TOKENS = Assumption(
    "completion.max_tokens", 256.0, "reply length in tokens for calls that set no max_tokens", 64, 2048, 1, 1e6
)
SECONDS_PER_CALL = Assumption(
    "time.seconds_per_call", 1.0, "latency of a call before its first token, in seconds", 0.2, 5.0, 0.0, 3600.0
)
TOKENS_PER_SECOND = Assumption(
    "time.tokens_per_second", 50.0, "completion tokens a model writes per second, per request", 10, 200, 0.01, 1e6
)
FAILURE_RATE = Assumption(
    "records.failure_rate", 0.0, "share of records that fail at a step (they reach no later step)", 0.0, 0.2
)
GENERAL = (JSON_INVALID, COMPLETION_FILL, DEFAULT_MAX_TOKENS, SECONDS_PER_CALL, TOKENS_PER_SECOND, FAILURE_RATE)


def max_tokens_of(params: Mapping[str, Any]) -> int | None:
    """The reply bound a set of sampling parameters sets, if any."""
    for name in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
