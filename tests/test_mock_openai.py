"""Tests of the mock OpenAI server itself: if the double lies, every gateway test built on it lies.

Plain blocking HTTP (urllib) is used for most checks so these tests do not depend on the
client code they exist to test; aiohttp is used where concurrency or keep-alive is the point.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from tests.mock_openai import MockServer, minimal_instance, spawn_mock_server, start_mock_server
from tests.mock_openai.server import parse_directive
from tests.support.waiting import eventually

# The fixtures (mock_server, mock_server_factory, mock_server_session) come from tests/conftest.py,
# which imports tests.mock_openai.fixtures; mock_engine below makes the first two run on both engines.

pytestmark = pytest.mark.timeout(30)
ENGINES = ["aiohttp", "raw"]


@pytest.fixture(params=ENGINES)
def mock_engine(request: pytest.FixtureRequest) -> str:
    """Every test that uses ``mock_server`` or the factory runs on both HTTP engines."""
    return request.param


REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- helpers ----------------------------------------------------------------------------------


def post(server: Any, path: str, body: Any, timeout: float = 10) -> tuple[int, dict[str, str], Any]:
    """POST JSON, return (status, headers, parsed body) for any status, 4xx/5xx included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.base_url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def chat(server: Any, text: str, **extra: Any) -> tuple[int, dict[str, str], Any]:
    return post(
        server, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    )


def content(reply: dict[str, Any], index: int = 0) -> str:
    return reply["choices"][index]["message"]["content"]


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["BMI", "孕期孕周", "药品", "其他"]},
        "reason": {"type": "string"},
    },
    "required": ["label", "reason"],
    "additionalProperties": False,
}


# ---- chat completions ---------------------------------------------------------------------------


def test_chat_reply_is_shaped_like_openai(mock_server: MockServer) -> None:
    status, _, reply = post(
        mock_server,
        "/v1/chat/completions",
        {
            "model": "qwen",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "what is two plus two"},
            ],
        },
    )
    assert status == 200
    assert set(reply) == {"id", "object", "created", "model", "choices", "usage"}
    assert reply["object"] == "chat.completion" and reply["model"] == "qwen"
    assert isinstance(reply["created"], int) and reply["id"].startswith("chatcmpl-")
    choice = reply["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "echo: what is two plus two"}
    # whitespace words: 2 + 2 + 2 + 5 prompt words; "echo: what is two plus two" is 6 words
    assert reply["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}


def test_chat_n_gives_n_indexed_choices_and_counts_their_tokens(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "a b", n=3)
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert {content(reply, i) for i in range(3)} == {"echo: a b"}
    assert reply["usage"]["completion_tokens"] == 9


def test_chat_multimodal_parts_use_their_text(mock_server: MockServer) -> None:
    _, _, reply = post(
        mock_server,
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]}
            ]
        },
    )
    assert content(reply) == "echo: look"


def test_max_tokens_truncates_and_reports_length(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "one two three four five", max_tokens=3)
    assert content(reply) == "echo: one two"
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 3


def test_directives_are_removed_from_the_echo(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "hello [[mock:delay=0]] world")
    assert content(reply) == "echo: hello  world"


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"{not json", "not valid JSON"),
        ({"model": "m"}, "messages"),
        ({"messages": []}, "messages"),
    ],
)
def test_bad_requests_get_openai_style_400(mock_server: MockServer, body: Any, fragment: str) -> None:
    status, _, reply = post(mock_server, "/v1/chat/completions", body)
    assert status == 400
    assert fragment in reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error"


# ---- structured output ------------------------------------------------------------------------


def test_json_schema_reply_is_a_valid_minimal_instance(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "label this", response_format=schema_format(LABEL_SCHEMA))
    value = json.loads(content(reply))
    jsonschema.validate(value, LABEL_SCHEMA)
    assert value == {"label": "BMI", "reason": "x"}


def test_json_object_reply_is_an_object_with_the_echo(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "ping", response_format={"type": "json_object"})
    assert json.loads(content(reply)) == {"echo": "ping"}


def test_vllm_guided_json_is_honoured(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "x", guided_json=json.dumps(LABEL_SCHEMA))
    jsonschema.validate(json.loads(content(reply)), LABEL_SCHEMA)


NESTED = {
    "$defs": {
        "Tag": {"type": "object", "properties": {"name": {"type": "string", "minLength": 3}}, "required": ["name"]}
    },
    "type": "object",
    "required": ["count", "score", "tags", "flag", "maybe", "kind", "both", "when", "const", "ratio"],
    "properties": {
        "count": {"type": "integer", "minimum": 2, "multipleOf": 5},
        "score": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "minItems": 2},
        "flag": {"type": "boolean"},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 7}]},
        "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
        "both": {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
            ]
        },
        "when": {"type": "string", "format": "date"},
        "const": {"const": {"k": 1}},
        "ratio": {"type": ["number", "null"], "minimum": -3},
        "optional": {"type": "string"},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "schema",
    [
        LABEL_SCHEMA,
        NESTED,
        {"type": "array", "items": {"type": "string", "enum": ["z"]}, "minItems": 1},
        {"type": "string", "minLength": 4},
        {"type": "integer", "exclusiveMinimum": 10},
        {"type": "object", "minProperties": 1, "properties": {"a": {"type": "integer"}}},
        {"properties": {"x": {"type": "string"}}, "required": ["x"]},
        {},
    ],
)
def test_minimal_instance_validates(schema: dict[str, Any]) -> None:
    jsonschema.validate(minimal_instance(schema), schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_minimal_instance_is_minimal() -> None:
    value = minimal_instance(NESTED)
    assert "optional" not in value
    assert value["count"] == 5 and value["tags"] == [{"name": "xxx"}, {"name": "xxx"}]
    assert value["maybe"] == 7 and value["kind"] == "a" and value["both"] == {"a": "x", "b": 0}


def test_malformed_json_directive_breaks_only_the_first_n(mock_server: MockServer) -> None:
    fmt = schema_format(LABEL_SCHEMA)
    text = "label [[mock:malformed_json,times=2]]"
    for _ in range(2):
        status, _, reply = chat(mock_server, text, response_format=fmt)
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(content(reply))
    _, _, reply = chat(mock_server, text, response_format=fmt)
    jsonschema.validate(json.loads(content(reply)), LABEL_SCHEMA)


def test_invalid_schema_directive_gives_json_that_fails_validation(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "[[mock:invalid_schema]]", response_format=schema_format(LABEL_SCHEMA))
    value = json.loads(content(reply))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, LABEL_SCHEMA)


# ---- directives ---------------------------------------------------------------------------------


def test_429_with_retry_after_for_the_first_n_then_success(mock_server: MockServer) -> None:
    text = "hi [[mock:status=429,retry_after=1,times=2]]"
    for _ in range(2):
        status, headers, reply = chat(mock_server, text)
        assert status == 429 and headers["Retry-After"] == "1"
        assert reply["error"]["type"] == "rate_limit_exceeded"
    status, headers, reply = chat(mock_server, text)
    assert status == 200 and "Retry-After" not in headers and content(reply) == "echo: hi"
    stats = mock_server.stats()
    assert stats["by_status"] == {"429": 2, "200": 1}
    assert stats["directives"] == {"status=429,retry_after=1,times=2": 3}


@pytest.mark.parametrize("code", [500, 502, 503, 400])
def test_status_directive_without_times_always_fails(mock_server: MockServer, code: int) -> None:
    for _ in range(3):
        status, headers, reply = chat(mock_server, f"[[mock:status={code}]]")
        assert status == code and "Retry-After" not in headers
        assert reply["error"]["code"] == str(code)


def test_times_counts_per_exact_directive_string_and_reset_clears(mock_server: MockServer) -> None:
    assert chat(mock_server, "[[mock:status=503,times=1,id=a]]")[0] == 503
    assert chat(mock_server, "[[mock:status=503,times=1,id=b]]")[0] == 503  # its own counter
    assert chat(mock_server, "[[mock:status=503,times=1,id=a]]")[0] == 200
    mock_server.reset()
    assert chat(mock_server, "[[mock:status=503,times=1,id=a]]")[0] == 503


def test_delay_directive_delays_only_its_request(mock_server: MockServer) -> None:
    chat(mock_server, "plain")
    start = time.perf_counter()
    assert chat(mock_server, "[[mock:delay=2]]")[0] == 200
    assert time.perf_counter() - start >= 2
    plain, delayed = mock_server.stats()["last_requests"][-2:]
    assert plain["answered"] - plain["received"] < 2 <= delayed["answered"] - delayed["received"]


def test_reply_directive_takes_the_rest_including_commas(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "q [[mock:reply=yes, no, maybe]]", response_format=schema_format(LABEL_SCHEMA))
    assert content(reply) == "yes, no, maybe"


def test_parse_directive() -> None:
    assert parse_directive("status=429, retry_after=2 ,times=3,drop,reply=a=b, c") == {
        "status": "429",
        "retry_after": "2",
        "times": "3",
        "drop": "",
        "reply": "a=b, c",
    }


@pytest.mark.parametrize(
    "directive,fragment",
    [
        ("stauts=429", "unknown key 'stauts'"),
        ("status=abc", "bad value 'abc' for 'status'"),
        ("delay=soon,times=1", "bad value 'soon' for 'delay'"),
    ],
)
def test_malformed_directives_get_a_400_that_names_them(mock_server: MockServer, directive: str, fragment: str) -> None:
    for _ in range(2):  # every time, whatever times= says
        status, _, reply = chat(mock_server, f"[[mock:{directive}]]")
        assert status == 400 and fragment in reply["error"]["message"]
    assert mock_server.stats()["directives"] == {}


def test_requests_that_break_the_mock_still_get_an_answer(mock_server: MockServer) -> None:
    status, _, reply = chat(mock_server, "x", n="many")
    assert status == 500 and "mock server error" in reply["error"]["message"]


def test_finish_reason_directive(mock_server: MockServer) -> None:
    _, _, reply = chat(mock_server, "[[mock:finish_reason=content_filter]]")
    assert reply["choices"][0]["finish_reason"] == "content_filter"


def test_drop_closes_the_connection_without_a_response(mock_server: MockServer) -> None:
    with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
        chat(mock_server, "[[mock:drop,times=1]]")
    assert chat(mock_server, "[[mock:drop,times=1]]")[0] == 200  # server alive, counter spent
    assert mock_server.stats()["by_status"] == {"drop": 1, "200": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_hang_never_answers_and_close_is_still_quick(engine: str, caplog: pytest.LogCaptureFixture) -> None:
    server = start_mock_server(engine=engine)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "[[mock:hang]]"}]}, timeout=0.5)
    assert server.stats()["by_status"] == {"hang": 1}
    start = time.perf_counter()
    server.close()
    assert time.perf_counter() - start < 3
    del server
    gc.collect()
    assert "Task was destroyed" not in caplog.text  # the hanging handler was cancelled, not leaked


# ---- server options -----------------------------------------------------------------------------


async def test_latency_is_non_blocking(mock_server_factory: Any) -> None:
    server = mock_server_factory(latency=0.3)
    body = {"messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(server.url + "/chat/completions", json=body) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert statuses == [200] * 50
    assert server.stats()["max_in_flight"] > 1  # a blocking sleep would serve one request at a time


def error_pattern(server: MockServer, count: int) -> list[int]:
    return [chat(server, "x")[0] for _ in range(count)]


def test_error_rate_is_seeded_and_reproducible(mock_server_factory: Any) -> None:
    first = mock_server_factory(error_rate=0.5, seed=7, error_status=503)
    second = mock_server_factory(error_rate=0.5, seed=7, error_status=503)
    pattern = error_pattern(first, 40)
    assert pattern == error_pattern(second, 40)
    assert set(pattern) == {200, 503} and 8 <= pattern.count(503) <= 32
    first.reset()  # restarts the generator
    assert error_pattern(first, 40) == pattern


def test_configure_changes_options_live(mock_server: MockServer) -> None:
    mock_server.configure(error_rate=1.0, error_status=502)
    assert chat(mock_server, "x")[0] == 502
    mock_server.configure(error_rate=0.0)
    assert chat(mock_server, "x")[0] == 200
    with pytest.raises(ValueError):
        mock_server.configure(latncy=1)


def test_unknown_option_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="valid options"):
        start_mock_server(latncy=0.1)


# ---- completions, embeddings, models -----------------------------------------------------------


def test_text_completion(mock_server: MockServer) -> None:
    status, _, reply = post(mock_server, "/v1/completions", {"model": "m", "prompt": "<|user|> hi", "n": 2})
    assert status == 200 and reply["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in reply["choices"]] == [
        (0, "echo: <|user|> hi", "stop"),
        (1, "echo: <|user|> hi", "stop"),
    ]
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}


def test_text_completion_with_a_list_of_prompts_and_a_directive(mock_server: MockServer) -> None:
    _, _, reply = post(mock_server, "/v1/completions", {"prompt": ["a", "b"]})
    assert [c["text"] for c in reply["choices"]] == ["echo: a", "echo: b"]
    assert (
        post(mock_server, "/v1/completions", {"prompt": "[[mock:status=429,retry_after=3]]"})[1]["Retry-After"] == "3"
    )


def embed(server: Any, texts: Any, **extra: Any) -> list[list[float]]:
    status, _, reply = post(server, "/v1/embeddings", {"model": "e", "input": texts, **extra})
    assert status == 200 and reply["object"] == "list"
    assert [d["index"] for d in reply["data"]] == list(range(len(reply["data"])))
    return [d["embedding"] for d in reply["data"]]


def test_embeddings_are_deterministic_unit_vectors(mock_server: MockServer) -> None:
    a1, b, a2 = embed(mock_server, ["same text", "other text", "same text"])
    assert a1 == a2 and a1 != b and len(a1) == 8
    for vec in (a1, b):
        assert math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-9)
    assert embed(mock_server, "same text") == [a1]
    assert len(embed(mock_server, "x", dimensions=4)[0]) == 4


def test_embedding_dimension_option_and_stability_across_servers(mock_server_factory: Any) -> None:
    wide = mock_server_factory(dimension=32)
    other = mock_server_factory(dimension=32)
    assert len(embed(wide, "x")[0]) == 32
    assert embed(wide, "x") == embed(other, "x")


def test_embedding_directive(mock_server: MockServer) -> None:
    assert post(mock_server, "/v1/embeddings", {"input": ["ok", "[[mock:status=500]]"]})[0] == 500


def test_models_endpoint(mock_server_factory: Any) -> None:
    server = mock_server_factory(models=("a", "b"))
    with urllib.request.urlopen(server.url + "/models", timeout=5) as resp:
        reply = json.loads(resp.read())
    assert [m["id"] for m in reply["data"]] == ["a", "b"] and reply["object"] == "list"


# ---- stats -------------------------------------------------------------------------------------


def test_stats_count_endpoints_statuses_and_keep_the_last_bodies(mock_server_factory: Any) -> None:
    server = mock_server_factory(keep_last=2)
    chat(server, "one")
    chat(server, "[[mock:status=500]]")
    post(server, "/v1/embeddings", {"input": "e"})
    stats = server.stats()
    assert stats["total"] == 3
    assert stats["by_endpoint"] == {"/v1/chat/completions": 2, "/v1/embeddings": 1}
    assert stats["by_status"] == {"200": 2, "500": 1}
    assert [r["endpoint"] for r in stats["last_requests"]] == ["/v1/chat/completions", "/v1/embeddings"]
    assert stats["last_requests"][0]["body"]["messages"][0]["content"] == "[[mock:status=500]]"
    with urllib.request.urlopen(server.base_url + "/_stats", timeout=5) as resp:
        assert json.loads(resp.read())["total"] == 3
    post(server, "/_reset", {})
    assert server.stats()["total"] == 0 and server.stats()["last_requests"] == []


def test_stats_record_headers_times_and_status(mock_server: MockServer) -> None:
    req = urllib.request.Request(
        mock_server.url + "/chat/completions",
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        data=json.dumps({"messages": [{"role": "user", "content": "[[mock:delay=0.2]]"}]}).encode(),
    )
    before = time.monotonic()
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
    entry = mock_server.stats()["last_requests"][-1]
    assert entry["headers"]["authorization"] == "Bearer sk-test" and entry["status"] == 200
    assert before <= entry["received"] and entry["answered"] - entry["received"] >= 0.2


async def test_max_in_flight_counts_concurrent_requests(mock_server_factory: Any) -> None:
    server = mock_server_factory(latency=0.2, hold_after=0)  # held until all 7 connections are in
    body = {"messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=7)) as session:

        async def one() -> None:
            async with session.post(server.url + "/chat/completions", json=body) as resp:
                await resp.read()

        sent = asyncio.ensure_future(asyncio.gather(*(one() for _ in range(20))))
        await eventually(lambda: server.stats()["held"] == 7, "7 requests in flight")
        server.configure(hold_after=-1)
        await sent
    stats = server.stats()
    assert stats["max_in_flight"] == 7 and stats["in_flight"] == 0


def test_session_fixture_is_reset_for_each_user(mock_server_session: MockServer) -> None:
    assert mock_server_session.stats()["total"] == 0
    chat(mock_server_session, "x")
    assert mock_server_session.stats()["total"] == 1


def test_session_fixture_is_reset_for_each_user_again(mock_server_session: MockServer) -> None:
    assert mock_server_session.stats()["total"] == 0


async def test_keep_alive_reuses_one_connection(mock_server: MockServer) -> None:
    created = 0

    async def on_create(*_: Any) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    body = {"messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        for _ in range(5):
            async with session.post(mock_server.url + "/chat/completions", json=body) as resp:
                assert resp.status == 200
                await resp.read()
    assert created == 1


# ---- out of process -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_spawned_server_serves_and_stops(engine: str) -> None:
    with spawn_mock_server(latency=0.0, dimension=3, engine=engine, error_retry_after="2") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        assert len(embed(server, "x")[0]) == 3
        assert server.stats()["total"] == 1
        server.reset()
        assert server.stats()["total"] == 0
    assert server.proc.poll() is not None


def test_module_prints_port_first() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mock_openai", "--port", "0", "--latency", "0.1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("PORT ") and int(line.split()[1]) > 0
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        proc.stdout.close()  # type: ignore[union-attr]


# ---- wire-level behaviour (both engines) -------------------------------------------------------


def raw_exchange(server: MockServer, payload: bytes, expect_close: bool = False, reads: int = 1) -> bytes:
    """Send bytes on one socket and collect what comes back (until close, or ``reads`` replies)."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(65536)
            data += chunk
            if not chunk or (not expect_close and data.count(b"HTTP/1.1 ") >= reads and _complete(data, reads)):
                return data


def _complete(data: bytes, replies: int) -> bool:
    """True once ``replies`` whole responses (by Content-Length) are in ``data``."""
    for _ in range(replies):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = data[:end].lower()
        start = head.find(b"content-length:") + len(b"content-length:")
        length = int(head[start:].split(b"\r\n")[0])
        if len(data) < end + 4 + length:
            return False
        data = data[end + 4 + length :]
    return True


def request_bytes(text: str, extra_headers: str = "", version: str = "HTTP/1.1") -> bytes:
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    return (
        f"POST /v1/chat/completions {version}\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


def test_pipelined_requests_are_answered_in_order(mock_server: MockServer) -> None:
    data = raw_exchange(mock_server, request_bytes("[[mock:delay=0.2]] first") + request_bytes("second"), reads=2)
    assert data.index(b"echo: first") < data.index(b"echo: second")


def test_chunked_request_body(mock_server: MockServer) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "chunky"}]}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert b"echo: chunky" in raw_exchange(mock_server, head + chunks)


def test_http10_without_keep_alive_is_closed(mock_server: MockServer) -> None:
    data = raw_exchange(mock_server, request_bytes("old", version="HTTP/1.0"), expect_close=True)
    assert b" 200 " in data.split(b"\r\n")[0] and b"echo: old" in data


def test_unknown_path_and_wrong_method(mock_server: MockServer) -> None:
    assert post(mock_server, "/v1/nope", {})[0] == 404
    req = urllib.request.Request(mock_server.url + "/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405
    err.value.close()


def test_raw_engine_rejects_garbage_with_400() -> None:
    with start_mock_server(engine="raw") as server:
        data = raw_exchange(server, b"NONSENSE\r\n\r\n", expect_close=True)
        assert data.startswith(b"HTTP/1.1 400 ")
        assert chat(server, "still fine")[0] == 200


def test_random_errors_can_carry_retry_after(mock_server_factory: Any) -> None:
    server = mock_server_factory(error_rate=1.0, error_status=429, error_retry_after="3")
    status, headers, _ = chat(server, "x")
    assert status == 429 and headers["Retry-After"] == "3"


def test_unknown_engine_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="unknown engine"):
        start_mock_server(engine="tornado")
