"""Per-model limits that hold across a whole Ray cluster, not per worker.

A model's ``max_concurrency``, ``requests_per_minute`` and ``tokens_per_minute`` describe what its
server accepts. Eight workers each honouring ``max_concurrency: 16`` on their own would send 128
requests at once, so on Ray the limits live in one place: a named async actor,
:class:`LimitsActor`, that owns one :class:`~joydataforge.models.limits.ModelLimits` per model (the
same semaphore and token buckets the local gateway uses) and grants slots and tokens to every worker.

Workers see it through :class:`ClusterLimits`, which has the shape the gateway expects of
``ModelClient.limits`` (an async-context ``semaphore``, ``before_call``, ``after_call``), so the gateway
itself does not change: :class:`ClusterGateway` only swaps the limits object of each client it
creates. The price is one actor round trip to take a slot and one to give it back, about a
millisecond on one machine, small beside a model call.

A slot is released by the worker that took it. A worker killed while holding slots would lose them
for the rest of the run, so slots are leases tagged with a holder name that is stable across restarts
(``worker-3``): a restarted worker first calls :meth:`LimitsActor.release_holder` for its own name,
which gives back whatever its dead incarnation held.
"""
from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from ..models.config import ModelRegistry
from ..models.gateway import Gateway, ModelClient
from ..models.limits import ModelLimits


class LimitsActor:
    """The cluster's single source of model slots and rate tokens (run as an async Ray actor)."""

    def __init__(self, limits: dict[str, tuple[int, float | None, float | None]]):
        self._config = dict(limits)
        self._limits: dict[str, ModelLimits] = {}
        self._held: dict[str, Counter[str]] = {}  # holder -> model -> slots held
        self.in_use: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def _model(self, name: str) -> ModelLimits:
        limits = self._limits.get(name)
        if limits is None:
            concurrency, rpm, tpm = self._config.get(name, (16, None, None))
            limits = self._limits[name] = ModelLimits(concurrency, rpm, tpm)
        return limits

    async def acquire(self, model: str, holder: str) -> None:
        await self._model(model).semaphore.acquire()
        self._held.setdefault(holder, Counter())[model] += 1
        self.in_use[model] += 1
        self.peak[model] = max(self.peak[model], self.in_use[model])

    def release(self, model: str, holder: str) -> None:
        held = self._held.get(holder)
        if not held or held[model] <= 0:
            return  # released already (e.g. by release_holder after the worker was declared dead)
        held[model] -= 1
        self.in_use[model] -= 1
        self._model(model).semaphore.release()

    def release_holder(self, holder: str) -> int:
        """Give back every slot a dead worker held; returns how many."""
        held = self._held.pop(holder, Counter())
        for model, count in held.items():
            for _ in range(count):
                self.in_use[model] -= 1
                self._model(model).semaphore.release()
        return sum(held.values())

    async def before_call(self, model: str, estimated_tokens: int) -> None:
        await self._model(model).before_call(estimated_tokens)

    def after_call(self, model: str, estimated_tokens: int, actual_tokens: int) -> None:
        self._model(model).after_call(estimated_tokens, actual_tokens)

    def stats(self) -> dict[str, Any]:
        """Slots in use now and at most, per model: what a test checks the cluster-wide limit with."""
        return {"in_use": dict(self.in_use), "peak": dict(self.peak)}


def limits_of(registry: ModelRegistry) -> dict[str, tuple[int, float | None, float | None]]:
    """Each model's (max_concurrency, requests/min, tokens/min): all the actor needs to know."""
    return {name: (config.max_concurrency, config.requests_per_minute, config.tokens_per_minute)
            for name, config in registry.models.items()}


class _RemoteSlot:
    """``async with`` one slot of one model, taken from the cluster's limits actor."""

    def __init__(self, actor: Any, model: str, holder: str):
        self.actor, self.model, self.holder = actor, model, holder

    async def __aenter__(self) -> None:
        await self.actor.acquire.remote(self.model, self.holder)

    async def __aexit__(self, *exc: object) -> None:
        # Awaited, not fire-and-forget: the next acquire on this worker must not overtake the release.
        await self.actor.release.remote(self.model, self.holder)


class ClusterLimits:
    """What a :class:`ModelClient` calls its ``limits``, answered by the cluster's :class:`LimitsActor`."""

    def __init__(self, actor: Any, model: str, holder: str):
        self.actor = actor
        self.model = model
        self.semaphore = _RemoteSlot(actor, model, holder)

    async def before_call(self, estimated_tokens: int) -> None:
        await self.actor.before_call.remote(self.model, estimated_tokens)

    def after_call(self, estimated_tokens: int, actual_tokens: int) -> None:
        self.actor.after_call.remote(self.model, estimated_tokens, actual_tokens)  # settling need not wait


class ClusterGateway(Gateway):
    """A :class:`Gateway` whose clients take their slots and tokens from the cluster-wide limits actor."""

    def __init__(self, registry: ModelRegistry, limits_actor: Any, cache: Any = None, holder: str | None = None):
        super().__init__(registry, cache)
        self.limits_actor = limits_actor
        self.holder = holder or uuid.uuid4().hex

    def model(self, name: str) -> ModelClient:
        client = super().model(name)
        if not isinstance(client.limits, ClusterLimits):
            client.limits = ClusterLimits(self.limits_actor, name, self.holder)  # type: ignore[assignment]
        return client


def start_limits_actor(registry: ModelRegistry, name: str) -> Any:
    """Start the run's limits actor under ``name`` (workers look it up by that name)."""
    import ray

    remote = ray.remote(num_cpus=0, max_concurrency=100_000)(LimitsActor)
    return remote.options(name=name, lifetime=None).remote(limits_of(registry))

