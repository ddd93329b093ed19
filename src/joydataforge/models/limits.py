"""Concurrency and rate limits per model: a semaphore plus request and token buckets.

Token limits need the cost of a call before it is made; we reserve an estimate (prompt characters / 4 +
``max_tokens``) and settle the difference when the usage comes back, so bursts cannot overshoot for long.
"""

from __future__ import annotations

import asyncio
import time


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


class ModelLimits:
    def __init__(self, max_concurrency: int, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None

    async def before_call(self, estimated_tokens: int) -> None:
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(estimated_tokens)

    def after_call(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.settle(actual_tokens - estimated_tokens)
