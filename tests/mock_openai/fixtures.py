"""Pytest fixtures for the mock OpenAI server.

Import them into ``tests/conftest.py`` (``from tests.mock_openai.fixtures import *`` or
``pytest_plugins = ["tests.mock_openai.fixtures"]``):

- ``mock_server``: a fresh in-process server per test (no latency), so counters and directive
  ``times`` never leak between tests;
- ``mock_server_session``: one server for the whole session, cheaper; it is reset before the test
  that requests it, but other tests may use it afterwards, so use distinct directive strings;
- ``mock_server_factory``: call it with options (``latency=0.1, error_rate=0.2, seed=1``) to get
  as many servers as a test needs; all are closed at teardown;
- ``mock_engine``: the HTTP engine of ``mock_server`` and the factory (``"aiohttp"``); override it
  in a module, e.g. parametrised over ``["aiohttp", "raw"]``, to run the same tests on both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

import pytest

from .server import MockOptions, MockServer, start_mock_server

__all__ = ["mock_engine", "mock_server", "mock_server_factory", "mock_server_session", "mock_server_shared"]


@pytest.fixture
def mock_engine() -> str:
    """The HTTP engine the function-scoped fixtures use; a module may override this fixture."""
    return "aiohttp"


@pytest.fixture
def mock_server(mock_engine: str) -> Iterator[MockServer]:
    """A fresh in-process mock server for one test."""
    server = start_mock_server(engine=mock_engine)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mock_server_shared() -> Iterator[MockServer]:
    """The one server behind ``mock_server_session`` (session-scoped, never reset by itself)."""
    server = start_mock_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mock_server_session(mock_server_shared: MockServer) -> MockServer:
    """The session's shared server, reset (counters and options) for the requesting test."""
    defaults = MockOptions()
    mock_server_shared.configure(**{name: getattr(defaults, name) for name in (f.name for f in fields(MockOptions))})
    mock_server_shared.reset()
    return mock_server_shared


@pytest.fixture
def mock_server_factory(mock_engine: str) -> Iterator[Callable[..., MockServer]]:
    """Start servers with custom options inside a test; closed automatically at teardown."""
    started: list[MockServer] = []

    def start(latency: float = 0.0, **options: Any) -> MockServer:
        options.setdefault("engine", mock_engine)
        server = start_mock_server(latency=latency, **options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()
