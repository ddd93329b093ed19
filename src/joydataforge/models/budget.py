"""``run.budget``: what a run may spend, and the ledger that keeps every call inside it.

A limit is money and/or tokens, for the whole run and per model. Before each call that is not answered from
the cache, the gateway *reserves* what the call can cost at most: its prompt tokens (counted on the request,
with the model's tokenizer where there is one), its completion up to ``max_tokens`` (times ``n`` samples),
priced by :func:`~joydataforge.models.prices.price_of`. The reservation is granted only when everything
spent so far, plus every reservation still open, plus this one stays within every limit that applies to the
model; when it would cross one only because of other calls in flight, it waits for them to settle (they
usually cost less than reserved); when it would cross one on what is already spent, it raises
:class:`~joydataforge.errors.BudgetExceeded` and the call is not made. After the call the reservation is
*settled* with the real usage (or released, when the call failed). So the spending never passes a limit as
long as replies keep within ``max_tokens`` and prompts within their counted size (a count that came out low
raises the model's later estimates by the same ratio).

"Spent" is over every run of an output folder: the executor hands the ledger what earlier runs spent
(``spend.json``, :mod:`joydataforge.engine.run_state`), so a resume with the same budget stops at once.

Locally the ledger lives in the gateway; on Ray it lives in the cluster's limits actor
(:mod:`joydataforge.engine.ray_limits`), which every worker asks, so the limits hold cluster-wide.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import BudgetExceeded
from .config import ModelRegistry
from .prices import price_of
from .usage import ModelUsage

TOLERANCE = 1e-9  # float sums of prices: 0.1 + 0.2 is not above a limit of 0.3


@dataclass
class Spend:
    """What one model has spent: calls answered by a backend, their tokens and their cost."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def plus(self, other: "Spend") -> "Spend":
        return Spend(
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost + other.cost,
        )

    @classmethod
    def of_usage(cls, usage: ModelUsage) -> "Spend":
        return cls(usage.calls, usage.prompt_tokens, usage.completion_tokens, usage.cost)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Spend":
        return cls(
            int(data.get("calls", 0)),
            int(data.get("prompt_tokens", 0)),
            int(data.get("completion_tokens", 0)),
            float(data.get("cost", 0.0)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": round(self.cost, 9),
        }


def combined(before: Mapping[str, Spend], usage: Mapping[str, ModelUsage]) -> dict[str, Spend]:
    """What earlier runs spent plus what this run's usage counted, by model."""
    total = {name: Spend().plus(spend) for name, spend in before.items()}
    for name, counted in usage.items():
        total[name] = total.get(name, Spend()).plus(Spend.of_usage(counted))
    return total


@dataclass(frozen=True)
class Limit:
    """Money and/or tokens; ``None``: no limit of that kind."""

    cost: float | None = None
    tokens: int | None = None

    @property
    def active(self) -> bool:
        return self.cost is not None or self.tokens is not None


@dataclass(frozen=True)
class BudgetLimits:
    """The limits of a run (``run.budget``), as plain data: the run's own and each model's."""

    run: Limit = Limit()
    models: dict[str, Limit] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Any) -> "BudgetLimits":
        """From a :class:`~joydataforge.config.pipeline.BudgetConfig` (or anything with its fields)."""
        models = {name: Limit(limit.cost, limit.tokens) for name, limit in (config.models or {}).items()}
        return cls(Limit(config.cost, config.tokens), models)

    @property
    def active(self) -> bool:
        return self.run.active or any(limit.active for limit in self.models.values())

    def priced(self, model: str) -> bool:
        """Whether a money limit applies to ``model``'s calls (then its price must be known)."""
        own = self.models.get(model)
        return self.run.cost is not None or (own is not None and own.cost is not None)


def budget_problems(limits: BudgetLimits, registry: ModelRegistry, used: Iterable[str]) -> list[str]:
    """What makes ``limits`` unusable for a run calling the models ``used``: a model name the registry does not
    know, a money limit over a model whose price nobody knows. One line each, naming the setting."""
    problems = []
    for name in limits.models:
        if name not in registry.models:
            known = ", ".join(sorted(registry.models))
            problems.append(f"run.budget.models: '{name}' is not a model of this run (known: {known})")
    for name in sorted(set(used)):
        if name in registry.models and limits.priced(name) and price_of(registry.get(name)) is None:
            config = registry.get(name)
            problems.append(
                f"run.budget: model '{name}' ({config.model} at {config.base_url}) has no known price, so a money "
                "limit cannot count its calls: give it `pricing:` in models.yaml, or limit it in tokens"
            )
    return problems


@dataclass(frozen=True)
class Hold:
    """One reservation: what a call may cost at most, held against the limits until it is settled."""

    id: int
    model: str
    tokens: int
    cost: float
    holder: str = ""


class Budget(Protocol):
    """What a :class:`~joydataforge.models.gateway.ModelClient` asks: the local ledger, or its cluster proxy."""

    async def reserve(self, model: str, tokens: int, cost: float) -> Hold | None: ...

    def settle(self, hold: Hold, spend: Spend) -> None: ...

    def release(self, hold: Hold) -> None: ...


class BudgetLedger:
    """The limits, what was spent under them (earlier runs and this one) and the reservations open now.

    Used from one event loop (the run's, or the Ray limits actor's); ``settle`` and ``release`` are plain
    calls, so a cancelled call can give its reservation back from a ``finally``.
    """

    def __init__(self, limits: BudgetLimits, before: Mapping[str, Spend] | None = None):
        self.limits = limits
        self.before = {name: Spend().plus(spend) for name, spend in (before or {}).items()}
        self.spent = {name: Spend().plus(spend) for name, spend in self.before.items()}
        self.held: dict[int, Hold] = {}
        self._ids = itertools.count(1)
        self._changed: asyncio.Event | None = None
        # Running sums, by model and for all (None): [tokens, cost] spent and held. Kept, not summed per call:
        # a reservation is checked against them with hundreds of calls in flight.
        self._spent_sum: dict[str | None, list[float]] = {None: [0, 0.0]}
        self._held_sum: dict[str | None, list[float]] = {None: [0, 0.0]}
        for name, spend in self.spent.items():
            self._add(self._spent_sum, name, spend.tokens, spend.cost)

    @staticmethod
    def _add(sums: dict[str | None, list[float]], model: str, tokens: float, cost: float) -> None:
        for key in (model, None):
            entry = sums.setdefault(key, [0, 0.0])
            entry[0] += tokens
            entry[1] += cost

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _total(self, model: str | None) -> tuple[float, float, float, float]:
        """(tokens spent, cost spent, tokens held, cost held) of one model, or of all (``None``)."""
        spent = self._spent_sum.get(model, (0, 0.0))
        held = self._held_sum.get(model, (0, 0.0))
        return spent[0], spent[1], held[0], held[1]

    def crossed(self, model: str, tokens: int, cost: float, *, with_held: bool) -> BudgetExceeded | None:
        """The first limit a call of ``model`` costing up to (``tokens``, ``cost``) would cross, as the error
        to raise; ``with_held``: counting the reservations open now as spent."""
        scopes: list[tuple[str | None, Limit]] = [(None, self.limits.run)]
        own = self.limits.models.get(model)
        if own is not None:
            scopes.insert(0, (model, own))
        for scope, limit in scopes:
            if not limit.active:
                continue
            spent_tokens, spent_cost, held_tokens, held_cost = self._total(scope)
            if not with_held:
                held_tokens, held_cost = 0, 0.0
            if limit.cost is not None and spent_cost + held_cost + cost > limit.cost + TOLERANCE:
                return _exceeded("cost", scope, model, limit.cost, spent_cost, cost)
            if limit.tokens is not None and spent_tokens + held_tokens + tokens > limit.tokens:
                return _exceeded("tokens", scope, model, limit.tokens, spent_tokens, tokens)
        return None

    async def reserve(self, model: str, tokens: int, cost: float, holder: str = "") -> Hold:
        """Hold (``tokens``, ``cost``) for one call of ``model``, waiting for calls in flight to settle while
        only their reservations stand in the way; raises :class:`BudgetExceeded` when what is spent already
        leaves no room for it."""
        while True:
            over = self.crossed(model, tokens, cost, with_held=False)
            if over is not None:
                raise over
            if self.crossed(model, tokens, cost, with_held=True) is None:
                break
            event = self._event()
            event.clear()
            await event.wait()
        hold = Hold(next(self._ids), model, tokens, cost, holder)
        self.held[hold.id] = hold
        self._add(self._held_sum, model, tokens, cost)
        return hold

    def settle(self, hold: Hold | int, spend: Spend) -> None:
        """The call is done: its reservation gives way to what it really spent. A hold the ledger does not hold
        (``Hold(0, model, 0, 0.0)``) only adds the spend: money spent outside a call (a collected batch)."""
        found = self._unhold(hold)
        model = found.model if found is not None else (hold.model if isinstance(hold, Hold) else None)
        if model is not None:
            self.spent[model] = self.spent.get(model, Spend()).plus(spend)
            self._add(self._spent_sum, model, spend.tokens, spend.cost)
        self._event().set()

    def _unhold(self, hold: Hold | int) -> Hold | None:
        found = self.held.pop(hold if isinstance(hold, int) else hold.id, None)
        if found is not None:
            self._add(self._held_sum, found.model, -found.tokens, -found.cost)
        return found

    def release(self, hold: Hold | int) -> None:
        """The call failed or was cancelled: nothing was spent, its reservation is given back."""
        self._unhold(hold)
        self._event().set()

    def release_holder(self, holder: str) -> int:
        """Give back every reservation of ``holder`` (a Ray worker that died mid-call); returns how many."""
        gone = [hold_id for hold_id, hold in self.held.items() if hold.holder == holder]
        for hold_id in gone:
            self._unhold(hold_id)
        if gone:
            self._event().set()
        return len(gone)

    def this_run(self) -> dict[str, Spend]:
        """What this run spent, by model (the ledger's totals less what earlier runs had spent)."""
        out = {}
        for name, spend in self.spent.items():
            before = self.before.get(name, Spend())
            out[name] = Spend(
                spend.calls - before.calls,
                spend.prompt_tokens - before.prompt_tokens,
                spend.completion_tokens - before.completion_tokens,
                spend.cost - before.cost,
            )
        return out


def _exceeded(measure: str, scope: str | None, model: str, limit: float, spent: float, call: float) -> BudgetExceeded:
    """The one-line reason: which limit, what was spent under it, what the next call needed."""
    setting = f"run.budget.{measure}" if scope is None else f"run.budget.models.{scope}.{measure}"
    if measure == "cost":
        spent_text, limit_text, call_text = money(spent), money(limit), money(call)
    else:
        spent_text, limit_text, call_text = f"{int(spent):,}", f"{int(limit):,}", f"{int(call):,} tokens"
    why = f"spent {spent_text} of {setting} {limit_text}, every run of this output folder counted"
    if spent < limit - TOLERANCE:
        why += f"; the next call to '{model}' may {'cost' if measure == 'cost' else 'take'} up to {call_text}"
    return BudgetExceeded(
        f"budget reached: {why}",
        measure=measure,
        limit=limit,
        spent=spent,
        model=scope,
    )


def money(value: float) -> str:
    """An amount as a person reads it: ``5``, ``4.9912``, ``0.000123``."""
    if value == 0:
        return "0"
    if abs(value) >= 0.01:
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"
