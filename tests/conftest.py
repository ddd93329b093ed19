"""Shared test fixtures: the mock OpenAI server, and a recording proxy in front of it.

The mock (``tests/mock_openai``) answers like an OpenAI-compatible server but does not record what only
a client test cares about: request headers (is the key sent as a Bearer token?), when each request
arrived and left (did the client really wait out ``Retry-After``?) and how many were in flight at once
(does ``max_concurrency`` hold?). :class:`RecordingProxy` is a small aiohttp server on its own thread
that records exactly that and forwards every request to a mock; it can also play a server that refuses
``response_format: json_schema`` with a 400, as some OpenAI-compatible servers do.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.mock_openai.fixtures import *  # noqa: F403  (mock_server, mock_server_factory, ...)


@dataclass
class Seen:
    """One request as the proxy saw it; times are ``time.monotonic()`` of this process."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    started: float
    ended: float = 0.0
    status: int = 0


@dataclass
class RecordingProxy:
    upstream: str  # the mock's base_url, without /v1
    reject_json_schema: bool | str = False  # True, or the error message to answer with
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recording-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("recording proxy did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, path_suffix: str = "/chat/completions") -> list[Seen]:
        return [s for s in list(self.seen) if s.path.endswith(path_suffix)]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        seen = Seen(request.path, dict(request.headers), body, time.monotonic())
        self.seen.append(seen)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fmt = (body or {}).get("response_format") if isinstance(body, dict) else None
            if self.reject_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                seen.status = 400
                message = (
                    self.reject_json_schema
                    if isinstance(self.reject_json_schema, str)
                    else "response_format json_schema is not supported"
                )
                return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)
            async with self._session.request(
                request.method, self.upstream + request.path_qs, data=raw, headers={"Content-Type": "application/json"}
            ) as upstream:
                payload = await upstream.read()
                headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
                seen.status = upstream.status
                return web.Response(
                    status=upstream.status, body=payload, headers=headers, content_type="application/json"
                )
        finally:
            self.in_flight -= 1
            seen.ended = time.monotonic()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> web.AppRunner:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            return runner

        runner = self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.run_until_complete(self._session.close())
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture
def recording_proxy(mock_server: Any) -> Iterator[Callable[..., RecordingProxy]]:
    """``recording_proxy()`` starts a proxy in front of this test's ``mock_server``; closed at teardown."""
    started: list[RecordingProxy] = []

    def start(**options: Any) -> RecordingProxy:
        proxy = RecordingProxy(mock_server.base_url, **options)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.close()
