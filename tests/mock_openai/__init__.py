"""Mock OpenAI-compatible server for JoyDataForge's tests and benchmarks (test double: tests only).

Quick use::

    from tests.mock_openai import start_mock_server, spawn_mock_server

    with start_mock_server(latency=0.0) as server:      # in-process, background thread
        client_base_url = server.url                    # "http://127.0.0.1:PORT/v1"
        ... server.stats()["by_status"]["200"] ...

    with spawn_mock_server(latency=0.1, cpu=1) as server:   # child process, own core
        ...

See :mod:`tests.mock_openai.server` for endpoints, directives (``[[mock:status=429,times=2]]``)
and options; pytest fixtures are in :mod:`tests.mock_openai.fixtures`.
"""

from .server import (
    MockOptions,
    MockProcess,
    MockServer,
    embedding_vector,
    minimal_instance,
    spawn_mock_server,
    start_mock_server,
)

__all__ = [
    "MockOptions",
    "MockProcess",
    "MockServer",
    "embedding_vector",
    "minimal_instance",
    "spawn_mock_server",
    "start_mock_server",
]
