"""The mock server's finite-server options: ``capacity`` (a batch, then a FIFO queue) and a request quota
answering 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers (bench/adaptive.py uses both)."""

from __future__ import annotations

import asyncio
from operator import itemgetter
from typing import Any

import aiohttp
import pytest

from tests.mock_openai import MockOptions, spawn_mock_server
from tests.mock_openai.server import cli_args
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)
BODY = {"messages": [{"role": "user", "content": "x"}]}


async def post_many(url: str, n: int) -> list[tuple[int, dict[str, str]]]:
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, dict[str, str]]:
            async with session.post(url + "/chat/completions", json=BODY) as response:
                await response.read()
                return response.status, {k.lower(): v for k, v in response.headers.items()}

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def post_all_at_once(server: Any, n: int, *, served: int) -> list[tuple[int, dict[str, str]]]:
    """``n`` requests, answered only once ``served`` of them are being served and the rest queue behind them,
    so what the test counts never depends on how fast this machine sends them."""
    server.configure(hold_after=0)
    replies = asyncio.ensure_future(post_many(server.url, n))
    await eventually(
        lambda: itemgetter("held", "queued")(server.stats()) == (served, n - served),
        f"{served} served and {n - served} queued",
    )
    server.configure(hold_after=-1)
    return await replies


async def test_capacity_serves_that_many_at_once_and_queues_the_rest(mock_server_factory: Any) -> None:
    server = mock_server_factory(latency=0.3, capacity=4)
    replies = await post_all_at_once(server, 12, served=4)
    stats = server.stats()
    assert [status for status, _ in replies] == [200] * 12
    assert stats["max_in_flight"] == 12 and stats["max_queued"] == 8 and stats["queued"] == 0
    assert stats["options"]["capacity"] == 4


async def test_quota_answers_429_with_retry_after_and_rate_limit_headers(mock_server_factory: Any) -> None:
    server = mock_server_factory(quota_rps=0.01, quota_burst=3)  # no refill to speak of during the test
    replies = []
    for _ in range(5):
        replies += await post_many(server.url, 1)
    statuses = [status for status, _ in replies]
    assert statuses == [200, 200, 200, 429, 429]
    remaining = [headers["x-ratelimit-remaining-requests"] for _, headers in replies]
    assert remaining == ["2", "1", "0", "0", "0"]
    for _, headers in replies:
        assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-reset-requests"].endswith("s")
    refused = replies[3][1]
    assert int(refused["retry-after"]) >= 1 and int(refused["retry-after-ms"]) > 1000  # 100 s for one request
    assert "retry-after" not in replies[0][1]
    server.reset()  # refills the quota
    assert (await post_many(server.url, 1))[0][0] == 200


async def test_quota_without_headers_still_says_retry_after(mock_server_factory: Any) -> None:
    server = mock_server_factory(quota_rps=0.01, quota_burst=1, quota_headers=False)
    replies = await post_many(server.url, 1) + await post_many(server.url, 1)
    assert [status for status, _ in replies] == [200, 429]
    assert not any(k.startswith("x-ratelimit-") for _, headers in replies for k in headers)
    assert "retry-after" in replies[1][1] and "retry-after-ms" in replies[1][1]


async def test_options_change_at_run_time(mock_server_factory: Any) -> None:
    server = mock_server_factory(latency=0.2)
    server.configure(capacity=2, quota_rps=100.0, quota_burst=100.0)
    await post_all_at_once(server, 6, served=2)
    stats = server.stats()
    assert stats["max_queued"] == 4 and stats["by_status"]["200"] == 6
    server.configure(quota_rps=0.0, capacity=0)
    assert server.stats()["options"]["quota_rps"] == 0.0


def test_child_process_takes_the_same_options() -> None:
    options = MockOptions(capacity=3, quota_rps=2.5, quota_burst=4.0, quota_headers=False)
    args = cli_args(options)
    assert args[args.index("--capacity") + 1] == "3" and "--no-quota-headers" in args
    assert args[args.index("--quota-rps") + 1] == "2.5" and args[args.index("--quota-burst") + 1] == "4.0"
    assert "--hold-after" not in args and cli_args(MockOptions(hold_after=5))[-2:] == ["--hold-after", "5"]
    with spawn_mock_server(capacity=3, quota_rps=2.5, quota_burst=4.0, quota_headers=False) as server:
        stats = server.stats()
    assert stats["options"]["capacity"] == 3 and stats["options"]["quota_headers"] is False
