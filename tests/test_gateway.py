"""The model gateway against the mock OpenAI server over real HTTP on 127.0.0.1.

What is checked here is what steps rely on without ever seeing HTTP: the three verbs round-trip, transient
failures are retried with backoff (and ``Retry-After`` is honoured), final failures keep the server's raw
reply, invalid JSON replies are re-sampled, the call cache makes a re-run free, usage and cost are counted,
and the API key goes to the server as a Bearer header and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from joydataforge.errors import ConfigError, ModelError, ValidationFailed
from joydataforge.models.backends.base import Backend, Completion, Usage
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway, ModelClient
from joydataforge.models.retry import RetryPolicy
from tests.mock_openai import embedding_vector
from tests.scripted_backend import ScriptedBackend
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(30)

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["BMI", "other"]}, "reason": {"type": "string"}},
    "required": ["label", "reason"],
}
SECRET = "sk-test-THIS-MUST-NEVER-LEAK-0123456789"


def registry(url: str, **fields: Any) -> ModelRegistry:
    body = {"backend": "openai", "model": "mock-model", "base_url": url, "max_retries": 3, "timeout": 5.0, **fields}
    return ModelRegistry.from_dict({"models": {"m": body}}, "test models")


@asynccontextmanager
async def open_gateway(
    url: str, cache: CallCache | None = None, retry: RetryPolicy = FAST, **fields: Any
) -> AsyncIterator[Gateway]:
    gateway = Gateway(registry(url, **fields), cache, retry=retry)
    try:
        yield gateway
    finally:
        await gateway.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_bodies(server: Any) -> list[dict[str, Any]]:
    return [r["body"] for r in server.stats()["last_requests"] if r["endpoint"] == "/v1/chat/completions"]


class SpyRetry(RetryPolicy):
    """Records every backoff the client computes: (attempt, retry_after, delay)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "log", [])

    def delay(self, attempt, retry_after, rng):  # type: ignore[override]
        value = super().delay(attempt, retry_after, rng)
        self.log.append((attempt, retry_after, value))
        return value


def spy_on(client: ModelClient) -> SpyRetry:
    spy = SpyRetry(
        max_retries=client.retry.max_retries, base_delay=client.retry.base_delay, max_delay=client.retry.max_delay
    )
    client.retry = spy
    return spy


# ---- the three verbs ------------------------------------------------------------------------------------


async def test_chat_round_trip_sends_model_params_and_seed(mock_server):
    async with open_gateway(mock_server.url, params={"temperature": 0.2, "max_tokens": 50}) as gw:
        reply = await gw.model("m").chat(user("hello there world"), temperature=0.9)
    assert reply.text == "echo: hello there world"
    assert reply.finish_reason == "stop" and not reply.cached
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 4)
    body = chat_bodies(mock_server)[-1]
    assert body["model"] == "mock-model" and body["messages"] == user("hello there world")
    assert body["temperature"] == 0.9 and body["max_tokens"] == 50  # call override beats the model default
    assert isinstance(body["seed"], int)
    assert "response_format" not in body  # free text: no structured output requested


async def test_max_tokens_truncation_is_reported(mock_server):
    async with open_gateway(mock_server.url) as gw:
        reply = await gw.model("m").chat(user("one two three four five"), max_tokens=2)
    assert reply.text == "echo: one" and reply.finish_reason == "length"


async def test_complete_round_trip(mock_server):
    async with open_gateway(mock_server.url) as gw:
        reply = await gw.model("m").complete("Once upon a time", max_tokens=20)
    assert reply.text == "echo: Once upon a time"
    assert reply.usage.prompt_tokens == 4
    last = mock_server.stats()["last_requests"][-1]
    assert last["endpoint"] == "/v1/completions" and last["body"]["prompt"] == "Once upon a time"


async def test_embedding_tokens_are_the_servers_count(mock_server):
    """A paid API bills its own token count; the chars/4 estimate is only for backends that do not say."""
    text = "one two three four five six seven eight"  # the mock counts 8 tokens; chars/4 would say 9
    async with open_gateway(mock_server.url, pricing={"input_per_mtok": 1e6}) as gw:
        await gw.model("m").embed([text])
        usage = gw.usage["m"]
    assert usage.prompt_tokens == 8 and usage.cost == pytest.approx(8.0)


async def test_embeddings_round_trip_and_per_text_cache(mock_server, tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        async with open_gateway(mock_server.url, cache) as gw:
            vectors = await gw.model("m").embed(["alpha", "beta"])
            assert vectors == [pytest.approx(embedding_vector("alpha", 8)), pytest.approx(embedding_vector("beta", 8))]
            again = await gw.model("m").embed(["beta", "gamma", "alpha"])
            assert again[0] == pytest.approx(vectors[1]) and again[2] == pytest.approx(vectors[0])
            assert again[1] == pytest.approx(embedding_vector("gamma", 8))
            usage = gw.usage["m"]
        embeds = [r["body"] for r in mock_server.stats()["last_requests"] if r["endpoint"] == "/v1/embeddings"]
        assert [b["input"] for b in embeds] == [["alpha", "beta"], ["gamma"]]  # only the missing text is paid
        assert usage.cache_hits == 2
    finally:
        cache.close()


# ---- retries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retried_with_exponential_backoff(mock_server, status):
    directive = f"[[mock:status={status},times=2,id=t5xx]]"
    async with open_gateway(mock_server.url) as gw:
        client = gw.model("m")
        spy = spy_on(client)
        reply = await client.chat(user(f"hi {directive}"))
        usage = gw.usage["m"]
    assert reply.text == "echo: hi"
    by_status = mock_server.stats()["by_status"]
    assert by_status[str(status)] == 2 and by_status["200"] == 1
    assert usage.retries == 2 and usage.errors == 0 and usage.calls == 1
    assert [attempt for attempt, _, _ in spy.log] == [0, 1]  # the exponent grows with each retry
    for attempt, retry_after, delay in spy.log:
        assert retry_after is None
        assert 0 <= delay <= FAST.base_delay * 2**attempt


def test_backoff_is_exponential_with_full_jitter_and_capped():
    import random

    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for attempt in range(8):
        cap = min(4.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.7 * cap  # full jitter spans the whole range, not a constant
    assert all(policy.delay(a, 3.0, rng) >= 3.0 for a in range(5))  # never less than Retry-After


async def test_429_waits_at_least_retry_after(mock_server, recording_proxy):
    proxy = recording_proxy()
    async with open_gateway(proxy.url) as gw:
        client = gw.model("m")
        spy = spy_on(client)
        reply = await client.chat(user("hi [[mock:status=429,retry_after=1,times=1,id=t429]]"))
    assert reply.text == "echo: hi"
    first, second = proxy.requests()
    assert (first.status, second.status) == (429, 200)
    assert spy.log and spy.log[0][1] == 1.0 and spy.log[0][2] >= 1.0
    # The client received the 429 after the proxy finished it, so this gap is the client's wait.
    assert second.started - first.ended >= 1.0


async def test_retry_after_beyond_the_cap_fails_at_once(mock_server):
    """An exhausted quota answers "come back in an hour": waiting that long in silence is worse than failing."""
    async with open_gateway(mock_server.url, max_retry_after=0.5) as gw:
        client = gw.model("m")
        spy = spy_on(client)
        with pytest.raises(ModelError, match=r"asks to wait 1s, more than this model's max_retry_after") as info:
            await client.chat(user("hi [[mock:status=429,retry_after=1,times=1,id=cap]]"))
    assert spy.log == [] and "HTTP 429" in str(info.value) and info.value.raw
    assert mock_server.stats()["by_status"]["429"] == 1


async def test_give_up_after_max_retries_keeps_raw_error(mock_server):
    async with open_gateway(mock_server.url, max_retries=2) as gw:
        with pytest.raises(ModelError) as info:
            await gw.model("m").chat(user("hi [[mock:status=503,id=giveup]]"))
        usage = gw.usage["m"]
    err = info.value
    assert not isinstance(err, ValidationFailed)
    assert "HTTP 503" in str(err) and "gave up after 3 tries" in str(err)
    assert json.loads(err.raw)["error"]["message"] == "mock directive"  # the server's own body, untouched
    assert err.model == "m"
    assert mock_server.stats()["by_status"]["503"] == 3
    assert usage.errors == 1 and usage.retries == 2 and usage.calls == 0


async def test_client_errors_are_not_retried(mock_server):
    async with open_gateway(mock_server.url) as gw:
        with pytest.raises(ModelError) as info:
            await gw.model("m").chat(user("hi [[mock:status=400,id=t400]]"))
    assert "HTTP 400" in str(info.value) and "mock directive" in info.value.raw
    assert mock_server.stats()["total"] == 1


async def test_dropped_connections_are_retried(mock_server):
    async with open_gateway(mock_server.url) as gw:
        reply = await gw.model("m").chat(user("hi [[mock:drop,times=2,id=tdrop]]"))
    assert reply.text == "echo: hi"
    assert mock_server.stats()["by_status"]["drop"] == 2


async def test_dropped_connections_fail_cleanly_after_retries(mock_server):
    async with open_gateway(mock_server.url, max_retries=1) as gw:
        with pytest.raises(ModelError) as info:
            await gw.model("m").chat(user("hi [[mock:drop,id=tdropall]]"))
    assert "connection failed" in str(info.value) and "gave up after 2 tries" in str(info.value)
    assert mock_server.stats()["by_status"]["drop"] == 2


async def test_timeouts_are_retried(mock_server):
    async with open_gateway(mock_server.url, timeout=0.3) as gw:
        reply = await gw.model("m").chat(user("hi [[mock:hang,times=1,id=thang]]"))
    assert reply.text == "echo: hi"
    await eventually(lambda: mock_server.stats()["by_status"].get("hang", 0) >= 1, "the hang counted")
    assert mock_server.stats()["by_status"]["hang"] == 1


async def test_timeouts_fail_cleanly_after_retries(mock_server):
    async with open_gateway(mock_server.url, timeout=0.2, max_retries=1) as gw:
        with pytest.raises(ModelError) as info:
            await gw.model("m").chat(user("hi [[mock:hang,id=thangall]]"))
        usage = gw.usage["m"]
    assert "no reply within 0.2s" in str(info.value) and "gave up after 2 tries" in str(info.value)
    # the mock counts a hang when its handler starts, which on a busy machine may be after the client gave up
    await eventually(lambda: mock_server.stats()["by_status"].get("hang", 0) >= 2, "both hangs counted")
    assert mock_server.stats()["by_status"]["hang"] == 2
    assert usage.errors == 1


async def test_backoff_frees_the_concurrency_slot(mock_server):
    """A call waiting out a 429 must not block other calls of the same model."""
    async with open_gateway(mock_server.url, max_concurrency=1) as gw:
        client = gw.model("m")
        spy = spy_on(client)
        slow = asyncio.create_task(client.chat(user("a [[mock:status=429,retry_after=3,times=1,id=slot]]")))
        while not spy.log:  # until the 429 is back and the task has started its backoff
            await asyncio.sleep(0.01)
        quick = await client.chat(user("b"))
        assert quick.text == "echo: b"
        assert not slow.done()  # with the slot held during the backoff, b could only finish after a
        assert (await slow).text == "echo: a"


# ---- structured replies ---------------------------------------------------------------------------------


async def test_json_schema_response_format_is_sent(mock_server):
    async with open_gateway(mock_server.url) as gw:
        value, completion = await gw.model("m").chat_json(user("label this"), SCHEMA)
    assert value == {"label": "BMI", "reason": "x"}
    assert json.loads(completion.text) == value
    fmt = chat_bodies(mock_server)[-1]["response_format"]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}


async def test_malformed_json_is_retried_with_a_new_sample(mock_server):
    async with open_gateway(mock_server.url, json_retries=2) as gw:
        value, _ = await gw.model("m").chat_json(user("label [[mock:malformed_json,times=1,id=mj]]"), SCHEMA)
        usage = gw.usage["m"]
    assert value == {"label": "BMI", "reason": "x"}
    bodies = chat_bodies(mock_server)
    assert len(bodies) == 2
    assert bodies[0]["seed"] != bodies[1]["seed"]  # the attempt index is part of the key, hence of the seed
    assert usage.invalid_replies == 1 and usage.calls == 2


async def test_final_validation_failure_carries_the_raw_text(mock_server):
    async with open_gateway(mock_server.url, json_retries=2) as gw:
        with pytest.raises(ValidationFailed) as info:
            await gw.model("m").chat_json(user("label [[mock:malformed_json,id=mjall]]"), SCHEMA)
        usage = gw.usage["m"]
    assert info.value.raw == '{"mock": "this is not valid JSON'
    assert "after 3 attempts" in str(info.value) and "not JSON" in str(info.value)
    assert len(chat_bodies(mock_server)) == 3 and usage.invalid_replies == 3


async def test_schema_violations_are_validation_failures(mock_server):
    async with open_gateway(mock_server.url, json_retries=0) as gw:
        with pytest.raises(ValidationFailed) as info:
            await gw.model("m").chat_json(user("label [[mock:invalid_schema,id=inv]]"), SCHEMA)
    assert "does not match the schema" in str(info.value)
    assert json.loads(info.value.raw) == ["mock: not an object"]


@pytest.mark.parametrize(
    "message",
    [
        "response_format json_schema is not supported",
        "Input validation error: grammar is not supported by this model",  # no word "response_format"
        "Invalid value: 'json_schema'. Supported values are: 'json_object' and 'text'.",
    ],
)
async def test_fallback_when_server_rejects_json_schema(mock_server, recording_proxy, message, caplog):
    proxy = recording_proxy(reject_json_schema=message)
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    async with open_gateway(proxy.url) as gw:
        first, _ = await gw.model("m").chat_json(user("one"), schema)
        second, _ = await gw.model("m").chat_json(user("two"), schema)
        usage = gw.usage["m"]
    assert first == {"echo": "one"} and second == {"echo": "two"}
    formats = [(s.body.get("response_format") or {}).get("type") for s in proxy.requests()]
    statuses = [s.status for s in proxy.requests()]
    # Refused once, then json_object (prompt + validation) for this and every later call.
    assert formats == ["json_schema", "json_object", "json_object"]
    assert statuses == [400, 200, 200]
    # The refused request is an error of this model, not a silent 0; the mode in use is kept for the summary.
    assert (usage.errors, usage.retries, usage.calls) == (1, 0, 2)
    assert usage.as_dict()["structured_output"] == "json_object"
    [said] = [r for r in caplog.records if r.name == "joydataforge.models.gateway"]
    assert said.levelname == "WARNING" and "\n" not in said.getMessage()
    assert said.getMessage().startswith(f"model 'm': {proxy.url} refused response_format json_schema (HTTP 400: ")
    assert said.getMessage().endswith(
        "asking with response_format json_object from now on, every reply still checked against the schema"
    )


async def test_concurrent_refusals_step_down_once_and_are_said_once(mock_server, recording_proxy, caplog):
    """Many requests refused at the same moment: each counts as an error, but the mode steps down one level
    (from the mode the refused request used, not once per refusal) and the change is said once."""
    proxy = recording_proxy(reject_json_schema=True)
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    async with open_gateway(proxy.url, max_concurrency=8) as gw:
        client = gw.model("m")
        values = await asyncio.gather(*(client.chat_json(user(f"q{i} [[mock:delay=0.05]]"), schema) for i in range(8)))
        usage = gw.usage["m"]
    assert [v for v, _ in values] == [{"echo": f"q{i}"} for i in range(8)]
    refused = [s for s in proxy.requests() if s.status == 400]
    assert len(refused) > 1 and all(s.body["response_format"]["type"] == "json_schema" for s in refused)
    assert {s.body["response_format"]["type"] for s in proxy.requests() if s.status == 200} == {"json_object"}
    assert usage.errors == len(refused) and usage.structured_output == "json_object"
    said = [r.getMessage() for r in caplog.records if r.name == "joydataforge.models.gateway"]
    assert len(said) == 1 and "refused response_format json_schema" in said[0]


async def test_structured_output_mode_is_in_the_usage_only_once_json_was_asked_for(mock_server):
    async with open_gateway(mock_server.url) as gw:
        await gw.model("m").chat(user("free text"))
        assert "structured_output" not in gw.usage["m"].as_dict()
        await gw.model("m").chat_json(user("label"), SCHEMA)
        assert gw.usage["m"].as_dict()["structured_output"] == "json_schema"


async def test_an_unrelated_400_does_not_switch_off_structured_output(mock_server):
    async with open_gateway(mock_server.url) as gw:
        with pytest.raises(ModelError):
            await gw.model("m").chat_json(user("bad [[mock:status=400,id=bad400]]"), SCHEMA)
        value, _ = await gw.model("m").chat_json(user("good"), SCHEMA)
    assert value == {"label": "BMI", "reason": "x"}
    assert chat_bodies(mock_server)[-1]["response_format"]["type"] == "json_schema"


# ---- the call cache -----------------------------------------------------------------------------------


async def test_second_identical_call_is_a_cache_hit(mock_server, tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        async with open_gateway(mock_server.url, cache) as gw:
            first = await gw.model("m").chat(user("same question"))
            second = await gw.model("m").chat(user("same question"))
            usage = gw.usage["m"]
        assert mock_server.stats()["total"] == 1
        assert second.text == first.text and second.cached and not first.cached
        assert second.usage == first.usage
        assert usage.cache_hits == 1 and usage.calls == 1
    finally:
        cache.close()


async def test_sample_index_and_params_give_distinct_keys(mock_server, tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        async with open_gateway(mock_server.url, cache) as gw:
            client = gw.model("m")
            await client.chat(user("q"), sample=0)
            await client.chat(user("q"), sample=1)
            await client.chat(user("q"), sample=1, temperature=0.3)
            await client.chat(user("q"), sample=1)  # a hit
        bodies = chat_bodies(mock_server)
        assert len(bodies) == 3
        assert len({b["seed"] for b in bodies}) == 3
        assert gw.usage["m"].cache_hits == 1
    finally:
        cache.close()


async def test_cache_persists_across_gateway_instances(mock_server, tmp_path):
    path = tmp_path / "calls.sqlite"
    cache = CallCache(path)
    async with open_gateway(mock_server.url, cache) as gw:
        original = await gw.model("m").chat(user("persist me"))
        await gw.model("m").complete("persist prompt")
    cache.close()

    reopened = CallCache(path)
    try:
        async with open_gateway(mock_server.url, reopened) as gw:
            again = await gw.model("m").chat(user("persist me"))
            prompt = await gw.model("m").complete("persist prompt")
        assert again.cached and again.text == original.text and prompt.text == "echo: persist prompt"
        assert mock_server.stats()["total"] == 2  # nothing new reached the server
        assert gw.usage["m"].cache_hits == 2
    finally:
        reopened.close()


async def test_invalid_replies_are_cached_per_attempt(mock_server, tmp_path):
    path = tmp_path / "calls.sqlite"
    message = user("label [[mock:malformed_json,times=1,id=cacheinv]]")
    cache = CallCache(path)
    async with open_gateway(mock_server.url, cache, json_retries=2) as gw:
        value, _ = await gw.model("m").chat_json(message, SCHEMA)
    cache.close()
    assert len(chat_bodies(mock_server)) == 2
    with sqlite3.connect(path) as conn:
        stored = [row[0] for row in conn.execute("SELECT value FROM calls")]
    assert any("this is not valid JSON" in v for v in stored)  # the invalid attempt 0 is kept as it was

    cache = CallCache(path)
    try:
        async with open_gateway(mock_server.url, cache, json_retries=2) as gw:
            again, _ = await gw.model("m").chat_json(message, SCHEMA)
            usage = gw.usage["m"]
        assert again == value
        assert len(chat_bodies(mock_server)) == 2  # attempts 0 (invalid) and 1 (valid) both replayed
        assert usage.cache_hits == 2 and usage.invalid_replies == 1
    finally:
        cache.close()


# ---- accounting -----------------------------------------------------------------------------------------


async def test_token_usage_and_cost(mock_server, tmp_path):
    pricing = {"input_per_mtok": 2_000_000.0, "output_per_mtok": 5_000_000.0}  # 2 and 5 per token
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        async with open_gateway(mock_server.url, cache, pricing=pricing) as gw:
            await gw.model("m").chat(user("count these four"))  # 3 in, 4 out
            await gw.model("m").complete("two words", max_tokens=9)  # 2 in, 3 out
            await gw.model("m").chat(user("count these four"))  # cached: free
            usage = gw.usage["m"]
        assert (usage.calls, usage.cache_hits) == (2, 1)
        assert (usage.prompt_tokens, usage.completion_tokens) == (5, 7)
        assert usage.cost == pytest.approx(5 * 2 + 7 * 5)
        assert usage.latency_total > 0 and usage.mean_latency == pytest.approx(usage.latency_total / 2)
        summary = usage.as_dict()
        assert summary["cost"] == pytest.approx(45.0) and summary["calls"] == 2
    finally:
        cache.close()


async def test_unpriced_models_cost_nothing(mock_server):
    async with open_gateway(mock_server.url) as gw:
        await gw.model("m").chat(user("free"))
    assert gw.usage["m"].cost == 0.0 and gw.usage["m"].prompt_tokens == 1


# ---- keys -------------------------------------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer_and_never_stored(mock_server, recording_proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("JOYFORGE_TEST_KEY", SECRET)
    proxy = recording_proxy()
    path = tmp_path / "calls.sqlite"
    cache = CallCache(path)
    async with open_gateway(proxy.url, cache, api_key_env="JOYFORGE_TEST_KEY") as gw:
        await gw.model("m").chat(user("with a key"))
        await gw.model("m").complete("with a key")
        await gw.model("m").embed(["with a key"])
        with pytest.raises(ModelError) as info:
            await gw.model("m").chat(user("refused [[mock:status=401,id=key401]]"))
        summary = json.dumps({name: u.as_dict() for name, u in gw.usage.items()})
    cache.close()
    seen = proxy.seen
    assert len(seen) == 4
    assert all(s.headers.get("Authorization") == f"Bearer {SECRET}" for s in seen)
    secret = SECRET.encode()
    for file in tmp_path.iterdir():
        assert secret not in file.read_bytes(), f"the key leaked into {file.name}"
    assert SECRET not in summary
    assert SECRET not in str(info.value) and SECRET not in (info.value.raw or "")


async def test_no_key_no_authorization_header(mock_server, recording_proxy):
    proxy = recording_proxy()
    async with open_gateway(proxy.url) as gw:
        await gw.model("m").chat(user("anonymous"))
    assert "Authorization" not in proxy.seen[0].headers


async def test_missing_key_variable_is_a_clear_config_error(mock_server, monkeypatch):
    monkeypatch.delenv("JOYFORGE_UNSET_KEY", raising=False)
    async with open_gateway(mock_server.url, api_key_env="JOYFORGE_UNSET_KEY") as gw:
        with pytest.raises(ConfigError, match="JOYFORGE_UNSET_KEY is not set"):
            await gw.model("m").chat(user("x"))
    assert mock_server.stats()["total"] == 0


# ---- concurrency ------------------------------------------------------------------------------------------


async def test_max_concurrency_bounds_requests_in_flight(mock_server, recording_proxy):
    proxy = recording_proxy()
    async with open_gateway(proxy.url, max_concurrency=3) as gw:
        client = gw.model("m")
        replies = await asyncio.gather(*(client.chat(user(f"q{i} [[mock:delay=0.15]]")) for i in range(10)))
    assert [r.text for r in replies] == [f"echo: q{i}" for i in range(10)]
    assert proxy.max_in_flight == 3  # reached, never exceeded


async def test_gateway_reuses_one_client_per_model(mock_server):
    async with open_gateway(mock_server.url) as gw:
        assert gw.model("m") is gw.model("m")
        with pytest.raises(ConfigError, match="unknown model 'nope'"):
            gw.model("nope")


# ---- n samples per request (complete_n) -----------------------------------------------------------------

SCRIPTED = ModelRegistry.from_dict({"models": {"s": {"backend": "llamacpp", "model": "scripted"}}}, "test models")


class SeededSamples(ScriptedBackend):
    """Raw completions that name their seed, so the samples of one group are told apart."""

    def sample(self, prompt: str, seed: int | None) -> Completion:
        return Completion(text=f"sample {seed}", usage=Usage(3, 2), finish_reason="stop")


class ShortGroups(SeededSamples):
    async def complete_n(self, prompt, params, n, *, seed=None):
        return (await super().complete_n(prompt, params, n, seed=seed))[:-1]


@asynccontextmanager
async def scripted_gateway(backend: Backend, cache: CallCache | None = None) -> AsyncIterator[ModelClient]:
    gateway = Gateway(SCRIPTED, cache, retry=FAST, backends={"s": backend})
    try:
        yield gateway.model("s")
    finally:
        await gateway.close()


async def test_complete_n_falls_back_to_n_calls_with_consecutive_seeds():
    backend = SeededSamples()
    async with scripted_gateway(backend) as client:
        replies = await client.complete_n("p", 3, max_tokens=8)
    seeds = [c["seed"] for c in backend.calls]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert [r.text for r in replies] == [f"sample {s}" for s in seeds]
    assert all(c["params"]["max_tokens"] == 8 and "n" not in c["params"] for c in backend.calls)
    usage = client.usage
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens) == (1, 9, 6)  # one request, tokens summed


async def test_complete_n_is_one_request_and_one_cache_entry(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        backend = SeededSamples(native_n=True)
        async with scripted_gateway(backend, cache) as client:
            first = await client.complete_n("p", 4)
            second = await client.complete_n("p", 4)
            other = await client.complete_n("p", 4, sample=1)
            usage = client.usage
        assert [c["n"] for c in backend.calls] == [4, 4]  # the repeat was a hit; another sample index is not
        assert [r.text for r in second] == [r.text for r in first] and len({r.text for r in first}) == 4
        assert all(r.cached for r in second) and not any(r.cached for r in first + other)
        assert [r.usage for r in second] == [r.usage for r in first]
        assert {r.text for r in other}.isdisjoint(r.text for r in first)
        assert (usage.calls, usage.cache_hits) == (2, 1)
        assert (usage.prompt_tokens, usage.completion_tokens) == (6, 16)  # the prompt counted once per request
    finally:
        cache.close()


async def test_complete_n_of_one_is_complete_and_its_cache_entry(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        backend = SeededSamples(native_n=True)
        async with scripted_gateway(backend, cache) as client:
            single = await client.complete("p", sample=5)
            [again] = await client.complete_n("p", 1, sample=5)
            group = await client.complete_n("p", 2, sample=5)  # n joins the key: not the single sample's entry
        assert again.cached and again.text == single.text
        assert [c.get("n") for c in backend.calls] == [None, 2]
        assert not any(r.cached for r in group)
    finally:
        cache.close()


@pytest.mark.parametrize("n", [0, -1, 2.0, True, "2"])
async def test_complete_n_refuses_a_bad_n(n):
    backend = SeededSamples()
    async with scripted_gateway(backend) as client:
        with pytest.raises(ModelError, match="n must be a whole number >= 1"):
            await client.complete_n("p", n)
    assert backend.calls == []


async def test_complete_n_with_missing_samples_is_an_error_not_a_misaligned_group(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        async with scripted_gateway(ShortGroups(native_n=True), cache) as client:
            with pytest.raises(ModelError, match="2 samples for n=3"):
                await client.complete_n("p", 3)
            assert client.usage.calls == 0
        with sqlite3.connect(tmp_path / "calls.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0  # nothing half-cached
    finally:
        cache.close()


async def test_complete_n_through_the_mock_server(mock_server):
    async with open_gateway(mock_server.url) as gw:
        replies = await gw.model("m").complete_n("four words of prompt", 3, max_tokens=20)
    requests = mock_server.stats()["last_requests"]
    assert len(requests) == 1 and requests[0]["body"]["n"] == 3
    assert [r.text for r in replies] == ["echo: four words of prompt"] * 3
    usage = gw.usage["m"]
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens) == (1, 4, 15)
