"""The circuit breaker per model: a dead endpoint stops a run in a bounded number of requests.

Against a real closed port, a server answering a login page with status 200 and one answering ``{}``, the
gateway must raise :class:`EndpointDown` with one line naming the model, the endpoint and what came back,
and then refuse every later call without touching the network. Attempts are counted (by the server, or by
a backend that counts its own requests), never timed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from joydataforge.errors import EndpointDown, ModelError
from joydataforge.models.backends.base import Backend, Completion, FatalError, Messages, TransientError, Usage
from joydataforge.models.backends.openai_compat import OpenAICompatBackend
from joydataforge.models.breaker import CircuitBreaker
from joydataforge.models.config import ModelConfig, ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.retry import RetryPolicy
from tests.support.answering_server import answering_server

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(base_delay=0.001, max_delay=0.005)
SECRET = "sk-breaker-secret-never-shown-0123456789"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def closed_port_url() -> str:
    """A port that was free a moment ago and has no listener: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def models(url: str, **fields: Any) -> ModelRegistry:
    return ModelRegistry.from_dict(
        {"models": {"m": {"backend": "openai", "model": "x", "base_url": url, **fields}}}, "test models"
    )


class CountingBackend(OpenAICompatBackend):
    """The real openai backend, counting every HTTP request it starts."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.requests = 0

    async def _post(self, path: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        self.requests += 1
        return await super()._post(path, body, **kwargs)


@asynccontextmanager
async def counted_gateway(
    url: str, retry: RetryPolicy | None = None, **fields: Any
) -> AsyncIterator[tuple[Gateway, CountingBackend]]:
    registry = models(url, **fields)
    backend = CountingBackend(registry.get("m"))
    gateway = Gateway(registry, None, retry=retry, backends={"m": backend})
    try:
        yield gateway, backend
    finally:
        await gateway.close()


async def generate_like(gateway: Gateway, records: int, concurrency: int) -> dict[str, list[str]]:
    """What the executor does with a generate step: many records, a bounded number in flight at once.
    Returns the error messages by kind; every record must end in one of them here."""
    outcomes: dict[str, list[str]] = {"down": [], "failed": [], "ok": []}
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            try:
                await gateway.model("m").chat(user(f"record {i}"))
                outcomes["ok"].append(str(i))
            except EndpointDown as exc:
                outcomes["down"].append(str(exc))
            except ModelError as exc:
                outcomes["failed"].append(str(exc))

    await asyncio.gather(*(one(i) for i in range(records)))
    return outcomes


# ---- a closed port ----------------------------------------------------------------------------------------


async def test_a_closed_port_stops_a_2000_record_run_in_a_bounded_number_of_attempts(monkeypatch):
    """Default settings (retries, backoff, threshold, concurrency): the first failures open the breaker and
    the other 1,990-odd records never reach the network. Before the breaker, this was 12,000 attempts."""
    monkeypatch.setenv("JOYFORGE_BREAKER_KEY", SECRET)
    url = closed_port_url()
    async with counted_gateway(url, api_key_env="JOYFORGE_BREAKER_KEY") as (gateway, backend):
        config = gateway.model("m").config
        outcomes = await generate_like(gateway, records=2000, concurrency=64)
    assert len(outcomes["down"]) == 2000, {k: v[:1] for k, v in outcomes.items()}
    assert backend.requests <= config.breaker_threshold + config.max_concurrency
    message = outcomes["down"][0]
    assert message == (
        f"model 'm' declared down: {config.breaker_threshold} requests in a row to {url} failed "
        "(last: connection refused)"
    )
    assert "\n" not in message and SECRET not in message


async def test_retries_inside_one_call_count_and_later_calls_never_touch_the_network():
    async with counted_gateway(closed_port_url(), FAST, max_retries=10, breaker_threshold=3) as (gateway, backend):
        with pytest.raises(EndpointDown, match=r"3 requests in a row .* \(last: connection refused\)"):
            await gateway.model("m").chat(user("first"))
        assert backend.requests == 3  # not the 11 tries max_retries allows
        for verb in (lambda c: c.chat(user("later")), lambda c: c.complete("later"), lambda c: c.embed(["later"])):
            with pytest.raises(EndpointDown):
                await verb(gateway.model("m"))
        assert backend.requests == 3
        usage = gateway.usage["m"]
    assert (usage.retries, usage.errors, usage.calls) == (2, 1, 0)


async def test_threshold_zero_never_declares_a_model_down():
    async with counted_gateway(closed_port_url(), FAST, max_retries=2, breaker_threshold=0) as (gateway, backend):
        for _ in range(3):
            with pytest.raises(ModelError, match="connection refused.*gave up after 3 tries") as info:
                await gateway.model("m").chat(user("x"))
            assert not isinstance(info.value, EndpointDown)
    assert backend.requests == 9


# ---- replies that are not a model API's -------------------------------------------------------------------

LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Login</title></head><body><form>user, password</form></body></html>"


@pytest.mark.parametrize(
    "answer, what",
    [
        (
            lambda r: web.Response(text=LOGIN_PAGE, content_type="text/html"),
            "HTML page (status 200, <title>Login</title>)",
        ),
        (lambda r: web.json_response({}), "JSON without 'choices'"),
        (lambda r: web.json_response([1, 2]), "JSON without 'choices'"),
        (lambda r: web.Response(text="OK", content_type="text/plain"), "not JSON (status 200, text/plain: 'OK')"),
    ],
)
async def test_non_api_replies_declare_the_model_down(answer, what):
    async with answering_server(answer) as (url, seen), counted_gateway(url, FAST) as (gateway, _):
        with pytest.raises(EndpointDown) as info:
            await gateway.model("m").chat(user("x"))
        assert len(seen) == 5  # the default threshold, reached within the call's own retries
        with pytest.raises(EndpointDown):
            await gateway.model("m").chat(user("y"))
        assert len(seen) == 5
    assert str(info.value) == f"model 'm' declared down: 5 requests in a row to {url} failed (last: {what})"


async def test_embeddings_without_data_declare_the_model_down():
    async with (
        answering_server(lambda r: web.json_response({"object": "list"})) as (url, seen),
        counted_gateway(url, FAST, breaker_threshold=2) as (gateway, _),
    ):
        with pytest.raises(EndpointDown, match=r"\(last: JSON without 'data'\)"):
            await gateway.model("m").embed(["a", "b"])
    assert seen == ["/v1/embeddings"] * 2


async def test_a_login_page_stops_a_concurrent_run_in_a_bounded_number_of_requests():
    async with (
        answering_server(lambda r: web.Response(text=LOGIN_PAGE, content_type="text/html")) as (url, seen),
        counted_gateway(url) as (gateway, _),
    ):
        outcomes = await generate_like(gateway, records=500, concurrency=32)
        config = gateway.model("m").config
    assert len(outcomes["down"]) == 500
    assert len(seen) <= config.breaker_threshold + config.max_concurrency


async def test_api_errors_do_not_count_only_endpoint_faults_do():
    """A 500 in an API's own words comes from a living server: retried, never a reason to stop the run."""

    def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "busy", "type": "server_error"}}, status=500)

    async with (
        answering_server(busy) as (url, seen),
        counted_gateway(url, FAST, max_retries=4, breaker_threshold=2) as (gw, _),
    ):
        with pytest.raises(ModelError, match="HTTP 500.*gave up after 5 tries") as info:
            await gw.model("m").chat(user("x"))
    assert not isinstance(info.value, EndpointDown) and len(seen) == 5


# ---- successes reset the count ----------------------------------------------------------------------------


class Script(Backend):
    """Each chat call plays the next step of a script: ``ok``, ``refused`` (a connection error), ``html``
    (a non-API reply), ``401`` (a refused key), ``busy`` (an API's 503) or ``bad`` (a 400 about the request)."""

    def __init__(self, steps: list[str]):
        self.steps = list(steps)
        self.played: list[str] = []

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        step = self.steps.pop(0)
        self.played.append(step)
        if step == "refused":
            raise TransientError("connection failed", endpoint_fault="connection refused")
        if step == "html":
            raise TransientError("not an API", status=200, endpoint_fault="HTML page (status 200)")
        if step == "401":
            raise FatalError("HTTP 401", status=401, endpoint_fault="HTTP 401, key refused")
        if step == "busy":
            raise TransientError("HTTP 503", status=503)
        if step == "bad":
            raise FatalError("HTTP 400: max_tokens too large", status=400)
        return Completion(text="ok", usage=Usage(1, 1))


async def play(steps: list[str], threshold: int) -> tuple[list[str], Script]:
    """One call per step (no retries), in order; returns each call's outcome."""
    script = Script(steps)
    registry = ModelRegistry.from_dict(
        {"models": {"m": {"backend": "llamacpp", "max_retries": 0, "breaker_threshold": threshold}}}, "test models"
    )
    gateway = Gateway(registry, None, retry=FAST, backends={"m": script})
    results = []
    for _ in steps:
        try:
            await gateway.model("m").chat(user("x"))
            results.append("ok")
        except EndpointDown:
            results.append("DOWN")
        except ModelError:
            results.append("failed")
    await gateway.close()
    return results, script


async def test_any_success_resets_the_count():
    steps = ["refused", "html", "ok", "refused", "401", "ok", "refused", "html"]
    results, script = await play(steps, threshold=3)
    assert "DOWN" not in results and script.played == steps


async def test_faults_of_every_kind_add_up_and_the_model_stays_down():
    results, script = await play(["refused", "html", "401", "ok", "ok"], threshold=3)
    assert results == ["failed", "failed", "DOWN", "DOWN", "DOWN"]
    assert script.played == ["refused", "html", "401"]  # nothing after the breaker opened


async def test_errors_of_a_living_api_neither_count_nor_reset():
    results, _ = await play(["refused", "busy", "bad", "refused", "ok"], threshold=2)
    assert results == ["failed", "failed", "failed", "DOWN", "DOWN"]


def test_the_breaker_alone():
    breaker = CircuitBreaker("m", "http://h/v1", threshold=2)
    breaker.check()
    breaker.failed("connection refused")
    breaker.succeeded()
    breaker.failed("connection\nreset")
    assert not breaker.is_open
    with pytest.raises(EndpointDown) as info:
        breaker.failed("HTML page (status 200, <title>Log\n in</title>)")
    assert str(info.value) == (
        "model 'm' declared down: 2 requests in a row to http://h/v1 failed "
        "(last: HTML page (status 200, <title>Log in</title>))"
    )
    assert info.value.model == "m"
    breaker.succeeded()  # a late success of a request sent before: the model stays down
    with pytest.raises(EndpointDown):
        breaker.check()
