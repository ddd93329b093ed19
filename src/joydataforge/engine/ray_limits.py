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

Adaptive concurrency (:mod:`~joydataforge.models.adaptive`) is cluster-wide too: the actor owns each
model's :class:`~joydataforge.models.adaptive.ConcurrencyController`, whose limit is the number of slots
it grants, starting where a local run's would (wide against a server of one's own: the controller picks
its scouts from the samples' start times, which workers send). Workers time their requests and send
the samples in batches (every 16, or 50 ms, at once for a 429, a 503 or a timeout), never one actor call
per request; when the limit falls or the server asks to wait (``Retry-After``), ``contended`` turns
true and workers give their leased slots back. The budget a server announces in its x-ratelimit-*
headers is mirrored in the actor as well: once a model's replies carry one, its workers take each
request's share from the actor, as for a configured rate limit.

``run.budget`` is cluster-wide too: the actor holds the run's :class:`~joydataforge.models.budget.BudgetLedger`
(set by the driver before any record is fed), and every worker's clients reserve and settle their calls
there (:class:`ClusterBudget`), so eight workers together stay inside one budget. A run without a budget
costs one actor call per worker and model, to learn that there is none.

A worker killed while holding slots would lose them for the rest of the run, so every grant is tagged
with its holder, ``worker-3#<incarnation>``. A restarted worker (same name, new incarnation) first calls
:meth:`LimitsActor.retire_others`, which gives back what its dead incarnations held and refuses them the
grants they were still waiting for when they died.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from ..errors import BudgetExceeded
from ..models.adaptive import (
    INITIAL_LIMIT,
    NEUTRAL,
    OK,
    RATE_LIMITED,
    ConcurrencyController,
    Ticket,
    current_ticket,
    initial_limit_of,
    signal_of,
)
from ..models.budget import BudgetLedger, BudgetLimits, Hold, Spend
from ..models.config import ModelRegistry
from ..models.gateway import Gateway, ModelClient
from ..models.limits import ModelLimits
from ..models.rate_headers import RateLimitInfo

# (max_concurrency, requests/min, tokens/min, adaptive, max_hold, where adaptive starts): what the actor
# knows of a model.
LimitSpec = tuple[int, float | None, float | None, bool, float, int]
_UNKNOWN: LimitSpec = (16, None, None, False, 300.0, INITIAL_LIMIT)
FEEDBACK_BATCH = 16  # samples a worker sends the actor at once
FEEDBACK_EVERY = 0.05  # seconds: a sample waits at most this long to be sent


class _Slots:
    """One model's slots inside the actor: as many as its controller's limit (pinned or adaptive)."""

    def __init__(self, spec: LimitSpec):
        ceiling, _, _, adaptive, max_hold, initial = spec
        self.controller = ConcurrencyController(
            ceiling, adaptive=adaptive, initial=initial, max_hold=max_hold, clock=time.time
        )
        self.peak = 0
        self.waiters = 0
        self.freed = asyncio.Condition()

    @property
    def capacity(self) -> int:
        return self.controller.limit

    @property
    def in_use(self) -> int:
        return self.controller.in_flight

    def open(self) -> bool:
        controller = self.controller
        return controller.in_flight < controller.limit and time.time() >= controller.hold_until

    def over(self) -> bool:
        """Workers should give slots back: others wait, the limit fell below what is granted, or a hold is on."""
        controller = self.controller
        return self.waiters > 0 or controller.in_flight > controller.limit or time.time() < controller.hold_until


class LimitsActor:
    """The cluster's single source of model slots and rate tokens (run as an async Ray actor)."""

    def __init__(self, limits: dict[str, LimitSpec]):
        self._config = {name: tuple(spec) + _UNKNOWN[len(spec) :] for name, spec in limits.items()}
        self._slots: dict[str, _Slots] = {}
        self._rates: dict[str, ModelLimits] = {}
        self._held: dict[str, Counter[str]] = {}  # holder -> model -> slots held
        self._current: dict[str, str] = {}  # worker name -> its live incarnation's holder name
        self._budget: BudgetLedger | None = None

    def _model(self, name: str) -> _Slots:
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = _Slots(self._config.get(name, _UNKNOWN))  # type: ignore[arg-type]
        return slots

    async def acquire(self, model: str, holder: str, want: int = 1) -> tuple[int, bool]:
        """Wait for a free slot (and the end of any hold), grant up to ``want``; returns (granted, whether
        workers should give slots back as they free them)."""
        slots = self._model(model)
        async with slots.freed:
            slots.waiters += 1
            try:
                while not slots.open():
                    slots.controller.note_waiting()
                    hold = slots.controller.hold_until - time.time()
                    try:  # a hold ends by itself: wake up then even if no slot is freed meanwhile
                        await asyncio.wait_for(slots.freed.wait(), hold if hold > 0 else None)
                    except asyncio.TimeoutError:
                        pass
            finally:
                slots.waiters -= 1
            if self._stale(holder):
                slots.freed.notify(1)  # the wake-up was not used: pass it on
                return 0, False
            # Under contention one at a time, so the others' turn comes as soon as a slot is free.
            grant = 1 if slots.waiters else max(1, min(want, slots.capacity - slots.in_use))
            slots.controller.grant(grant)
            slots.peak = max(slots.peak, slots.in_use)
            self._held.setdefault(holder, Counter())[model] += grant
            return grant, slots.over()

    async def feedback(self, model: str, samples: list[tuple[float, float, str, float | None]]) -> None:
        """Finished requests of one worker: (started, seconds, signal, retry_after), wall-clock starts."""
        slots = self._model(model)
        controller = slots.controller
        changed = False
        for started, seconds, signal, retry_after in samples:
            # Little's law wants the requests in flight: the slots granted now stand for them.
            changed |= controller.feedback(started, seconds, max(1, controller.in_flight), signal, retry_after)
        if changed:
            async with slots.freed:
                slots.freed.notify_all()  # a raised limit grants more; waiters recheck a hold

    async def release(self, model: str, holder: str, count: int = 1) -> None:
        held = self._held.get(holder)
        count = min(count, held[model]) if held else 0
        if count <= 0:
            return  # given back already (release_holder after the worker was restarted)
        held[model] -= count  # type: ignore[index]
        slots = self._model(model)
        async with slots.freed:
            slots.controller.in_flight -= count
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
        """Give back every slot (and budget reservation) a holder held; returns how many slots."""
        if self._budget is not None:
            self._budget.release_holder(holder)
        held = self._held.pop(holder, Counter())
        for model, count in held.items():
            if count > 0:
                slots = self._model(model)
                async with slots.freed:
                    slots.controller.in_flight -= count
                    slots.freed.notify(count)
        return sum(held.values())

    def use_budget(self, limits: BudgetLimits, before: dict[str, Spend]) -> None:
        """The run's budget (``run.budget``) and what earlier runs of the output folder spent."""
        self._budget = BudgetLedger(limits, before)

    def budget_active(self) -> bool:
        return self._budget is not None

    async def reserve(self, model: str, tokens: int, cost: float, holder: str) -> Hold | tuple[str, dict[str, Any]]:
        """A budget reservation, or (reason, detail) of the limit it would cross (raised by the caller: an error
        raised here would reach the worker wrapped in Ray's own)."""
        assert self._budget is not None
        try:
            hold = await self._budget.reserve(model, tokens, cost, holder)
        except BudgetExceeded as exc:
            return (exc.reason, exc.detail())
        if self._stale(holder):  # asked by a worker that died while this waited: nobody would settle it
            self._budget.release(hold)
            return ("the worker that asked was restarted", {"measure": "cost", "limit": 0.0, "spent": 0.0})
        return hold

    def settle(self, hold_id: int, spend: Spend) -> None:
        if self._budget is not None:
            self._budget.settle(hold_id, spend)

    def release_hold(self, hold_id: int) -> None:
        if self._budget is not None:
            self._budget.release(hold_id)

    def contended(self, model: str) -> bool:
        """Whether workers should give slots back as they free them (see :meth:`_Slots.over`)."""
        return self._model(model).over()

    def _rate(self, model: str) -> ModelLimits:
        rate = self._rates.get(model)
        if rate is None:
            concurrency, rpm, tpm, adaptive, max_hold, _ = self._config.get(model, _UNKNOWN)
            rate = self._rates[model] = ModelLimits(concurrency, rpm, tpm, adaptive=adaptive, max_hold=max_hold)
        return rate

    async def before_call(self, model: str, estimated_tokens: int) -> tuple[float, float, float] | None:
        """Take the call's share of the configured rate limits and of the server's announced budget; returns
        the budget's marks for this call (what its reply's headers are set against), if it has one."""
        limits = self._rate(model)
        await limits.before_call(estimated_tokens)
        return limits.sent_marks()

    def after_call(self, model: str, estimated_tokens: int, actual_tokens: int) -> None:
        self._rate(model).after_call(estimated_tokens, actual_tokens)

    def observe(self, model: str, info: RateLimitInfo, marks: tuple[float, float, float] | None) -> None:
        """A reply's x-ratelimit-* headers, seen by a worker."""
        self._rate(model).observe(info, marks)

    def reports(self) -> dict[str, dict[str, Any]]:
        """Each model's concurrency (limit, latency, 429 share), for the progress bar and summary.json."""
        out = {}
        for name, slots in self._slots.items():
            report = slots.controller.report()
            rate = self._rates.get(name)
            if rate is not None:
                report.update({k: v for k, v in rate.report().items() if k == "paced_seconds"})
            out[name] = report
        return out

    def stats(self) -> dict[str, Any]:
        """Slots granted now and at most, and the limit now, per model."""
        return {
            "in_use": {m: s.in_use for m, s in self._slots.items()},
            "peak": {m: s.peak for m, s in self._slots.items()},
            "limit": {m: s.capacity for m, s in self._slots.items()},
        }


def limits_of(registry: ModelRegistry) -> dict[str, LimitSpec]:
    """Each model's (max_concurrency, requests/min, tokens/min, adaptive, max_hold, initial limit): all the
    actor needs. An adaptive limit starts where a local run's would (:func:`initial_limit_of` the model)."""
    return {
        name: (
            config.max_concurrency,
            config.requests_per_minute,
            config.tokens_per_minute,
            config.concurrency == "adaptive",
            config.max_retry_after,
            initial_limit_of(config),
        )
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


class _ClusterSlot:
    """``async with limits.slot():`` on a cluster: a leased slot, timed; how it ended goes to the actor."""

    __slots__ = ("_reset", "limits", "ticket")

    def __init__(self, limits: "ClusterLimits"):
        self.limits = limits

    async def __aenter__(self) -> Ticket:
        limits = self.limits
        while True:  # a 429 this worker saw holds its own leased slots too (the actor holds the others)
            wait = limits.hold_until - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        await limits.semaphore.__aenter__()
        self.ticket = Ticket(time.monotonic(), 0)
        self._reset = current_ticket.set(self.ticket)
        return self.ticket

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        current_ticket.reset(self._reset)
        try:
            await self.limits.semaphore.__aexit__(exc_type, exc, tb)
        finally:
            self.limits.finished(self.ticket, exc)
        return False


class ClusterLimits:
    """What a :class:`ModelClient` calls its ``limits``, answered by the cluster's :class:`LimitsActor`."""

    def __init__(self, actor: Any, model: str, holder: str, rated: bool, max_hold: float = 300.0):
        self.actor = actor
        self.model = model
        self.rated = rated  # only models with a requests or tokens per minute limit ask for tokens
        self.paced = False  # the server announced a budget (x-ratelimit-*): each call takes its share too
        self.max_hold = max_hold
        self.semaphore = _LeasedSlots(actor, model, holder)
        self.hold_until = 0.0  # monotonic: this worker's own view of a Retry-After
        self._samples: list[tuple[float, float, str, float | None]] = []
        self._flushed = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._report: dict[str, Any] = {}

    def slot(self) -> _ClusterSlot:
        return _ClusterSlot(self)

    def finished(self, ticket: Ticket, exc: BaseException | None) -> None:
        """Time the request and queue its sample for the actor (a 429, 503 or timeout goes at once)."""
        now = time.monotonic()
        signal = NEUTRAL if isinstance(exc, asyncio.CancelledError) else signal_of(exc)
        if signal == NEUTRAL:
            return
        retry_after = getattr(exc, "retry_after", None) if signal == RATE_LIMITED else None
        if retry_after is not None and 0 < retry_after <= self.max_hold:
            self.hold_until = max(self.hold_until, now + retry_after)
        seconds = now - ticket.start
        self._samples.append((time.time() - seconds, seconds, signal, retry_after))
        idle = self.semaphore.busy == 0 and self.semaphore.waiting == 0  # the last call of a batch
        if signal != OK or idle or len(self._samples) >= FEEDBACK_BATCH or now - self._flushed >= FEEDBACK_EVERY:
            self.flush()
        elif self._timer is None:  # the rest go within FEEDBACK_EVERY even if no other call ends
            self._timer = asyncio.get_running_loop().call_later(FEEDBACK_EVERY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._samples:
            samples, self._samples = self._samples, []
            self.actor.feedback.remote(self.model, samples)  # not awaited: nothing here depends on it
        self._flushed = time.monotonic()

    async def before_call(self, estimated_tokens: int) -> None:
        if self.rated or self.paced:
            marks = await self.actor.before_call.remote(self.model, estimated_tokens)
            ticket = current_ticket.get()
            if ticket is not None and marks is not None:
                ticket.sent_requests, ticket.sent_tokens, ticket.sent_at = marks

    def after_call(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.rated:
            self.actor.after_call.remote(self.model, estimated_tokens, actual_tokens)  # settling need not wait

    def observe(self, info: RateLimitInfo) -> None:
        """A reply's x-ratelimit-* headers: the actor mirrors the budget; from now on calls take from it."""
        ticket = current_ticket.get()
        marks = (ticket.sent_requests, ticket.sent_tokens, ticket.sent_at) if ticket and ticket.sent_at else None
        self.paced = True
        self.actor.observe.remote(self.model, info, marks)

    def report(self) -> dict[str, Any]:
        """The actor's last known report of this model (see :meth:`ClusterGateway.concurrency`)."""
        return dict(self._report)


class ClusterBudget:
    """What a :class:`ModelClient` calls its ``budget`` on a cluster: reservations from the limits actor."""

    def __init__(self, actor: Any, holder: str):
        self.actor = actor
        self.holder = holder
        self.active: bool | None = None  # asked once: without a budget no call goes to the actor

    async def reserve(self, model: str, tokens: int, cost: float) -> Hold | None:
        if self.active is None:
            self.active = bool(await self.actor.budget_active.remote())
        if not self.active:
            return None
        granted = await self.actor.reserve.remote(model, tokens, cost, self.holder)
        if isinstance(granted, Hold):
            return granted
        reason, detail = granted
        raise BudgetExceeded(reason, **detail)

    def settle(self, hold: Hold, spend: Spend) -> None:
        # Not awaited. An async actor may run a later reserve first: it then still counts this hold (an upper
        # bound) and, if that is what stands in its way, waits for this settle.
        self.actor.settle.remote(hold.id, spend)

    def release(self, hold: Hold) -> None:
        self.actor.release_hold.remote(hold.id)


class ClusterGateway(Gateway):
    """A :class:`Gateway` whose clients take their slots and tokens from the cluster-wide limits actor."""

    REPORT_EVERY = 1.0  # seconds between two asks for the actor's reports (the progress bar's refresh)

    def __init__(self, registry: ModelRegistry, limits_actor: Any, cache: Any = None, holder: str = "driver"):
        super().__init__(registry, cache)
        self.limits_actor = limits_actor
        self.holder = holder
        self._reports: dict[str, dict[str, Any]] = {}
        self._asked = 0.0
        self._asking: Any = None
        self.budget = ClusterBudget(limits_actor, holder)  # asks the actor whether the run has a budget

    def model(self, name: str) -> ModelClient:
        client = super().model(name)
        if not isinstance(client.limits, ClusterLimits):
            config = client.config
            rated = bool(config.requests_per_minute or config.tokens_per_minute)
            client.limits = ClusterLimits(  # type: ignore[assignment]
                self.limits_actor, name, self.holder, rated, config.max_retry_after
            )
        return client

    async def use_budget(self, budget: Any) -> None:
        """The run's budget goes to the limits actor, where every worker's calls are counted against it."""
        if isinstance(budget, BudgetLedger):
            await self.limits_actor.use_budget.remote(budget.limits, budget.before)
        assert isinstance(self.budget, ClusterBudget)
        self.budget.active = None  # asked again at the next call

    def concurrency(self) -> dict[str, dict[str, Any]]:
        """The cluster's limits, as the actor last reported them; asks again at most once a second, in the
        background (the progress bar calls this on every record and must not wait for the actor)."""
        now = time.monotonic()
        if self._asking is None and now - self._asked >= self.REPORT_EVERY:
            self._asked = now
            try:
                self._asking = asyncio.ensure_future(self.limits_actor.reports.remote())
            except RuntimeError:  # no running loop: keep what is known
                self._asking = None
        if self._asking is not None and self._asking.done():
            try:
                self._reports = self._asking.result()
            except BaseException:  # the actor is gone: keep the last reports
                pass
            self._asking = None
        return dict(self._reports)

    async def close(self) -> None:
        for client in self._clients.values():
            if isinstance(client.limits, ClusterLimits):
                client.limits.flush()
        try:
            self._reports = await self.limits_actor.reports.remote()
        except Exception:  # the actor is gone: summary.json shows no concurrency rather than failing the run
            self._reports = {}
        for client in self._clients.values():
            if isinstance(client.limits, ClusterLimits):
                client.limits._report = self._reports.get(client.name, {})
        try:
            await super().close()
        finally:
            for name, report in self._reports.items():  # the cluster's view wins over this process's
                if name in self.usage:
                    self.usage[name].concurrency = report
            await self.limits_actor.release_holder.remote(self.holder)  # leased slots go back


def start_limits_actor(registry: ModelRegistry, name: str) -> Any:
    """Start the run's limits actor under ``name`` (workers look it up by that name)."""
    import ray

    remote = ray.remote(num_cpus=0, max_concurrency=100_000)(LimitsActor)
    return remote.options(name=name).remote(limits_of(registry))
