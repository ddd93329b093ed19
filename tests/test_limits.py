"""Rate and concurrency limits, on a fake clock so that minutes of limiting take milliseconds to test.

The limits module reads ``time.monotonic`` and sleeps with ``asyncio.sleep``; both are replaced *inside
that module only* by a clock that jumps forward by whatever a sleep asks for, so every assertion about
waiting is exact and no test waits for real.
"""

from __future__ import annotations

import asyncio
import types

import pytest

from joydataforge.models import limits
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.limits import ModelLimits, TokenBucket

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(limits, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(
        limits, "asyncio", types.SimpleNamespace(sleep=fake.sleep, Lock=asyncio.Lock, Semaphore=asyncio.Semaphore)
    )
    return fake


def test_bucket_rejects_non_positive_rates():
    with pytest.raises(ValueError):
        TokenBucket(0)


async def test_request_bucket_allows_a_minute_burst_then_refills_at_the_rate(clock):
    bucket = TokenBucket(60)  # one request a second, a minute's worth of burst
    for _ in range(60):
        await bucket.take(1)
    assert clock.sleeps == [] and bucket.level == pytest.approx(0)
    await bucket.take(1)
    assert sum(clock.sleeps) == pytest.approx(1.0)
    clock.now += 10  # ten idle seconds refill ten requests
    before = len(clock.sleeps)
    for _ in range(10):
        await bucket.take(1)
    assert len(clock.sleeps) == before
    await bucket.take(1)
    assert sum(clock.sleeps[before:]) == pytest.approx(1.0)


async def test_sustained_rate_is_the_configured_one(clock):
    bucket = TokenBucket(120)
    start = clock.now
    for _ in range(120 + 240):  # the burst, then two minutes at 2/s
        await bucket.take(1)
    assert clock.now - start == pytest.approx(120.0)


async def test_token_bucket_and_settlement(clock):
    bucket = TokenBucket(600)  # 10 tokens a second
    await bucket.take(500)
    bucket.settle(100 - 500)  # the call used 100 tokens, not the 500 reserved: 400 come back
    assert bucket.level == pytest.approx(500)
    await bucket.take(500)
    assert clock.sleeps == []
    await bucket.take(50)
    assert sum(clock.sleeps) == pytest.approx(5.0)
    bucket.settle(+100)  # a call that used more than reserved is charged
    assert bucket.level == pytest.approx(-100)
    await bucket.take(10)
    assert sum(clock.sleeps) == pytest.approx(5.0 + 11.0)


async def test_a_call_larger_than_a_minute_waits_a_minute_not_forever(clock):
    bucket = TokenBucket(100)
    await bucket.take(100)
    await bucket.take(10_000)
    assert sum(clock.sleeps) == pytest.approx(60.0)


async def test_concurrent_takers_are_served_in_turn(clock):
    bucket = TokenBucket(60)
    bucket.level = 0
    order: list[int] = []

    async def taker(i: int) -> None:
        await bucket.take(1)
        order.append(i)

    await asyncio.gather(*(taker(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.now - 1000.0 == pytest.approx(5.0)


async def test_model_limits_combine_requests_and_tokens(clock):
    lim = ModelLimits(4, requests_per_minute=600, tokens_per_minute=6000)  # 10 req/s, 100 tok/s
    assert lim.requests is not None and lim.tokens is not None
    await lim.before_call(6000)
    lim.after_call(6000, 100)  # refund 5900
    assert lim.tokens.level == pytest.approx(5900)
    assert lim.requests.level == pytest.approx(599)
    unlimited = ModelLimits(2, None, None)
    await unlimited.before_call(10**9)
    unlimited.after_call(10**9, 1)
    assert unlimited.requests is None and unlimited.tokens is None and clock.sleeps == []


async def test_gateway_honours_requests_per_minute(clock, mock_server):
    reg = ModelRegistry.from_dict(
        {
            "models": {
                "m": {"backend": "openai", "model": "mock-model", "base_url": mock_server.url, "requests_per_minute": 2}
            }
        },
        "t",
    )
    gateway = Gateway(reg)
    try:
        client = gateway.model("m")
        for i in range(4):
            await client.chat([{"role": "user", "content": f"r{i}"}])
    finally:
        await gateway.close()
    assert mock_server.stats()["total"] == 4
    # Two in the burst, then one every 30 s.
    assert sum(clock.sleeps) == pytest.approx(60.0)


async def test_gateway_honours_tokens_per_minute(clock, mock_server):
    reg = ModelRegistry.from_dict(
        {
            "models": {
                "m": {
                    "backend": "openai",
                    "model": "mock-model",
                    "base_url": mock_server.url,
                    "tokens_per_minute": 600,
                    "params": {"max_tokens": 100},
                }
            }
        },
        "t",
    )
    gateway = Gateway(reg)
    try:
        client = gateway.model("m")
        for _ in range(8):
            await client.chat([{"role": "user", "content": "abcd" * 25}])  # estimate 25 + 100 tokens
        bucket = client.limits.tokens
    finally:
        await gateway.close()
    # Each call reserves 125 tokens and is settled to its real 1 + 2 = 3: the bucket never runs dry.
    assert clock.sleeps == []
    assert bucket is not None and bucket.level == pytest.approx(600 - 8 * 3)
