"""A throwaway HTTP server whose every POST gets the same kind of answer: for the faults a real server can show
(HTML with status 200, a body without ``choices``, a closed connection) that the mock OpenAI server does not play."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def answering_server(answer: Callable[[web.Request], web.Response]) -> AsyncIterator[tuple[str, list[str]]]:
    """A server answering every POST with ``answer``; yields its base_url and the paths it was asked."""
    seen: list[str] = []

    async def route(request: web.Request) -> web.Response:
        seen.append(request.path)
        return answer(request)

    app = web.Application()
    app.router.add_post("/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen
    finally:
        await runner.cleanup()
