"""Count every model request of a run by step, model and input record: the measurements of a pilot.

The gateway's own usage (:class:`~joydataforge.models.usage.ModelUsage`) counts per model, and only the
calls a backend answered. A plan needs more: which *step* asked, for which *input record*, whether the reply
came from the cache (a rerun of a pilot still measures), and which requests were re-asks of an invalid JSON
reply. :class:`MeteredGateway` hands steps clients that note each request in a :class:`CallMeter`; the step
and record come from a context variable that :func:`meter_steps` sets around each step's ``run`` (asyncio
tasks inherit it, so the calls a step makes concurrently are attributed too).
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..models.backends.base import Completion
from ..models.cache import CallCache
from ..models.config import ModelRegistry
from ..models.gateway import Gateway, ModelClient
from ..models.retry import RetryPolicy
from .step import Record, Step, StepContext, source_id_of

_SCOPE: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("joyforge_meter_scope", default=None)
UNATTRIBUTED = "(outside a step)"


@dataclass
class Tally:
    """Requests and tokens of one (step, model): first attempts, JSON re-asks, cache hits, failures."""

    requests: int = 0
    re_asks: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # summed latency of the requests a backend answered
    paid: int = 0

    def add(self, other: "Tally") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class CallMeter:
    """Every request of a run: totals by (step, model), and per input record for the spread."""

    totals: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    per_record: dict[tuple[str, str], dict[str, Tally]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Tally))
    )
    started: float = field(default_factory=time.perf_counter)
    lengths: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    """The length of every single first reply, by (step, model): how long replies run decides how often one
    outgrows the room a long prompt leaves in the context window (``joyforge plan``)."""

    def note(self, model: str, completions: list[Completion] | None, attempt: int, seconds: float = 0.0) -> None:
        """One request (a list of samples), or a failed one (``None``)."""
        step, record = _SCOPE.get() or (UNATTRIBUTED, "")
        tally = Tally(requests=1)
        if completions is None:
            tally.failed = 1
        else:
            tally.re_asks = int(attempt > 0)
            tally.cached = int(all(c.cached for c in completions))
            tally.prompt_tokens = sum(c.usage.prompt_tokens for c in completions)
            tally.completion_tokens = sum(c.usage.completion_tokens for c in completions)
            if attempt == 0 and len(completions) == 1:
                self.lengths[(step, model)].append(tally.completion_tokens)
            if not tally.cached:
                tally.paid = 1
                tally.seconds = seconds
        self.totals[(step, model)].add(tally)
        self.per_record[(step, model)][record].add(tally)

    def records(self) -> set[str]:
        """The input records any request was made for."""
        return {record for by_record in self.per_record.values() for record in by_record if record}


class MeteredGateway(Gateway):
    """A gateway whose clients note every request in ``meter`` (a pilot run's measurements).

    Each client's ``_call_n`` is wrapped where the client is made: it is the one place every chat and completion
    request passes (``chat``, ``chat_json`` and each of its re-asks, ``complete``, ``complete_n``, ``chat_tools``),
    so nothing is counted twice, and the client is otherwise the gateway's own.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: CallCache | None = None,
        retry: RetryPolicy | None = None,
        backends: dict[str, Any] | None = None,
        meter: CallMeter | None = None,
    ):
        super().__init__(registry, cache, retry=retry, backends=backends)
        self.meter = meter or CallMeter()

    def model(self, name: str) -> ModelClient:
        client = super().model(name)
        if not getattr(client, "_metered", False):
            client._call_n = _metered(client, self.meter)  # type: ignore[method-assign]
            client._metered = True  # type: ignore[attr-defined]
        return client


def _metered(client: ModelClient, meter: CallMeter) -> Any:
    call_n = client._call_n

    @functools.wraps(call_n)
    async def metered(
        verb: str,
        payload: Any,
        params: dict[str, Any],
        n: int,
        *,
        schema: dict[str, Any] | None = None,
        sample: int = 0,
        attempt: int = 0,
    ) -> list[Completion]:
        started = time.perf_counter()
        try:
            results = await call_n(verb, payload, params, n, schema=schema, sample=sample, attempt=attempt)
        except Exception:
            meter.note(client.name, None, attempt)
            raise
        meter.note(client.name, results, attempt, time.perf_counter() - started)
        return results

    return metered


def meter_steps(steps: list[Step]) -> list[Step]:
    """Make each step's requests attributable: its ``run`` sets the (step, input record) scope first."""
    for step in steps:
        step.run = _scoped(step.name, step.run)  # type: ignore[method-assign]
    return steps


def _scoped(name: str, run: Any) -> Any:
    @functools.wraps(run)
    async def scoped(record: Record, ctx: StepContext) -> Any:
        token = _SCOPE.set((name, source_id_of(record)))
        try:
            return await run(record, ctx)
        finally:
            _SCOPE.reset(token)

    return scoped
