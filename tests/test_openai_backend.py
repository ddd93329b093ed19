"""The ``openai`` backend on its own (request shapes, error classification) and a whole pipeline through it.

Error classification is what the gateway's retry loop trusts, so every status class is pinned here; odd
servers (a non-JSON body, a reply without choices, embeddings out of order) are played by a tiny aiohttp
app in the test's own loop.
"""

from __future__ import annotations

import email.utils
import errno
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import ModelError
from joydataforge.models.backends.base import FatalError, TransientError
from joydataforge.models.backends.openai_compat import OpenAICompatBackend, describe_non_json, parse_retry_after
from joydataforge.models.config import ModelConfig, ModelRegistry

pytestmark = pytest.mark.timeout(30)


def config(url: str | None, **fields: Any) -> ModelConfig:
    return ModelConfig(name="m", backend="openai", model="mock-model", base_url=url, **{"timeout": 5.0, **fields})


@asynccontextmanager
async def backend_for(url: str | None, **fields: Any) -> AsyncIterator[OpenAICompatBackend]:
    backend = OpenAICompatBackend(config(url, **fields))
    try:
        yield backend
    finally:
        await backend.close()


@asynccontextmanager
async def odd_server(handler: Any) -> AsyncIterator[str]:
    """A one-route server that answers every POST with ``handler(request_json)`` -> web.Response."""

    async def route(request: web.Request) -> web.Response:
        return handler(await request.json())

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- Retry-After ------------------------------------------------------------------------------------------


def test_parse_retry_after_seconds_and_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(future) <= 31
    past = email.utils.formatdate(time.time() - 300, usegmt=True)
    assert parse_retry_after(past) == 0.0


# ---- error classification -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses(mock_server, status):
    async with backend_for(mock_server.url) as backend:
        with pytest.raises(TransientError) as info:
            await backend.chat(user(f"x [[mock:status={status},retry_after=2,id=cls{status}]]"), {})
    assert info.value.status == status and info.value.retryable
    assert info.value.retry_after == 2.0
    assert json.loads(info.value.raw)["error"]["code"] == str(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 422, 501])
async def test_final_statuses(mock_server, status):
    async with backend_for(mock_server.url) as backend:
        with pytest.raises(FatalError) as info:
            await backend.chat(user(f"x [[mock:status={status},id=fin{status}]]"), {})
    assert not isinstance(info.value, TransientError) and not info.value.retryable
    assert f"HTTP {status}" in str(info.value) and info.value.model == "m" and info.value.status == status
    # Every call of the model would get 401/403/404/405/501: the breaker counts those; a 400 or 422 is about
    # this one request.
    assert (info.value.endpoint_fault is not None) == (status in (401, 403, 404, 405, 501))


async def test_non_api_replies_are_transient_endpoint_faults():
    def login_page(body: dict[str, Any]) -> web.Response:
        return web.Response(text="<html><head><title>\n  Sign in\n</title></head></html>", content_type="text/html")

    def no_choices_key(body: dict[str, Any]) -> web.Response:
        return web.json_response({"status": "ok"})

    def bad_gateway_page(body: dict[str, Any]) -> web.Response:
        return web.Response(text="<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html")

    def not_found_page(body: dict[str, Any]) -> web.Response:
        return web.Response(text="<!DOCTYPE html><title>404</title>", status=404, content_type="text/html")

    def rate_limit_page(body: dict[str, Any]) -> web.Response:
        return web.Response(
            text="<html><title>Slow down</title></html>",
            status=429,
            content_type="text/html",
            headers={"Retry-After": "1"},
        )

    def odd_charset(body: dict[str, Any]) -> web.Response:
        return web.Response(body=b"\xff\xfe<html>", headers={"Content-Type": "text/html; charset=no-such-charset"})

    async with odd_server(login_page) as url, backend_for(url) as backend:
        with pytest.raises(TransientError, match="did not answer like a model API") as info:
            await backend.chat(user("x"), {})
        assert info.value.endpoint_fault == "HTML page (status 200, <title>Sign in</title>)"
        assert info.value.raw.startswith("<html>")
    async with odd_server(no_choices_key) as url, backend_for(url) as backend:
        for call in (backend.chat(user("x"), {}), backend.complete("x", {})):
            with pytest.raises(TransientError) as info:
                await call
            assert info.value.endpoint_fault == "JSON without 'choices'"
        with pytest.raises(TransientError) as info:
            await backend.embed(["x"])
        assert info.value.endpoint_fault == "JSON without 'data'"
    async with odd_server(bad_gateway_page) as url, backend_for(url) as backend:
        with pytest.raises(TransientError) as info:  # a proxy whose model server is gone: retried, and counted
            await backend.chat(user("x"), {})
        assert info.value.endpoint_fault == "HTML page (status 502)" and info.value.status == 502
    async with odd_server(not_found_page) as url, backend_for(url) as backend:
        with pytest.raises(FatalError) as info:  # a web server, not a model API, at this address
            await backend.chat(user("x"), {})
        assert info.value.endpoint_fault == "HTML page (status 404, <title>404</title>)"
    async with odd_server(rate_limit_page) as url, backend_for(url) as backend:
        with pytest.raises(TransientError) as info:  # a CDN's rate limit: slow down, but nothing is down
            await backend.chat(user("x"), {})
        assert info.value.endpoint_fault is None and info.value.retry_after == 1.0
    async with odd_server(odd_charset) as url, backend_for(url) as backend:
        with pytest.raises(TransientError) as info:
            await backend.chat(user("x"), {})
        assert info.value.endpoint_fault == "HTML page (status 200)"


async def test_an_api_reply_with_empty_choices_is_transient_but_not_an_endpoint_fault():
    def no_choices(body: dict[str, Any]) -> web.Response:
        return web.json_response({"object": "chat.completion", "choices": []})

    async with odd_server(no_choices) as url, backend_for(url) as backend:
        with pytest.raises(TransientError, match="without choices") as info:
            await backend.chat(user("x"), {})
        assert info.value.endpoint_fault is None
        with pytest.raises(TransientError, match="without choices") as info:
            await backend.complete("x", {})
        assert info.value.endpoint_fault is None


async def test_connection_refused_is_transient():
    async with backend_for("http://127.0.0.1:9/v1") as backend:  # the discard port: nothing listens
        with pytest.raises(TransientError, match="connection failed: connection refused") as info:
            await backend.chat(user("x"), {})
    assert info.value.endpoint_fault == "connection refused"


class _Refusing:
    """A session whose every request fails before a reply, with the given exception."""

    def __init__(self, exc: Exception):
        self.exc = exc
        self.closed = False

    def post(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "exc, fault",
    [
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), "no connection within 5s"),
        (aiohttp.ServerDisconnectedError(), "connection closed without a reply"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), "connection reset"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "reply cut short"),
    ],
)
async def test_connection_failures_say_what_happened(exc, fault):
    async with backend_for("http://127.0.0.1:9/v1") as backend:
        backend._session = _Refusing(exc)  # type: ignore[assignment]
        with pytest.raises(TransientError) as info:
            await backend.chat(user("x"), {})
    assert info.value.endpoint_fault == fault and "connection failed" in str(info.value)


async def test_a_read_timeout_is_transient_but_not_an_endpoint_fault(mock_server):
    """A model slow to answer is alive: only a connection that never opens says the endpoint is gone."""
    async with backend_for(mock_server.url, timeout=0.2) as backend:
        with pytest.raises(TransientError, match="no reply within 0.2s") as info:
            await backend.chat(user("x [[mock:hang,id=slow]]"), {})
    assert info.value.endpoint_fault is None


def test_describe_non_json():
    assert describe_non_json(200, "text/html", "<html><title>A  very\nlong title " + "x" * 80 + "</title>") == (
        "HTML page (status 200, <title>A very long title " + "x" * 39 + "...</title>)"
    )
    assert describe_non_json(200, "application/octet-stream", "<!doctype html><p>hi") == "HTML page (status 200)"
    assert describe_non_json(200, "application/json", "  ") == "an empty reply (status 200)"
    assert (
        describe_non_json(503, "", "upstream connect error") == "not JSON (status 503, no content type: "
        "'upstream connect error')"
    )


def test_base_url_is_required():
    with pytest.raises(ModelError, match="needs base_url"):
        OpenAICompatBackend(config(None))


# ---- request shapes --------------------------------------------------------------------------------------


async def test_structured_output_modes(mock_server):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    async with backend_for(mock_server.url, structured_output="json_object") as backend:
        reply = await backend.chat(user("j"), {}, json_schema=schema)
    assert json.loads(reply.text) == {"echo": "j"}
    assert mock_server.stats()["last_requests"][-1]["body"]["response_format"]["type"] == "json_object"
    async with backend_for(mock_server.url, structured_output="none") as backend:
        await backend.chat(user("n"), {}, json_schema=schema)
    assert "response_format" not in mock_server.stats()["last_requests"][-1]["body"]


async def test_seed_is_sent_unless_the_caller_set_one(mock_server):
    async with backend_for(mock_server.url) as backend:
        await backend.chat(user("a"), {}, seed=11)
        await backend.chat(user("b"), {"seed": 5}, seed=11)
        await backend.complete("c", {}, seed=12)
    seeds = [r["body"]["seed"] for r in mock_server.stats()["last_requests"]]
    assert seeds == [11, 5, 12]


async def test_complete_n_is_one_request_with_n_and_splits_usage(mock_server):
    async with backend_for(mock_server.url) as backend:
        replies = await backend.complete_n("a b c", {"max_tokens": 20}, 3, seed=7)
    [request] = mock_server.stats()["last_requests"]
    assert request["endpoint"] == "/v1/completions"
    assert (request["body"]["n"], request["body"]["seed"], request["body"]["prompt"]) == (3, 7, "a b c")
    assert [r.text for r in replies] == ["echo: a b c"] * 3
    # the server counts the prompt once and all samples' tokens together: the prompt goes to the first sample
    assert [(r.usage.prompt_tokens, r.usage.completion_tokens) for r in replies] == [(3, 4), (0, 4), (0, 4)]


async def test_complete_n_sorts_choices_and_keeps_every_token():
    def uneven(body: dict[str, Any]) -> web.Response:
        choices = [
            {"index": i, "text": f"t{i}", "finish_reason": "length" if i == 1 else "stop"}
            for i in reversed(range(body["n"]))
        ]
        return web.json_response({"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 10}})

    async with odd_server(uneven) as url, backend_for(url) as backend:
        replies = await backend.complete_n("x", {}, 3)
    assert [(r.text, r.finish_reason) for r in replies] == [("t0", "stop"), ("t1", "length"), ("t2", "stop")]
    assert [(r.usage.prompt_tokens, r.usage.completion_tokens) for r in replies] == [(5, 4), (0, 3), (0, 3)]


async def test_complete_n_tops_up_when_the_server_ignores_n():
    bodies: list[dict[str, Any]] = []

    def one_choice(body: dict[str, Any]) -> web.Response:  # what llama_cpp.server and Ollama do with n
        bodies.append(body)
        choice = {"index": 0, "text": f"seed {body.get('seed')}", "finish_reason": "stop"}
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

    async with odd_server(one_choice) as url, backend_for(url) as backend:
        replies = await backend.complete_n("x", {"temperature": 1.0}, 3, seed=10)
    assert [r.text for r in replies] == ["seed 10", "seed 11", "seed 12"]
    assert [(b.get("n"), b["seed"]) for b in bodies] == [(3, 10), (None, 11), (None, 12)]
    assert all(b["temperature"] == 1.0 for b in bodies)


async def test_non_ascii_round_trip(mock_server):
    async with backend_for(mock_server.url) as backend:
        reply = await backend.chat(user("孕期 第12周 能吃 什么"), {})
    assert reply.text == "echo: 孕期 第12周 能吃 什么"


async def test_embeddings_are_returned_in_input_order():
    def shuffled(body: dict[str, Any]) -> web.Response:
        rows = [{"index": i, "embedding": [float(i), 1.0]} for i in range(len(body["input"]))]
        return web.json_response({"data": list(reversed(rows))})

    async with odd_server(shuffled) as url, backend_for(url) as backend:
        assert await backend.embed(["a", "b", "c"]) == [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]


async def test_close_is_idempotent(mock_server):
    backend = OpenAICompatBackend(config(mock_server.url))
    await backend.chat(user("x"), {})
    await backend.close()
    await backend.close()


# ---- a pipeline through the openai backend -------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.exists() else []


async def test_pipeline_generate_and_label_through_the_mock(mock_server, tmp_path, monkeypatch):
    secret = "sk-pipeline-secret-value-42"
    monkeypatch.setenv("JOYFORGE_PIPE_KEY", secret)
    n, bad = 50, 7
    records = [
        {"id": f"r{i}", "input": f"question {i}" + (" [[mock:status=400,id=pipe]]" if i == bad else "")}
        for i in range(n)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "mock": {
                    "backend": "openai",
                    "model": "mock-model",
                    "base_url": mock_server.url,
                    "max_concurrency": 8,
                    "max_retries": 1,
                    "timeout": 5.0,
                    "api_key_env": "JOYFORGE_PIPE_KEY",
                }
            }
        },
        "test models",
    )
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [
                {"generate": {"model": "mock", "prompt": "en/answer"}},
                {"label": {"model": "mock", "prompt": "en/label", "options": {"labels": ["BMI", "other"]}}},
            ],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "concurrency": 8},
        }
    )
    summary = await LocalExecutor(pipeline, registry=registry).run()

    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert [r["id"] for r in out] == [f"r{i}" for i in range(n) if i != bad]  # input order, despite concurrency
    first = out[0]
    assert first["target"] == "echo: question 0"
    assert first["label"] == "BMI" and first["reason"] == "x"
    assert [c["step"] for c in first["_meta"]["calls"]] == ["generate", "label"]

    failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert len(failures) == 1
    failure = failures[0]
    assert failure["id"] == f"r{bad}" and failure["step"] == "generate"
    assert "HTTP 400" in failure["error"] and "mock directive" in failure["raw"]
    assert failure["record"] == records[bad]

    assert summary.records_in == n and summary.inputs_done == n - 1 and summary.failed == 1
    assert summary.records_out == n - 1
    usage = summary.models["mock"]
    assert usage["calls"] == 2 * (n - 1) and usage["errors"] == 1
    stats = mock_server.stats()
    assert stats["by_status"]["400"] == 1 and stats["by_status"]["200"] == 2 * (n - 1)
    assert json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))["failed"] == 1
    for file in (tmp_path / "out").iterdir():
        assert secret.encode() not in file.read_bytes(), f"the key leaked into {file.name}"


async def test_summary_keeps_the_structured_output_mode_and_counts_the_refused_request(tmp_path, caplog):
    """llama.cpp's server refuses json_schema (a 500 per model per process): the run's summary must not say 0
    errors, and must say which mode the labels were asked with."""
    statuses: list[tuple[str | None, int]] = []

    def llama_server(body: dict[str, Any]) -> web.Response:
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            statuses.append((kind, 500))
            return web.json_response(
                {
                    "error": {
                        "code": 500,
                        "type": "server_error",
                        "message": "JSON schema conversion failed: unsupported keyword",
                    }
                },
                status=500,
            )
        statuses.append((kind, 200))
        reply = json.dumps({"label": "BMI", "reason": "x"})
        return web.json_response(
            {
                "choices": [{"message": {"content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }
        )

    records = [{"id": f"r{i}", "input": f"question {i}"} for i in range(6)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    async with odd_server(llama_server) as url:
        registry = ModelRegistry.from_dict(
            {"models": {"mock": {"backend": "openai", "model": "mock-model", "base_url": url, "max_concurrency": 1}}},
            "test models",
        )
        pipeline = Pipeline.from_dict(
            {
                "input": {"path": str(tmp_path / "in.jsonl")},
                "steps": [{"label": {"model": "mock", "prompt": "en/label", "options": {"labels": ["BMI", "other"]}}}],
                "output": {"dir": str(tmp_path / "out")},
                "run": {"cache": None, "progress": False, "concurrency": 1},
            }
        )
        summary = await LocalExecutor(pipeline, registry=registry).run()

    assert summary.failed == 0 and summary.records_out == 6
    assert statuses == [("json_schema", 500)] + [("json_object", 200)] * 6
    written = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))["models"]["mock"]
    assert written["structured_output"] == "json_object"
    assert (written["errors"], written["retries"], written["calls"]) == (1, 0, 6)
    said = [r.getMessage() for r in caplog.records if "refused response_format" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"model 'mock': {url} refused response_format json_schema (HTTP 500")
