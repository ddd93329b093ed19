"""Errors that no retry can change fail at once; the ones a retry can fix are still retried.

Counted against the mock server (``/_stats``) or the recording proxy, so "at once" means "one request", never
"fast enough". A wrong ``base_url`` and an embeddings endpoint the server does not have are real requests to
real paths; "not supported" wordings and vLLM's error-with-status-200 are played by a small aiohttp app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from joydataforge.errors import EndpointDown, ModelError
from joydataforge.models.backends.base import FatalError, TransientError
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.retry import RetryPolicy
from tests.support.answering_server import answering_server

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(base_delay=0.001, max_delay=0.005)
SECRET = "sk-fatal-secret-never-shown-0123456789"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@asynccontextmanager
async def open_gateway(url: str, **fields: Any) -> AsyncIterator[Gateway]:
    body = {"backend": "openai", "model": "mock-model", "base_url": url, "max_retries": 3, "timeout": 5.0, **fields}
    gateway = Gateway(ModelRegistry.from_dict({"models": {"m": body}}, "test models"), None, retry=FAST)
    try:
        yield gateway
    finally:
        await gateway.close()


# ---- statuses -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 422, 501])
async def test_statuses_that_cannot_succeed_are_one_request(mock_server, status):
    async with open_gateway(mock_server.url) as gw:
        with pytest.raises(FatalError) as info:
            await gw.model("m").chat(user(f"x [[mock:status={status},id=fatal{status}]]"))
        usage = gw.usage["m"]
    assert f"HTTP {status}" in str(info.value) and not info.value.retryable
    assert mock_server.stats()["by_status"] == {str(status): 1}
    assert (usage.retries, usage.errors) == (0, 1)


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
async def test_statuses_a_retry_can_fix_are_retried(mock_server, status):
    async with open_gateway(mock_server.url) as gw:
        reply = await gw.model("m").chat(user(f"x [[mock:status={status},times=2,id=again{status}]]"))
        usage = gw.usage["m"]
    assert reply.text == "echo: x"
    assert mock_server.stats()["by_status"] == {str(status): 2, "200": 1}
    assert (usage.retries, usage.errors) == (2, 0)


async def test_connection_errors_are_retried(mock_server):
    async with open_gateway(mock_server.url) as gw:
        reply = await gw.model("m").chat(user("x [[mock:drop,times=3,id=drops]]"))
    assert reply.text == "echo: x" and mock_server.stats()["by_status"]["drop"] == 3


async def test_a_refused_key_names_the_variable_that_holds_it(mock_server, monkeypatch):
    monkeypatch.setenv("JOYFORGE_FATAL_KEY", SECRET)
    async with open_gateway(mock_server.url, api_key_env="JOYFORGE_FATAL_KEY") as gw:
        with pytest.raises(FatalError) as info:
            await gw.model("m").chat(user("x [[mock:status=401,id=key]]"))
    message = str(info.value)
    assert "HTTP 401" in message and "the key from the environment variable JOYFORGE_FATAL_KEY was refused" in message
    assert SECRET not in message and mock_server.stats()["total"] == 1


async def test_a_missing_key_says_where_to_name_one(mock_server):
    async with open_gateway(mock_server.url) as gw:
        with pytest.raises(FatalError, match="no key was sent: name the variable holding it in api_key_env"):
            await gw.model("m").chat(user("x [[mock:status=403,id=nokey]]"))


async def test_repeated_key_refusals_declare_the_model_down(mock_server, monkeypatch):
    """Every call would be refused the same way: after the threshold the run stops instead of failing all."""
    monkeypatch.setenv("JOYFORGE_FATAL_KEY", SECRET)
    async with open_gateway(mock_server.url, api_key_env="JOYFORGE_FATAL_KEY", breaker_threshold=3) as gw:
        for _ in range(2):
            with pytest.raises(FatalError):
                await gw.model("m").chat(user("x [[mock:status=401,id=keys]]"))
        with pytest.raises(
            EndpointDown,
            match="3 requests in a row .* HTTP 401, the key from the environment "
            "variable JOYFORGE_FATAL_KEY was refused",
        ) as info:
            await gw.model("m").chat(user("x [[mock:status=401,id=keys]]"))
        with pytest.raises(EndpointDown):
            await gw.model("m").chat(user("fine now"))
    assert SECRET not in str(info.value) and mock_server.stats()["total"] == 3


# ---- a wrong base_url, an endpoint the server does not have --------------------------------------------------


async def test_a_wrong_base_url_is_one_request_per_call(mock_server, recording_proxy):
    proxy = recording_proxy()
    wrong = f"http://127.0.0.1:{proxy.port}/api"  # the mock serves /v1 only: 404 for every path here
    async with open_gateway(wrong) as gw:
        with pytest.raises(FatalError) as info:
            await gw.model("m").chat(user("x"))
        with pytest.raises(FatalError):
            await gw.model("m").embed(["x"])
    assert [(s.path, s.status) for s in proxy.seen] == [("/api/chat/completions", 404), ("/api/embeddings", 404)]
    assert "is base_url right, and does the server serve model 'mock-model'?" in str(info.value)


async def test_a_wrong_base_url_stops_the_run_after_the_threshold(mock_server, recording_proxy):
    proxy = recording_proxy()
    wrong = f"http://127.0.0.1:{proxy.port}/api"
    async with open_gateway(wrong) as gw:
        outcomes = []
        for i in range(20):
            try:
                await gw.model("m").chat(user(f"q{i}"))
            except EndpointDown:
                outcomes.append("down")
            except FatalError:
                outcomes.append("failed")
    assert outcomes == ["failed"] * 4 + ["down"] * 16 and len(proxy.seen) == 5


@pytest.mark.parametrize(
    "status, message",
    [
        (500, "embeddings: method not supported"),
        (500, "NotImplementedError: this model does not offer /v1/embeddings"),
        (503, "This server does not support embeddings. Start it with `--embeddings`"),
        (501, "Not Implemented"),
    ],
)
async def test_a_missing_embeddings_endpoint_fails_at_once(status, message):
    def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "not_supported_error"}}, status=status)

    async with answering_server(refuse) as (url, seen), open_gateway(url) as gw:
        with pytest.raises(FatalError) as info:
            await gw.model("m").embed(["a"])
    assert seen == ["/v1/embeddings"] and f"HTTP {status}" in str(info.value) and info.value.endpoint_fault


async def test_an_error_sent_with_status_200_is_classified_by_its_code():
    """vLLM answers /v1/embeddings on a generation model with status 200 and an error object (code 400)."""

    def vllm(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "error",
                "message": "The model does not support Embeddings API",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        )

    async with answering_server(vllm) as (url, seen), open_gateway(url) as gw:
        with pytest.raises(FatalError, match=r"HTTP 400 \(sent with status 200\)") as info:
            await gw.model("m").embed(["a"])
    assert seen == ["/v1/embeddings"]
    assert info.value.endpoint_fault == "HTTP 400 (sent with status 200) (The model does not support Embeddings API)"


async def test_a_busy_error_sent_with_status_200_is_retried():
    answers = [
        web.json_response({"error": {"message": "overloaded, try again"}}),
        web.json_response({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}),
    ]

    async with answering_server(lambda request: answers.pop(0)) as (url, seen), open_gateway(url) as gw:
        reply = await gw.model("m").chat(user("x"))
    assert reply.text == "fine" and len(seen) == 2


async def test_a_400_naming_a_bad_parameter_is_not_retried_nor_counted_by_the_breaker():
    def bad(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": "Unrecognized request argument supplied: top_kk",
                    "type": "invalid_request_error",
                    "param": "top_kk",
                }
            },
            status=400,
        )

    async with answering_server(bad) as (url, seen), open_gateway(url, breaker_threshold=2) as gw:
        for _ in range(3):
            with pytest.raises(FatalError) as info:
                await gw.model("m").chat(user("x"), top_kk=3)
            assert info.value.endpoint_fault is None
    assert len(seen) == 3  # one request per call, and never declared down: the next record may be fine


async def test_transient_and_fatal_are_told_apart_by_the_backend_itself(mock_server):
    async with open_gateway(mock_server.url, max_retries=0) as gw:
        with pytest.raises(ModelError) as transient:
            await gw.model("m").chat(user("x [[mock:status=503,id=t]]"))
        with pytest.raises(FatalError):
            await gw.model("m").chat(user("x [[mock:status=404,id=f]]"))
    assert "gave up after 1 tries" in str(transient.value) and not isinstance(transient.value, TransientError)
