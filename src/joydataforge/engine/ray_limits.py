"""Per-model limits that hold across a whole Ray cluster, not per worker.

A model's ``max_concurrency``, ``requests_per_minute`` and ``tokens_per_minute`` describe what its
server accepts. Eight workers each honouring ``max_concurrency: 16`` on their own would send 128
requests at once, so on Ray the limits live in one place: a named async actor, :class:`LimitsActor`,
that owns every model's slots (``max_concurrency`` of them) and its token buckets (the same
:class:`~joydataforge.models.limits.ModelLimits` buckets the local gateway uses).

Workers see it through :class:`ClusterLimits`, which has the shape the gateway expects of
``ModelClient.limits`` (an async-context ``semaphore``, ``before_call``, ``after_call``), so the gateway
itself does not change: :class:`ClusterGateway` only swaps the limits object of each client it creates.

Slots are leased, not borrowed per call. Asking the actor for a slot on every call and giving it back
after (two actor calls per model call) halved the throughput on a small machine (bench/ray.py). So a
worker keeps the slots it was granted while it has calls waiting for them, and reuses them without
asking; it gives a slot back when its own queue is empty, or when the actor says that someone else is
waiting (learnt from each grant, and from one background ``contended`` probe at a time while the worker
is busy). The total granted never exceeds ``max_concurrency``: the limit holds exactly, cluster-wide;
what leasing trades is some fairness between workers under contention, never the limit.
Rate tokens are asked for per call, and only by models that have a rate limit.

A worker killed while holding slots would lose them for the rest of the run, so every grant is tagged
with its holder, ``worker-3#<incarnation>``. A restarted worker (same name, new incarnation) first calls
:meth:`LimitsActor.retire_others`, which gives back what its dead incarnations held and refuses them the
grants they were still waiting for when they died.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from ..models.config import ModelRegistry
from ..models.gateway import Gateway, ModelClient
from ..models.limits import ModelLimits


class _Slots:
    """One model's slots inside the actor."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self.in_use = 0
        self.peak = 0
        self.waiters = 0
        self.freed = asyncio.Condition()


class LimitsActor:
    """The cluster's single source of model slots and rate tokens (run as an async Ray actor)."""

    def __init__(self, limits: dict[str, tuple[int, float | None, float | None]]):
        self._config = dict(limits)
        self._slots: dict[str, _Slots] = {}
        self._rates: dict[str, ModelLimits] = {}
        self._held: dict[str, Counter[str]] = {}  # holder -> model -> slots held
        self._current: dict[str, str] = {}  # worker name -> its live incarnation's holder name

    def _model(self, name: str) -> _Slots:
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = _Slots(self._config.get(name, (16, None, None))[0])
        return slots

    async def acquire(self, model: str, holder: str, want: int = 1) -> tuple[int, bool]:
        """Wait for a free slot, grant up to ``want``; returns (granted, whether others still wait)."""
        slots = self._model(model)
        async with slots.freed:
            slots.waiters += 1
            try:
                await slots.freed.wait_for(lambda: slots.in_use < slots.capacity)
            finally:
                slots.waiters -= 1
            if self._stale(holder):
                slots.freed.notify(1)  # the wake-up was not used: pass it on
                return 0, False
            # Under contention one at a time, so the others' turn comes as soon as a slot is free.
            grant = 1 if slots.waiters else max(1, min(want, slots.capacity - slots.in_use))
            slots.in_use += grant
            slots.peak = max(slots.peak, slots.in_use)
            self._held.setdefault(holder, Counter())[model] += grant
            return grant, slots.waiters > 0

    async def release(self, model: str, holder: str, count: int = 1) -> None:
        held = self._held.get(holder)
        count = min(count, held[model]) if held else 0
        if count <= 0:
            return  # given back already (release_holder after the worker was restarted)
        held[model] -= count  # type: ignore[index]
        slots = self._model(model)
        async with slots.freed:
            slots.in_use -= count
            slots.freed.notify(count)

    def _stale(self, holder: str) -> bool:
        current = self._current.get(holder.split("#")[0])
        return current is not None and current != holder

    async def retire_others(self, holder: str) -> int:
        """``holder`` (``worker-3#<incarnation>``) is its worker's live incarnation: give back every slot
        the earlier incarnations held, and refuse them any later grant (an acquire they sent before
        dying may still be waiting here). Returns how many slots came back."""
        name = holder.split("#")[0]
        self._current[name] = holder
        returned = 0
        for other in [h for h in self._held if h != holder and h.split("#")[0] == name]:
            returned += await self.release_holder(other)
        return returned

    async def release_holder(self, holder: str) -> int:
        """Give back every slot a holder held; returns how many."""
        held = self._held.pop(holder, Counter())
        for model, count in held.items():
            if count > 0:
                slots = self._model(model)
                async with slots.freed:
                    slots.in_use -= count
                    slots.freed.notify(count)
        return sum(held.values())

    def contended(self, model: str) -> bool:
        return self._model(model).waiters > 0

    def _rate(self, model: str) -> ModelLimits:
        rate = self._rates.get(model)
        if rate is None:
            concurrency, rpm, tpm = self._config.get(model, (16, None, None))
            rate = self._rates[model] = ModelLimits(concurrency, rpm, tpm)
        return rate

    async def before_call(self, model: str, estimated_tokens: int) -> None:
        await self._rate(model).before_call(estimated_tokens)

    def after_call(self, model: str, estimated_tokens: int, actual_tokens: int) -> None:
        self._rate(model).after_call(estimated_tokens, actual_tokens)

    def stats(self) -> dict[str, Any]:
        """Slots granted now and at most, per model."""
        return {
            "in_use": {m: s.in_use for m, s in self._slots.items()},
            "peak": {m: s.peak for m, s in self._slots.items()},
        }


def limits_of(registry: ModelRegistry) -> dict[str, tuple[int, float | None, float | None]]:
    """Each model's (max_concurrency, requests/min, tokens/min): all the actor needs to know."""
    return {
        name: (config.max_concurrency, config.requests_per_minute, config.tokens_per_minute)
        for name, config in registry.models.items()
    }


class _LeasedSlots:
    """This worker's lease on one model's slots: ``async with`` takes one, reusing held slots first."""

    def __init__(self, actor: Any, model: str, holder: str):
        self.actor, self.model, self.holder = actor, model, holder
        self.held = 0  # slots granted to this worker
        self.busy = 0  # of which in use by a call
        self.waiting = 0  # calls of this worker waiting for a slot
        self.contended = False
        self.changed = asyncio.Condition()
        self._fetch: asyncio.Task[None] | None = None
        self._probe: asyncio.Future[Any] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> None:
        async with self.changed:
            self.waiting += 1
            try:
                while self.busy >= self.held:
                    if self._error is not None:
                        raise self._error
                    if self._fetch is None:
                        self._fetch = asyncio.create_task(self._ask())
                    await self.changed.wait()
            finally:
                self.waiting -= 1
            self.busy += 1

    async def _ask(self) -> None:
        try:
            granted, contended = await self.actor.acquire.remote(self.model, self.holder, max(1, self.waiting))
        except BaseException as exc:  # the limits actor is gone: every waiting call fails, none hangs
            granted, contended, self._error = 0, False, exc
        async with self.changed:
            self.held += granted
            self.contended = contended
            self._fetch = None
            self.changed.notify_all()

    async def __aexit__(self, *exc: object) -> None:
        async with self.changed:
            self.busy -= 1
            self._watch_contention()
            if self.waiting == 0 or self.contended:
                self.held -= 1
                self.actor.release.remote(self.model, self.holder, 1)  # not awaited: nothing depends on it
            else:
                self.changed.notify(1)

    def _watch_contention(self) -> None:
        """Keep one ``contended`` probe in flight while this worker holds slots others might want."""
        if self._probe is not None and self._probe.done():
            try:
                self.contended = bool(self._probe.result())
            except BaseException:
                pass
            self._probe = None
        if self._probe is None and self.waiting > 0:
            self._probe = asyncio.ensure_future(self.actor.contended.remote(self.model))


class ClusterLimits:
    """What a :class:`ModelClient` calls its ``limits``, answered by the cluster's :class:`LimitsActor`."""

    def __init__(self, actor: Any, model: str, holder: str, rated: bool):
        self.actor = actor
        self.model = model
        self.rated = rated  # only models with a requests or tokens per minute limit ask for tokens
        self.semaphore = _LeasedSlots(actor, model, holder)

    async def before_call(self, estimated_tokens: int) -> None:
        if self.rated:
            await self.actor.before_call.remote(self.model, estimated_tokens)

    def after_call(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.rated:
            self.actor.after_call.remote(self.model, estimated_tokens, actual_tokens)  # settling need not wait


class ClusterGateway(Gateway):
    """A :class:`Gateway` whose clients take their slots and tokens from the cluster-wide limits actor."""

    def __init__(self, registry: ModelRegistry, limits_actor: Any, cache: Any = None, holder: str = "driver"):
        super().__init__(registry, cache)
        self.limits_actor = limits_actor
        self.holder = holder

    def model(self, name: str) -> ModelClient:
        client = super().model(name)
        if not isinstance(client.limits, ClusterLimits):
            config = client.config
            rated = bool(config.requests_per_minute or config.tokens_per_minute)
            client.limits = ClusterLimits(self.limits_actor, name, self.holder, rated)  # type: ignore[assignment]
        return client

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.limits_actor.release_holder.remote(self.holder)  # leased slots go back


def start_limits_actor(registry: ModelRegistry, name: str) -> Any:
    """Start the run's limits actor under ``name`` (workers look it up by that name)."""
    import ray

    remote = ray.remote(num_cpus=0, max_concurrency=100_000)(LimitsActor)
    return remote.options(name=name).remote(limits_of(registry))
