"""Concurrency and rate limits per model: slots, the user's request and token buckets, the server's budget.

Token limits need the cost of a call before it is made; we reserve an estimate (prompt characters / 4 +
``max_tokens``) and settle the difference when the usage comes back, so bursts cannot overshoot for long.

Slots come from :mod:`.adaptive` (an adaptive or a pinned limit). With adaptive concurrency a model also
mirrors the budget the server announces in its x-ratelimit-* headers (:class:`ServerBudget`), so requests
are paced to what the server will accept instead of being sent to collect 429s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .adaptive import ConcurrencyController, ConcurrencySlots, SlotContext, current_ticket
from .rate_headers import Budget, RateLimitInfo


class TokenBucket:
    """Continuous refill at ``per_minute / 60`` units a second, capacity one minute's worth."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)  # a call larger than a minute's budget waits a full minute, not forever
        async with self._lock:
            while True:
                self._refill()
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def settle(self, delta: float) -> None:
        """Give back (negative delta) or charge more (positive) once the real cost is known."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


class ServerBudget:
    """A mirror of one budget the server announces (requests or tokens), used to pace sends.

    Each reply says how much was left when the server counted that request (``remaining``) and how long
    until it is full (``reset``), from which the refill rate follows: ``(limit - remaining) / reset``. The
    level now is that ``remaining``, less what was sent since the request (already counted or about to
    be), plus what refilled since. Between replies the mirror refills at that rate and each send takes
    from it; a send that finds it short waits for the refill. While the budget is far from empty (a large
    daily quota) nothing waits, whatever the rate says.
    """

    def __init__(self) -> None:
        self.rate: float | None = None
        self.size: float | None = None
        self.level: float | None = None
        self.updated = time.monotonic()
        self.sent = 0.0  # units sent since the start, for "sent after this request"
        self.waited = 0.0
        self._lock = asyncio.Lock()

    def sync(self, budget: Budget, sent_mark: float | None, sent_at: float | None) -> None:
        """Take in what one reply said; ``sent_mark``: units sent up to and including its request (``None``:
        unknown, the reply is taken as current), ``sent_at``: when that request was sent."""
        now = time.monotonic()
        if budget.limit is not None and budget.limit > 0:
            self.size = budget.limit
            if budget.reset and budget.reset > 0 and budget.remaining is not None and budget.limit > budget.remaining:
                rate = (budget.limit - budget.remaining) / budget.reset
                self.rate = rate if self.rate is None else self.rate + 0.3 * (rate - self.rate)
        if budget.remaining is None:
            return
        level = budget.remaining - (self.sent - sent_mark if sent_mark is not None else 0.0)
        if self.rate is not None and sent_at is not None:
            level += self.rate * max(0.0, now - sent_at)
        self.level = min(self.size, level) if self.size else level
        self.updated = now

    def _refill(self, now: float) -> None:
        if self.level is not None and self.rate is not None:
            level = self.level + (now - self.updated) * self.rate
            self.level = min(self.size, level) if self.size else level
        self.updated = now

    async def take(self, units: float, max_wait: float = 300.0) -> None:
        """Wait until the server's budget holds ``units``, then take them. A wait longer than ``max_wait`` (a
        daily quota spent) is not waited: the request goes, and the server's refusal says how long, which
        the gateway weighs against ``max_retry_after`` (so a spent quota fails the call, never stalls it)."""
        if self.level is None or self.rate is None:
            self.sent += units
            return
        async with self._lock:
            while True:
                self._refill(time.monotonic())
                need = min(units, self.size or units)
                if self.level is None or self.rate is None or self.level >= need:
                    break
                wait = (need - self.level) / self.rate
                if wait > max_wait:
                    break
                self.waited += wait
                await asyncio.sleep(wait)
            if self.level is not None:
                self.level -= units
            self.sent += units


class ModelLimits:
    """Everything that decides when one model's request may go: a slot, the user's buckets, the server's budget."""

    def __init__(
        self,
        max_concurrency: int,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        adaptive: bool = False,
        max_hold: float = 300.0,
        initial: int | None = None,
    ):
        """``adaptive``: the limit moves between 1 and ``max_concurrency`` (:mod:`.adaptive`) and the
        server's x-ratelimit-* budget paces sends; else exactly ``max_concurrency`` slots. ``initial``: where
        an adaptive limit starts (:func:`.adaptive.initial_limit` of the model's endpoint and engine; unset: 2)."""
        self.controller = ConcurrencyController(max_concurrency, adaptive=adaptive, max_hold=max_hold, initial=initial)
        self.slots = ConcurrencySlots(self.controller)
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None
        self.server_requests = ServerBudget() if adaptive else None
        self.server_tokens = ServerBudget() if adaptive else None

    def slot(self) -> SlotContext:
        """``async with limits.slot():`` around one request; what escapes the block is its feedback."""
        return self.slots.slot()

    async def before_call(self, estimated_tokens: int) -> None:
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(estimated_tokens)
        if self.server_requests is not None and self.server_tokens is not None:
            await self.server_requests.take(1, self.controller.max_hold)
            await self.server_tokens.take(estimated_tokens, self.controller.max_hold)
            ticket = current_ticket.get()
            if ticket is not None:
                ticket.sent_requests, ticket.sent_tokens, ticket.sent_at = (
                    self.server_requests.sent,
                    self.server_tokens.sent,
                    time.monotonic(),
                )

    def after_call(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.settle(actual_tokens - estimated_tokens)

    def sent_marks(self) -> tuple[float, float, float] | None:
        """(requests sent, tokens sent, now) after the call just paced: what a reply's headers are set against."""
        if self.server_requests is None or self.server_tokens is None:
            return None
        return self.server_requests.sent, self.server_tokens.sent, time.monotonic()

    def observe(self, info: RateLimitInfo, marks: tuple[float, float, float] | None = None) -> None:
        """A reply's x-ratelimit-* headers (called by the backend while the request holds its slot). ``marks``:
        the request's :meth:`sent_marks` when it was paced elsewhere (the Ray limits actor); else its ticket's."""
        if self.server_requests is None or self.server_tokens is None:
            return
        if marks is None:
            ticket = current_ticket.get()
            if ticket is not None and ticket.sent_at is not None:
                marks = (ticket.sent_requests, ticket.sent_tokens, ticket.sent_at)
        if info.requests is not None:
            self.server_requests.sync(info.requests, marks[0] if marks else None, marks[2] if marks else None)
        if info.tokens is not None:
            self.server_tokens.sync(info.tokens, marks[1] if marks else None, marks[2] if marks else None)

    def report(self) -> dict[str, Any]:
        """The model's concurrency for the progress bar and summary.json."""
        data = self.controller.report()
        if self.server_requests is not None and self.server_tokens is not None:
            paced = self.server_requests.waited + self.server_tokens.waited
            if self.server_requests.rate is not None or self.server_tokens.rate is not None:
                data["paced_seconds"] = round(paced, 3)
        return data
