"""The SQLite call cache and the cache key: what makes two calls the same call, and what survives a restart."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from joydataforge.models.backends.base import Backend, Completion, Usage
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelConfig
from joydataforge.models.gateway import ModelClient
from joydataforge.models.retry import RetryPolicy
from joydataforge.models.usage import ModelUsage

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def cache(tmp_path):
    cache = CallCache(tmp_path / "sub" / "calls.sqlite", batch_size=4)
    yield cache
    cache.close()


async def test_put_then_get_before_any_flush(cache):
    assert await cache.get("k") is None
    cache.put("k", {"text": "孕期 answer", "pt": 1})
    assert await cache.get("k") == {"text": "孕期 answer", "pt": 1}
    assert (cache.hits, cache.misses) == (1, 1)


async def test_values_survive_close_and_reopen(tmp_path):
    path = tmp_path / "calls.sqlite"
    first = CallCache(path)
    for i in range(10):
        first.put(f"k{i}", {"i": i})
    first.close()
    second = CallCache(path)
    try:
        assert [await second.get(f"k{i}") for i in range(10)] == [{"i": i} for i in range(10)]
        second.put("k3", {"i": 33})  # a later write replaces
        await second.flush()
    finally:
        second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM calls WHERE key = 'k3'").fetchone() == ('{"i": 33}',)
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone() == (10,)


async def test_batches_are_committed_without_an_explicit_flush(cache):
    for i in range(4):  # batch_size=4: the fourth put submits a commit
        cache.put(f"b{i}", {"i": i})
    await asyncio.get_running_loop().run_in_executor(cache._executor, lambda: None)  # wait for the writer
    with sqlite3.connect(cache.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone() == (4,)


async def test_many_concurrent_lookups(cache):
    for i in range(50):
        cache.put(f"c{i}", {"i": i})
    await cache.flush()
    results = await asyncio.gather(*(cache.get(f"c{i % 60}") for i in range(120)))
    assert [r and r["i"] for r in results] == [i % 60 if i % 60 < 50 else None for i in range(120)]


# ---- the key -----------------------------------------------------------------------------------------------


class Nothing(Backend):
    async def chat(self, messages, params, *, json_schema=None, seed=None):  # pragma: no cover - never called
        return Completion("", Usage())


def client(**fields) -> ModelClient:
    body = {"name": "m", "backend": "openai", "model": "a", "base_url": "http://h/v1", **fields}
    return ModelClient(ModelConfig(**body), Nothing(), None, RetryPolicy(), ModelUsage())


MESSAGES = [{"role": "user", "content": "q"}]


def key(c: ModelClient, **changes) -> str:
    args = {
        "verb": "chat",
        "payload": MESSAGES,
        "params": {"temperature": 0.5},
        "schema": None,
        "sample": 0,
        "attempt": 0,
        **changes,
    }
    return c._key(**args)


def test_key_is_stable_and_covers_everything_that_changes_a_reply():
    base = client()
    assert key(base) == key(client())  # stable across instances (and processes: no hash randomisation)
    variants = {
        "sample": key(base, sample=1),
        "attempt": key(base, attempt=1),
        "params": key(base, params={"temperature": 0.6}),
        "schema": key(base, schema={"type": "object"}),
        "verb": key(base, verb="complete"),
        "payload": key(base, payload=[{"role": "user", "content": "q2"}]),
        "model": key(client(model="b")),
        "base_url": key(client(base_url="http://other/v1")),
        "backend": key(client(backend="llamacpp")),
    }
    assert len({key(base), *variants.values()}) == len(variants) + 1


def test_key_ignores_what_does_not_change_a_reply(monkeypatch):
    monkeypatch.setenv("KEY_A", "sk-aaaa")
    monkeypatch.setenv("KEY_B", "sk-bbbb")
    base = key(client())
    assert key(client(api_key_env="KEY_A")) == base == key(client(api_key_env="KEY_B"))
    assert key(client(max_concurrency=3, timeout=9.0, max_retries=0)) == base
    assert key(base_client := client(), params={"top_p": 1, "temperature": 0.5}) == key(
        base_client, params={"temperature": 0.5, "top_p": 1}
    )  # parameter order is not content


def test_key_is_the_hash_of_the_whole_call():
    """Persistent caches stay valid: the key is exactly content_hash of the call's parts, however built."""
    from joydataforge.records import content_hash

    c = client()
    schema = {"type": "object", "properties": {"label": {"enum": ["BMI", "其他"]}}, "required": ["label"]}
    cases = [
        ("chat", MESSAGES, {"temperature": 0.5}, None, 0, 0),
        ("chat", MESSAGES, {}, schema, 2, 1),
        ("complete", "raw prompt", {"max_tokens": 5}, None, 1, 0),
        ("chat", MESSAGES, {}, schema, True, 0),
    ]
    for verb, payload, params, sch, sample, attempt in cases:
        expected = content_hash([c.config.identity(), verb, payload, params, sch, sample, attempt], 20)
        assert c._key(verb, payload, params, sch, sample, attempt) == expected
    before = c._key("chat", MESSAGES, {}, schema, 0, 0)
    schema["required"].append("reason")  # the same dict, changed in place: a new key
    after = c._key("chat", MESSAGES, {}, schema, 0, 0)
    assert after != before
    assert after == content_hash([c.config.identity(), "chat", MESSAGES, {}, schema, 0, 0], 20)
