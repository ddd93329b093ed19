"""A fast, deterministic mock of an OpenAI-compatible HTTP server, for tests and benchmarks.

Why it exists: the model gateway must be tested against real HTTP (keep-alive, status codes,
``Retry-After``, dropped connections, timeouts, malformed replies) without a real model, and the
orchestration benchmark needs a server whose latency is exact and whose own CPU cost is tiny, so
that what is measured is the client.

Endpoints (all JSON, shaped like OpenAI's):

- ``POST /v1/chat/completions``  content ``"echo: <last user message>"`` (directives removed), or,
  when ``response_format`` is ``json_schema`` (or vLLM's ``guided_json`` is given), the minimal
  instance of that schema as JSON; for ``json_object``, ``{"echo": "<last user message>"}``.
- ``POST /v1/completions``       text ``"echo: <prompt>"``; a list of prompts gives one choice per
  prompt and sample.
- ``POST /v1/embeddings``        deterministic unit vectors from a SHA-256 of each text
  (``dimensions`` in the request overrides the server's dimension, default 8).
- ``GET  /v1/models``            the served model ids.
- ``/v1/files`` and ``/v1/batches``  OpenAI's batch API (upload, content download; create, retrieve, list with
  metadata, cancel): a batch completes ``batch_delay`` seconds after its creation, its requests answered
  by the endpoints above (directives included, so some can fail), its results out of order
  (``batch_order``), some expired (``batch_expire_after``). See :mod:`tests.mock_openai.batches`.
- ``GET  /_stats``               ``total``, ``by_endpoint``, ``by_status`` (keys are strings:
  ``"200"``, ``"429"``, ..., ``"drop"``, ``"hang"``), ``directives`` (hits per directive string),
  ``in_flight`` and ``max_in_flight`` (model requests being served now / at most since the last
  reset), ``options``, and ``last_requests``: the last N model requests, oldest first, each
  ``{"endpoint", "body", "headers" (names lower-cased), "received", "answered", "status"}`` with
  times from ``time.monotonic()`` (``answered``/``status`` absent while still in flight).
- ``POST /_reset``               zero the stats and the directive counters, restart the error RNG.
- ``POST /_config``              change options at run time (JSON body: any field of
  :class:`MockOptions`).

Malformed requests get OpenAI-style 400s (``{"error": {"message", "type", "param", "code"}}``),
unknown paths 404, wrong methods 405.

Token counts are whitespace-split word counts: ``prompt_tokens`` counts the words of every message
content (or prompt, or embedding input), ``completion_tokens`` the words of every returned choice.
``max_tokens`` (or ``max_completion_tokens``) truncates a reply to that many words and sets
``finish_reason`` to ``"length"``, as a real server would, so truncation paths can be tested.

Directives: a request steers its own fate with ``[[mock:...]]`` inside the last user message (chat),
the prompt (completions) or an input text (embeddings)::

    [[mock:status=429,retry_after=1,times=2]]   first 2 requests with this exact directive get 429
                                                with "Retry-After: 1"; later ones succeed
    [[mock:status=500]]                         always 500 (also 502, 503, 400, ...)
    [[mock:delay=0.5]]                          answer after an extra 0.5 s (asyncio.sleep)
    [[mock:malformed_json,times=1]]             content is not valid JSON for the first request
    [[mock:invalid_schema]]                     content is valid JSON that violates the schema
    [[mock:reply=any text, even, with commas]]  fixed content; ``reply=`` must come last
    [[mock:drop]]                               close the connection without any response
    [[mock:hang]]                               never answer (for client timeout tests)
    [[mock:finish_reason=length]]               override the finish reason
    [[mock:bad_tool_args]]                      tool calls (see below) get arguments that break the schema
    [[mock:think=field]]                        a thinking model's reply: the trace in reasoning_content
                                                (think=reasoning: in reasoning; tags: <think>..</think> in the
                                                content; close: only </think>; cut: <think> never closed)

Tool calls: a chat request with ``tools`` (and ``tool_choice`` other than ``"none"``) whose last message
is not a tool result is answered with ``tool_calls`` (``finish_reason: "tool_calls"``, content null): one
call for each tool whose name appears in the last user message, in the tools' order (the first tool if
none does), arguments the minimal instance of the tool's ``parameters`` schema, ids ``call_`` + a hash of
the conversation and the call's place (the same request gets the same ids). After tool results (the last
message has role ``tool``), or with ``tool_choice: "none"`` or a ``reply=`` directive, the reply is text:
``answer: `` followed by the contents of the trailing tool messages joined with ``; `` (or the usual echo,
or the directive's reply).

``times=N`` counts per directive string (the text between ``[[mock:`` and ``]]``): the N first
requests carrying that exact string are affected, later ones are served normally. Without ``times``
every request carrying it is affected. A directive with an unknown key or a bad value is answered
with a 400 naming it (a silently ignored typo would let a test pass for the wrong reason). Use
distinct strings (e.g. add ``id=abc``, which does nothing else) to keep counters of different tests
apart; ``reset()`` zeroes all counters. Several directives in one message all apply.

Server options (constructor, CLI, ``/_config``): ``latency`` seconds added to every model request
(non-blocking ``asyncio.sleep``), ``error_rate`` in [0, 1] of model requests answered with
``error_status`` (default 500, with ``Retry-After: error_retry_after`` if set), drawn from
``random.Random(seed)`` (``reset()`` restarts it), ``dimension`` of embeddings, ``keep_last``
request bodies kept for ``/_stats``, ``models`` served. Directive effects come before random errors.

A finite server, for concurrency control (``bench/adaptive.py``, ``tests/test_adaptive*.py``):

- ``capacity`` (0: unlimited): model requests served at once, like an inference server's batch. Up to
  ``capacity`` requests in flight each take ``latency`` (flat); beyond it the others wait in a FIFO
  queue for a free place, so latency rises with the requests in flight (``capacity / latency`` requests
  a second at most, whatever the client sends). ``/_stats`` adds ``queued`` (waiting now) and
  ``max_queued``.
- ``quota_rps`` (0: none) and ``quota_burst`` (0: one second's worth): a request quota, a token bucket
  refilled at ``quota_rps`` a second holding at most ``quota_burst``, taken at arrival (before the
  queue). A request that finds it empty gets an immediate 429 with ``Retry-After`` (whole seconds,
  at least 1, as RFC 9110 wants) and ``retry-after-ms`` (exact, as OpenAI and Azure send it). With
  ``quota_headers`` (default on) every model reply, 200 or 429, carries OpenAI's
  ``x-ratelimit-limit-requests`` (the bucket size), ``x-ratelimit-remaining-requests`` (whole
  requests left after this one) and ``x-ratelimit-reset-requests`` (time until the bucket is full
  again, e.g. ``0.250s``). ``reset()`` refills the bucket.

A switch for tests whose meaning needs work still under way: ``hold_after`` (-1: off) answers the first
``hold_after`` model requests (counted since the last ``reset()``) and holds every later one, in flight,
until it is set back to -1 or raised; ``/_stats`` adds ``held`` (waiting now). "The run was killed mid-way"
or "all 12 were in flight at once" then holds on any machine, instead of on one fast enough.

Two HTTP engines serve the same :class:`MockApp`: ``aiohttp`` (default, a complete HTTP/1.1
server) and ``raw`` (a bare asyncio protocol: keep-alive, pipelining, chunked bodies; about half the
CPU per request, for the benchmark). Measured on the shared 2-core dev box, server pinned to one
core, lean keep-alive client on the other, 256 connections, no latency: aiohttp ~7.7-9.7k req/s
(~100 us CPU/request), raw ~10-13k req/s (~50 us CPU/request); the request logic itself is
~13 us. The benchmark needs ~2.6k req/s.

Python API: :func:`start_mock_server` (in-process, background thread), :func:`spawn_mock_server`
(child process, optionally pinned to a core); both return a handle with ``url`` (the OpenAI
``base_url``, ending in ``/v1``), ``stats()``, ``reset()``, ``configure(**options)`` and ``close()``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web

from .batches import MockBatches

JSON_CT = "application/json"
DIRECTIVE_RE = re.compile(r"\[\[mock:(.*?)\]\]", re.DOTALL)
DIRECTIVE_MARK = "[[mock:"
DEFAULT_MODEL = "mock-model"
BATCH_PATHS = ("/v1/files", "/v1/batches")
MODEL_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}


# --------------------------------------------------------------------------------------------
# Options and state
# --------------------------------------------------------------------------------------------


@dataclass
class MockOptions:
    """Server-wide behaviour; every field can also be changed at run time via ``/_config``."""

    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    seed: int = 0
    dimension: int = 8
    keep_last: int = 50
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    error_retry_after: str | None = None
    capacity: int = 0
    quota_rps: float = 0.0
    quota_burst: float = 0.0
    quota_headers: bool = True
    batch_delay: float = 0.0  # seconds before a batch completes (tests/mock_openai/batches.py)
    batch_expire_after: int = -1  # a batch expires after answering this many requests; -1: never
    batch_order: str = "shuffled"  # or "input": the order of a batch's output and error lines
    hold_after: int = -1  # model requests after the first ``hold_after`` wait until it is -1 again; -1: none


class Quota:
    """A server-side request quota: a token bucket taken at arrival, answered in OpenAI's header dialect."""

    def __init__(self, rps: float, burst: float) -> None:
        self.rps = rps
        self.size = burst if burst > 0 else max(1.0, rps)
        self.level = self.size
        self.updated = time.monotonic()

    def admit(self) -> tuple[bool, dict[str, str]]:
        """Take one request's worth; (admitted, the headers of its reply)."""
        now = time.monotonic()
        self.level = min(self.size, self.level + (now - self.updated) * self.rps)
        self.updated = now
        admitted = self.level >= 1.0
        if admitted:
            self.level -= 1.0
        headers = {
            "x-ratelimit-limit-requests": str(int(self.size)),
            "x-ratelimit-remaining-requests": str(int(self.level)),
            "x-ratelimit-reset-requests": f"{(self.size - self.level) / self.rps:.3f}s",
        }
        if not admitted:
            wait = (1.0 - self.level) / self.rps
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return admitted, headers


@dataclass
class MockState:
    """Counters the tests assert on; kept minimal because it is touched on every request."""

    options: MockOptions
    rng: random.Random = field(init=False)
    by_endpoint: collections.Counter = field(default_factory=collections.Counter)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    directive_hits: collections.Counter = field(default_factory=collections.Counter)
    last: collections.deque = field(init=False)
    total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    queued: int = 0
    max_queued: int = 0
    held: int = 0  # model requests waiting now because of ``hold_after``
    quota: Quota | None = field(init=False, default=None)
    places: asyncio.Semaphore | None = field(init=False, default=None)  # ``capacity`` requests served at once
    batch_calls: collections.Counter = field(default_factory=collections.Counter)  # calls to /v1/files, /v1/batches
    batch_requests: int = 0  # requests answered through batches (not counted in ``total``)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.options.seed)
        self.last = collections.deque(maxlen=self.options.keep_last)
        self._new_quota()
        self._new_places()

    def _new_quota(self) -> None:
        opts = self.options
        self.quota = Quota(opts.quota_rps, opts.quota_burst) if opts.quota_rps > 0 else None

    def _new_places(self) -> None:
        self.places = asyncio.Semaphore(self.options.capacity) if self.options.capacity > 0 else None

    def reset(self) -> None:
        """Forget everything counted so far, including directive ``times`` counters and the RNG."""
        self.by_endpoint.clear()
        self.by_status.clear()
        self.directive_hits.clear()
        self.batch_calls.clear()
        self.batch_requests = 0
        self.last = collections.deque(maxlen=self.options.keep_last)
        self.rng = random.Random(self.options.seed)
        self.total = 0
        self.max_in_flight = self.in_flight
        self.max_queued = self.queued
        self._new_quota()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy, safe to hand to another thread."""
        return {
            "total": self.total,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "directives": dict(self.directive_hits),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "queued": self.queued,
            "max_queued": self.max_queued,
            "held": self.held,
            "last_requests": [_entry_copy(e) for e in self.last],
            "batch_api": dict(self.batch_calls),
            "batch_requests": self.batch_requests,
            "options": {
                "latency": self.options.latency,
                "error_rate": self.options.error_rate,
                "error_status": self.options.error_status,
                "seed": self.options.seed,
                "dimension": self.options.dimension,
                "keep_last": self.options.keep_last,
                "models": list(self.options.models),
                "error_retry_after": self.options.error_retry_after,
                "capacity": self.options.capacity,
                "quota_rps": self.options.quota_rps,
                "quota_burst": self.options.quota_burst,
                "quota_headers": self.options.quota_headers,
                "batch_delay": self.options.batch_delay,
                "batch_expire_after": self.options.batch_expire_after,
                "batch_order": self.options.batch_order,
                "hold_after": self.options.hold_after,
            },
        }

    def configure(self, **changes: Any) -> None:
        """Apply option changes; a new seed restarts the error RNG so runs stay reproducible."""
        for key, value in changes.items():
            if not hasattr(self.options, key):
                raise ValueError(f"unknown mock option {key!r}")
            if key == "models":
                value = tuple(value)
            setattr(self.options, key, value)
        if "seed" in changes:
            self.rng = random.Random(self.options.seed)
        if "keep_last" in changes:
            self.last = collections.deque(self.last, maxlen=self.options.keep_last)
        if {"quota_rps", "quota_burst"} & set(changes):
            self._new_quota()
        if "capacity" in changes:  # requests already waiting finish on the old places
            self._new_places()


def _entry_copy(entry: dict[str, Any]) -> dict[str, Any]:
    """A recorded request for ``/_stats``: header names lower-cased, whatever the engine."""
    out = dict(entry)
    out["headers"] = {k.lower(): v for k, v in (entry.get("headers") or {}).items()}
    return out


# --------------------------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------------------------


@dataclass
class Effect:
    """What the active directives of one request ask for; the empty Effect means 'serve normally'."""

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    malformed_json: bool = False
    invalid_schema: bool = False
    reply: str | None = None
    drop: bool = False
    hang: bool = False
    finish_reason: str | None = None
    bad_tool_args: bool = False
    think: str | None = None


_FLAGS = ("malformed_json", "invalid_schema", "drop", "hang", "bad_tool_args")


def parse_directive(spec: str) -> dict[str, str]:
    """Split ``k=v,flag,reply=rest`` into a dict; ``reply=`` swallows the rest, commas included."""
    out: dict[str, str] = {}
    rest = spec.strip()
    while rest:
        if rest.startswith("reply="):
            out["reply"] = rest[len("reply=") :]
            break
        item, _, rest = rest.partition(",")
        key, eq, value = item.strip().partition("=")
        if key:
            out[key] = value.strip() if eq else ""
        rest = rest.lstrip()
    return out


class DirectiveError(ValueError):
    """A ``[[mock:...]]`` the mock cannot honour; answered with a 400 that names it, because a
    silently ignored typo (``stauts=429``) would make a test pass for the wrong reason."""


_CONVERTERS: dict[str, Any] = {
    "status": int,
    "times": int,
    "delay": float,
    "retry_after": str,
    "reply": str,
    "finish_reason": str,
    "id": str,
    "think": lambda value: THINK_MODES[value],
    **dict.fromkeys(("malformed_json", "invalid_schema", "drop", "hang", "bad_tool_args"), str),
}


def check_directive(spec: str, parsed: dict[str, str]) -> None:
    """Reject unknown keys and values of the wrong type, naming the directive."""
    for key, value in parsed.items():
        convert = _CONVERTERS.get(key)
        if convert is None:
            raise DirectiveError(f"unknown key {key!r} in [[mock:{spec}]]; known: {', '.join(_CONVERTERS)}")
        try:
            convert(value)
        except (ValueError, KeyError):
            raise DirectiveError(f"bad value {value!r} for {key!r} in [[mock:{spec}]]") from None


def _apply(effect: Effect, parsed: dict[str, str]) -> None:
    """Fold one (checked) directive into the request's effect."""
    for key, value in parsed.items():
        if key == "status":
            effect.status = int(value)
        elif key == "retry_after":
            effect.retry_after = value
        elif key == "delay":
            effect.delay += float(value)
        elif key == "reply":
            effect.reply = value
        elif key == "finish_reason":
            effect.finish_reason = value
        elif key == "think":
            effect.think = value
        elif key in _FLAGS:
            setattr(effect, key, True)
        # times is handled by the caller; id only keeps the counters of different tests apart.


def effect_for(text: str, state: MockState) -> tuple[Effect | None, str]:
    """Find directives in ``text``, count them, and return (effect or None, text without them).

    Raises :class:`DirectiveError` (before counting anything) if a directive is malformed.
    """
    if DIRECTIVE_MARK not in text:
        return None, text
    effect = Effect()
    specs = [(spec, parse_directive(spec)) for spec in DIRECTIVE_RE.findall(text)]
    for spec, parsed in specs:
        check_directive(spec, parsed)
    for spec, parsed in specs:
        state.directive_hits[spec] += 1
        times = parsed.get("times")
        if times is not None and state.directive_hits[spec] > int(times):
            continue
        _apply(effect, parsed)
    return effect, DIRECTIVE_RE.sub("", text).strip()


# --------------------------------------------------------------------------------------------
# Content generation
# --------------------------------------------------------------------------------------------


def word_count(text: str) -> int:
    """The mock's token count: whitespace-split words (cheap, deterministic, documented)."""
    return len(text.split())


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a multimodal parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def _resolve_ref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``#/...`` references; remote ones are out of scope for a mock."""
    seen = 0
    while "$ref" in schema and seen < 32:
        node: Any = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
        seen += 1
    return schema


def _merge_all_of(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``allOf`` so properties and requirements from every branch are honoured."""
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _resolve_ref(part, root)
        for key, value in part.items():
            if key == "properties":
                merged.setdefault("properties", {}).update(value)
            elif key == "required":
                merged["required"] = list(merged.get("required", [])) + list(value)
            else:
                merged.setdefault(key, value)
    return merged


def _schema_type(schema: dict[str, Any]) -> str | None:
    """The type to build: explicit (first non-null of a list), else guessed from keywords."""
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        return non_null[0] if non_null else "null"
    if typ:
        return typ
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _minimal_number(schema: dict[str, Any], integer: bool) -> int | float:
    """Smallest sensible number honouring (exclusive) minimum, maximum and multipleOf."""
    value: float = 0
    if "minimum" in schema:
        value = schema["minimum"]
    exclusive = schema.get("exclusiveMinimum")
    if isinstance(exclusive, (int, float)) and not isinstance(exclusive, bool):
        value = (
            max(value, exclusive + (1 if integer else 1e-6))
            if "minimum" in schema
            else (exclusive + (1 if integer else 1e-6))
        )
    elif exclusive is True:
        value = value + (1 if integer else 1e-6)
    if "maximum" in schema and value > schema["maximum"]:
        value = schema["maximum"]
    step = schema.get("multipleOf")
    if step:
        value = math.ceil(value / step) * step
    return int(math.ceil(value)) if integer else value


def _minimal_string(schema: dict[str, Any]) -> str:
    """``"x"`` padded to ``minLength``; formats that clients commonly check get a valid value."""
    fmt = schema.get("format")
    if fmt == "date-time":
        return "1970-01-01T00:00:00Z"
    if fmt == "date":
        return "1970-01-01"
    if fmt == "email":
        return "x@example.com"
    if fmt in ("uri", "url"):
        return "http://x"
    if fmt == "uuid":
        return "00000000-0000-0000-0000-000000000000"
    return "x" * max(1, int(schema.get("minLength", 1)))


def minimal_instance(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A small value valid against ``schema``: first enum/const, "x", 0/minimum, [], required props.

    Why minimal: tests want a predictable answer, and the smallest instance is the one least likely
    to trip a constraint the generator does not model (patterns are not honoured).
    """
    if not isinstance(schema, dict) or depth > 32:
        return None if schema is False else {}
    root = schema if root is None else root
    schema = _resolve_ref(schema, root)
    if "allOf" in schema:
        schema = _merge_all_of(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            branches = [_resolve_ref(b, root) for b in schema[key]]
            non_null = [b for b in branches if b.get("type") != "null"] or branches
            return minimal_instance(non_null[0], root, depth + 1)
    typ = _schema_type(schema)
    if typ == "object":
        return _minimal_object(schema, root, depth)
    if typ == "array":
        return _minimal_array(schema, root, depth)
    if typ == "string":
        return _minimal_string(schema)
    if typ == "integer":
        return _minimal_number(schema, integer=True)
    if typ == "number":
        return _minimal_number(schema, integer=False)
    if typ == "boolean":
        return False
    if typ == "null":
        return None
    return {}


def _minimal_object(schema: dict[str, Any], root: dict[str, Any], depth: int) -> dict[str, Any]:
    """Fill required properties (and enough others to meet ``minProperties``)."""
    props: dict[str, Any] = schema.get("properties", {})
    names = list(dict.fromkeys(schema.get("required", [])))
    for name in props:
        if len(names) >= int(schema.get("minProperties", 0)):
            break
        if name not in names:
            names.append(name)
    return {name: minimal_instance(props.get(name, {}), root, depth + 1) for name in names}


def _minimal_array(schema: dict[str, Any], root: dict[str, Any], depth: int) -> list[Any]:
    """``[]`` unless ``minItems`` (or ``prefixItems``) demand elements."""
    prefix = schema.get("prefixItems") or []
    count = max(int(schema.get("minItems", 0)), 0)
    items = [minimal_instance(s, root, depth + 1) for s in prefix[:count]]
    item_schema = schema.get("items", {})
    while len(items) < count:
        items.append(minimal_instance(item_schema if isinstance(item_schema, dict) else {}, root, depth + 1))
    return items


def violating_instance(schema: Any) -> Any:
    """Valid JSON that a validator must reject: the wrong top-level type."""
    if isinstance(schema, dict) and _schema_type(schema) == "array":
        return {"mock": "not an array"}
    if isinstance(schema, dict) and _schema_type(schema) in ("string", "integer", "number"):
        return [None]
    return ["mock: not an object"]


def requested_schema(body: dict[str, Any]) -> tuple[bool, Any]:
    """(wants JSON?, schema or None) from ``response_format`` or vLLM's ``guided_json``."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            return True, spec.get("schema", spec if "type" in spec else {})
        if kind == "json_object":
            return True, None
    guided = body.get("guided_json")
    if guided is not None:
        return True, json.loads(guided) if isinstance(guided, str) else guided
    return False, None


def embedding_vector(text: str, dimension: int) -> list[float]:
    """A unit vector from SHA-256(text): equal texts give equal vectors, others look random."""
    raw = bytearray()
    counter = 0
    encoded = text.encode("utf-8")
    while len(raw) < 4 * dimension:
        raw += hashlib.sha256(counter.to_bytes(4, "little") + encoded).digest()
        counter += 1
    ints = struct.unpack(f"<{dimension}I", bytes(raw[: 4 * dimension]))
    vec = [i / 2147483647.5 - 1.0 for i in ints]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def truncate(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Cut ``text`` to ``max_tokens`` words, like a real server stopping at its token budget."""
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        return text, False
    words = text.split()
    if len(words) <= max_tokens:
        return text, False
    return " ".join(words[:max_tokens]), True


# --------------------------------------------------------------------------------------------
# Request handling, independent of the HTTP engine
# --------------------------------------------------------------------------------------------


class Reply:
    """What to send back: status, JSON payload and extra headers (``DROP`` means: close the socket)."""

    __slots__ = ("headers", "payload", "status")

    def __init__(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.payload = payload
        self.headers = headers


DROP = Reply(0, b"")


def error_body(status: int, message: str) -> bytes:
    """An OpenAI-style error object, so clients exercise their real error parsing."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": str(status)}}).encode()


class MockApp:
    """State plus one coroutine per endpoint; the HTTP engines only move bytes in and out.

    Keeping the logic free of any HTTP framework lets the same behaviour run on aiohttp (the
    robust default) and on the bare asyncio protocol (the fast engine for benchmarks).
    """

    def __init__(self, options: MockOptions | None = None) -> None:
        self.state = MockState(options or MockOptions())
        self._ids = 0
        self.routes: dict[tuple[str, str], Any] = {
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.models,
            ("GET", "/_stats"): self.stats,
            ("POST", "/_reset"): self.reset,
            ("POST", "/_config"): self.config,
        }
        self.batches = MockBatches(self)

    async def handle(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """Route one request; unknown paths get OpenAI-style 404s, wrong methods 405s.

        Model requests are counted and recorded here, with their headers and arrival/answer times
        (``time.monotonic()``, comparable across processes on one Linux host), so client tests can
        check keys, ``Retry-After`` waits and concurrency limits without a proxy.
        """
        route = path.partition("?")[0]
        if route.startswith(BATCH_PATHS):
            return await self.batches.handle(method, path, body, headers)
        handler = self.routes.get((method, route))
        if handler is None:
            if any(p == route for _, p in self.routes):
                return Reply(405, error_body(405, f"method {method} not allowed on {path}"))
            return Reply(404, error_body(404, f"unknown path {path}"))
        if route not in MODEL_PATHS:
            return await handler(body, None)
        return await self._model_call(handler, route, body, headers)

    async def _model_call(self, handler: Any, route: str, body: bytes, headers: Mapping[str, str] | None) -> Reply:
        state = self.state
        state.total += 1
        state.by_endpoint[route] += 1
        entry: dict[str, Any] = {
            "endpoint": route,
            "body": None,
            "headers": headers,
            "received": time.monotonic(),
            "number": state.total,
        }
        state.last.append(entry)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        quota_headers: dict[str, str] | None = None
        try:
            admitted = True
            if state.quota is not None:
                admitted, quota_headers = state.quota.admit()
            if not admitted:
                reply = self._reply(429, error_body(429, "mock quota exceeded"), dict(quota_headers or {}))
            elif state.places is not None:
                reply = await self._served_in_place(state.places, handler, body, entry)
            else:
                reply = await handler(body, entry)
        except DirectiveError as exc:
            reply = self._reply(400, error_body(400, str(exc)))
        except Exception as exc:  # a mock bug must answer, not leave the client waiting
            reply = self._reply(500, error_body(500, f"mock server error: {exc!r}"))
        finally:
            state.in_flight -= 1
        if quota_headers and state.options.quota_headers and reply is not DROP:
            reply.headers = {**quota_headers, **(reply.headers or {})}
        elif reply is not DROP and reply.headers and not state.options.quota_headers:
            reply.headers = {k: v for k, v in reply.headers.items() if not k.startswith("x-ratelimit-")} or None
        entry["answered"] = time.monotonic()
        entry["status"] = "drop" if reply is DROP else reply.status
        return reply

    async def _served_in_place(self, places: asyncio.Semaphore, handler: Any, body: bytes, entry: Any) -> Reply:
        """Wait (FIFO) for one of ``capacity`` places, then serve: the finite server's queue."""
        state = self.state
        state.queued += 1
        state.max_queued = max(state.max_queued, state.queued)
        try:
            await places.acquire()
        finally:
            state.queued -= 1
        try:
            return await handler(body, entry)
        finally:
            places.release()

    # ---- plumbing -------------------------------------------------------------------------

    def _reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> Reply:
        self.state.by_status[status] += 1
        return Reply(status, payload, headers)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-mock{self._ids}"

    def _parse(self, raw: bytes, entry: dict[str, Any]) -> dict[str, Any] | Reply:
        """Parse and record the body; a body that is not a JSON object is a 400."""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return self._reply(400, error_body(400, f"body is not valid JSON: {exc}"))
        if not isinstance(body, dict):
            return self._reply(400, error_body(400, "body must be a JSON object"))
        entry["body"] = body
        return body

    async def _held(self, number: int) -> None:
        """Wait while ``hold_after`` holds request ``number`` back: a test's switch, so "the run is still under
        way" or "all N are in flight" never depends on how fast the machine is. Polled, because ``/_config``
        may change it from another thread or process."""
        state = self.state
        if not 0 <= state.options.hold_after < number:
            return
        state.held += 1
        try:
            while 0 <= state.options.hold_after < number:
                await asyncio.sleep(0.01)
        finally:
            state.held -= 1

    async def _gate(self, effect: Effect | None, entry: dict[str, Any]) -> Reply | None:
        """Apply the hold, latency, directives and random errors; a Reply here replaces the normal one."""
        await self._held(entry.get("number", 0))  # batched requests (no number) are never held
        opts = self.state.options
        if effect is not None and effect.hang:
            self.state.by_status["hang"] += 1
            await asyncio.Event().wait()  # only ends by cancellation, when the server stops
        delay = opts.latency + (effect.delay if effect is not None else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if effect is not None:
            if effect.drop:
                self.state.by_status["drop"] += 1
                return DROP
            if effect.status is not None and effect.status >= 300:
                headers = {"Retry-After": effect.retry_after} if effect.retry_after else None
                return self._reply(effect.status, error_body(effect.status, "mock directive"), headers)
        if opts.error_rate > 0 and self.state.rng.random() < opts.error_rate:
            headers = {"Retry-After": opts.error_retry_after} if opts.error_retry_after else None
            return self._reply(opts.error_status, error_body(opts.error_status, "mock random error"), headers)
        return None

    # ---- model endpoints ------------------------------------------------------------------

    async def chat(self, raw: bytes, entry: dict[str, Any]) -> Reply:
        """``/v1/chat/completions``: echo the last user message, or a schema-valid JSON object."""
        body = self._parse(raw, entry)
        if isinstance(body, Reply):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._reply(400, error_body(400, "'messages' must be a non-empty list"))
        last_user = ""
        prompt_tokens = 0
        for msg in messages:
            if not isinstance(msg, dict):
                return self._reply(400, error_body(400, "each message must be an object"))
            text = content_text(msg.get("content"))
            prompt_tokens += word_count(text)
            if msg.get("role") == "user":
                last_user = text
        effect, clean = effect_for(last_user, self.state)
        blocked = await self._gate(effect, entry)
        if blocked is not None:
            return blocked
        calls = tool_calls_for(body, messages, clean, effect)
        scripted = effect is not None and effect.reply is not None
        content = tool_answer(body, messages) if body.get("tools") and calls is None and not scripted else None
        choices, completion_tokens = self._choices(
            body, content if content is not None else self._content(body, clean, effect), effect, chat=True
        )
        if calls is not None:
            for choice in choices:
                choice["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
                choice["finish_reason"] = "tool_calls"
            completion_tokens = sum(word_count(c["function"]["arguments"]) for c in calls) * len(choices)
        usage = _usage(prompt_tokens, completion_tokens)
        if calls is None and effect is not None and effect.think is not None:
            usage = _thinking(choices, effect.think, clean, usage)
        return self._reply(
            200,
            json.dumps(
                {
                    "id": self._next_id("chatcmpl"),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or self.state.options.models[0],
                    "choices": choices,
                    "usage": usage,
                }
            ).encode(),
        )

    async def completions(self, raw: bytes, entry: dict[str, Any]) -> Reply:
        """``/v1/completions``: raw text completion (Magpie needs it); ``"echo: <prompt>"``."""
        body = self._parse(raw, entry)
        if isinstance(body, Reply):
            return body
        prompt = body.get("prompt", "")
        prompts = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) else [prompt]
        prompts = [p if isinstance(p, str) else json.dumps(p) for p in prompts]
        effect, cleaned = self._effects(prompts)
        blocked = await self._gate(effect, entry)
        if blocked is not None:
            return blocked
        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        for clean in cleaned:
            some, tokens = self._choices(
                body, self._content(body, clean, effect), effect, chat=False, start=len(choices)
            )
            choices.extend(some)
            completion_tokens += tokens
        return self._reply(
            200,
            json.dumps(
                {
                    "id": self._next_id("cmpl"),
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": body.get("model") or self.state.options.models[0],
                    "choices": choices,
                    "usage": _usage(sum(word_count(p) for p in prompts), completion_tokens),
                }
            ).encode(),
        )

    async def embeddings(self, raw: bytes, entry: dict[str, Any]) -> Reply:
        """``/v1/embeddings``: hash-derived unit vectors, so similarity tests are reproducible."""
        body = self._parse(raw, entry)
        if isinstance(body, Reply):
            return body
        value = body.get("input")
        if value is None or value == [] or value == "":
            return self._reply(400, error_body(400, "'input' must be a non-empty string or list"))
        texts = value if isinstance(value, list) and not isinstance(value[0], int) else [value]
        texts = [t if isinstance(t, str) else json.dumps(t) for t in texts]
        effect, _ = self._effects(texts)
        blocked = await self._gate(effect, entry)
        if blocked is not None:
            return blocked
        dim = int(body.get("dimensions") or self.state.options.dimension)
        tokens = sum(word_count(t) for t in texts)
        return self._reply(
            200,
            json.dumps(
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": embedding_vector(t, dim)}
                        for i, t in enumerate(texts)
                    ],
                    "model": body.get("model") or self.state.options.models[0],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            ).encode(),
        )

    async def models(self, raw: bytes, entry: dict[str, Any]) -> Reply:
        """``/v1/models``: what ``joyforge models check`` and clients probe first."""
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in self.state.options.models]
        return self._reply(200, json.dumps({"object": "list", "data": data}).encode())

    # ---- control endpoints (not counted in the stats) --------------------------------------

    async def stats(self, raw: bytes, entry: None) -> Reply:
        return Reply(200, json.dumps(self.state.snapshot()).encode())

    async def reset(self, raw: bytes, entry: None) -> Reply:
        self.state.reset()
        return Reply(200, b'{"ok": true}')

    async def config(self, raw: bytes, entry: None) -> Reply:
        try:
            self.state.configure(**json.loads(raw or b"{}"))
        except (ValueError, TypeError) as exc:
            return Reply(400, error_body(400, str(exc)))
        return Reply(200, json.dumps(self.state.snapshot()["options"]).encode())

    # ---- reply construction ---------------------------------------------------------------

    def _effects(self, texts: list[str]) -> tuple[Effect | None, list[str]]:
        """Directives of several texts (prompts, inputs): the first text carrying any wins."""
        effect: Effect | None = None
        cleaned: list[str] = []
        for text in texts:
            found, clean = effect_for(text, self.state)
            effect = effect or found
            cleaned.append(clean)
        return effect, cleaned

    def _content(self, body: dict[str, Any], clean: str, effect: Effect | None) -> str:
        """The reply text before ``n`` and truncation: directive reply, broken JSON, or the default."""
        if effect is not None and effect.reply is not None:
            return effect.reply
        wants_json, schema = requested_schema(body)
        if effect is not None and effect.malformed_json:
            return '{"mock": "this is not valid JSON'
        if effect is not None and effect.invalid_schema:
            return json.dumps(violating_instance(schema))
        if not wants_json:
            return "echo: " + clean
        if schema is None:
            return json.dumps({"echo": clean}, ensure_ascii=False)
        return json.dumps(minimal_instance(schema), ensure_ascii=False)

    def _choices(
        self, body: dict[str, Any], content: str, effect: Effect | None, chat: bool, start: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """``n`` identical choices (the mock is deterministic), truncated to ``max_tokens`` words."""
        n = int(body.get("n") or 1)
        text, cut = truncate(content, body.get("max_tokens", body.get("max_completion_tokens")))
        finish = (effect.finish_reason if effect is not None and effect.finish_reason else None) or (
            "length" if cut else "stop"
        )
        if chat:
            choices = [
                {
                    "index": start + i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ]
        else:
            choices = [{"index": start + i, "text": text, "logprobs": None, "finish_reason": finish} for i in range(n)]
        return choices, word_count(text) * n


def tool_calls_for(
    body: dict[str, Any], messages: list[dict[str, Any]], last_user: str, effect: Effect | None
) -> list[dict[str, Any]] | None:
    """The tool calls a request with ``tools`` gets, or None when it gets text (see the module doc)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not tools or body.get("tool_choice") == "none" or messages[-1].get("role") == "tool":
        return None
    if effect is not None and effect.reply is not None:  # a scripted text reply wins: "the model used no tool"
        return None
    named = [t for t in tools if t["function"].get("name") and t["function"]["name"] in last_user] or tools[:1]
    conversation = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    calls = []
    for k, tool in enumerate(named):
        schema = tool["function"].get("parameters") or {"type": "object"}
        arguments = (
            violating_instance(schema) if effect is not None and effect.bad_tool_args else minimal_instance(schema)
        )
        calls.append(
            {
                "id": f"call_{conversation[:8]}{k}",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    return calls


def tool_answer(body: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    """After tool results: ``answer: `` and the results, so a test sees they reached the model."""
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(content_text(message.get("content")))
    return "answer: " + "; ".join(reversed(results)) if results else None


THINK_MODES = {
    "field": "reasoning_content beside the content, counted in completion_tokens_details (DeepSeek, vLLM)",
    "reasoning": "reasoning beside the content, no token count (OpenRouter, Ollama)",
    "tags": "<think>trace</think> before the content (Qwen3, R1 distills served raw)",
    "close": "trace</think> before the content: the chat template opened the block",
    "cut": "<think>trace and no answer: cut off while thinking",
}


def _thinking(choices: list[dict[str, Any]], mode: str, clean: str, usage: dict[str, Any]) -> dict[str, Any]:
    """``[[mock:think=MODE]]``: answer like a thinking model (:data:`THINK_MODES`); the trace is ``thinking
    about: <the user message>``, its words added to ``completion_tokens``."""
    trace = f"thinking about: {clean.strip()}"
    for choice in choices:
        message, content = choice["message"], choice["message"].get("content") or ""
        if mode == "field":
            message["reasoning_content"] = trace
        elif mode == "reasoning":
            message["reasoning"] = trace
        elif mode == "tags":
            message["content"] = f"<think>\n{trace}\n</think>\n\n{content}"
        elif mode == "close":
            message["content"] = f"{trace}\n</think>\n\n{content}"
        else:
            message["content"] = f"<think>\n{trace}"
    extra = word_count(trace) * len(choices)
    usage = {**usage, "completion_tokens": usage["completion_tokens"] + extra}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if mode == "field":
        usage["completion_tokens_details"] = {"reasoning_tokens": extra}
    return usage


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --------------------------------------------------------------------------------------------
# Engine 1: aiohttp.web (default; a full, well-tested HTTP/1.1 implementation)
# --------------------------------------------------------------------------------------------


def aiohttp_app(mock: MockApp) -> web.Application:
    """One catch-all route that hands bytes to :meth:`MockApp.handle`; no middlewares (speed)."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        reply = await mock.handle(request.method, request.path_qs, await request.read(), request.headers)
        if reply is DROP:
            if request.transport is not None:
                request.transport.abort()  # the client sees a disconnect, not a status
            return web.Response(status=500)  # never reaches the client: the socket is gone
        return web.Response(status=reply.status, body=reply.payload, content_type=JSON_CT, headers=reply.headers)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", endpoint)
    return app


async def _start_aiohttp(mock: MockApp, host: str, port: int) -> tuple[Any, int]:
    """No access log (it would cost more than the request), a large backlog so a burst of 256
    new connections is not refused, and a short shutdown grace so ``hang`` requests do not hold
    ``close()`` for aiohttp's default 60 s."""
    runner = web.AppRunner(aiohttp_app(mock), access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    return runner.cleanup, int(runner.addresses[0][1])


# --------------------------------------------------------------------------------------------
# Engine 2: a bare asyncio protocol (about 2-3x less CPU per request; for the benchmark)
# --------------------------------------------------------------------------------------------

_MAX_HEAD = 64 * 1024


class BadRequest(Exception):
    """The bytes on the wire are not HTTP/1.x we understand; answered with 400 and a close."""


class RawHTTP(asyncio.Protocol):
    """A minimal HTTP/1.1 server connection: keep-alive, Content-Length or chunked request bodies,
    ``Expect: 100-continue``, and pipelined requests answered one at a time, in order.

    Why it exists: the benchmark wants the server's cost per request to be negligible next to the
    client's; aiohttp.web's generality costs ~100 us per request, this about a third of that.
    """

    def __init__(self, mock: MockApp, connections: set[RawHTTP]) -> None:
        self.mock = mock
        self.connections = connections
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        if self.task is not None:
            self.task.cancel()  # a hanging or delayed request dies with its connection

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()

    def _next(self) -> None:
        """Start serving the next complete request in the buffer, if there is one."""
        try:
            request = self._take()
        except BadRequest as exc:
            self._send(Reply(400, error_body(400, f"bad HTTP request: {exc}")), keep_alive=False)
            return
        if request is not None:
            self.task = asyncio.get_running_loop().create_task(self._serve(*request))

    async def _serve(self, method: str, path: str, body: bytes, headers: dict[str, str], keep_alive: bool) -> None:
        try:
            reply = await self.mock.handle(method, path, body, headers)
        except Exception as exc:  # never leave a client waiting on a mock bug
            reply = Reply(500, error_body(500, f"mock server error: {exc!r}"))
        self.task = None
        if self.transport is None:
            return
        if reply is DROP:
            self.transport.abort()
            return
        self._send(reply, keep_alive)
        if keep_alive and self.buf:
            self._next()

    def _send(self, reply: Reply, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(encode_response(reply, keep_alive))
        if not keep_alive:
            self.transport.close()

    def _take(self) -> tuple[str, str, bytes, dict[str, str], bool] | None:
        """Cut one whole request off the buffer, or return None until more bytes arrive."""
        buf = self.buf
        while buf[:2] == b"\r\n":  # stray CRLFs between pipelined requests are allowed
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise BadRequest("header section too large")
            return None
        method, path, version, headers = parse_head(bytes(buf[:end]))
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", ""):
            decoded = decode_chunked(buf, start)
            if decoded is None:
                self._maybe_continue(headers)
                return None
            body, consumed = decoded
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest("bad Content-Length") from None
            if len(buf) < start + length:
                self._maybe_continue(headers)
                return None
            body, consumed = bytes(buf[start : start + length]), start + length
        del buf[:consumed]
        self.continued = False
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return method, path, body, headers, keep_alive

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        """Answer ``Expect: 100-continue`` once, so clients that wait for it send their body."""
        if not self.continued and headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continued = True


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers (names lower-cased; repeated headers keep the last value)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def decode_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``: (body, end offset), or None if incomplete."""
    body = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";")[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", eol)
            if buf[eol : eol + 4] == b"\r\n\r\n":
                return bytes(body), eol + 4
            return (bytes(body), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        body += buf[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def encode_response(reply: Reply, keep_alive: bool) -> bytes:
    """Status line, the few headers clients need, and the JSON payload."""
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Unknown"
    head = (
        f"HTTP/1.1 {reply.status} {phrase}\r\nServer: mock-openai\r\nContent-Type: {JSON_CT}\r\n"
        f"Content-Length: {len(reply.payload)}\r\n"
    )
    if reply.headers:
        head += "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
    if not keep_alive:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + reply.payload


async def _start_raw(mock: MockApp, host: str, port: int) -> tuple[Any, int]:
    loop = asyncio.get_running_loop()
    connections: set[RawHTTP] = set()
    server = await loop.create_server(lambda: RawHTTP(mock, connections), host, port, backlog=2048, reuse_address=True)

    async def stop() -> None:
        server.close()
        for conn in list(connections):
            conn.abort()
        await server.wait_closed()

    return stop, int(server.sockets[0].getsockname()[1])


ENGINES = {"aiohttp": _start_aiohttp, "raw": _start_raw}


async def start_site(mock: MockApp, host: str = "127.0.0.1", port: int = 0, engine: str = "aiohttp") -> tuple[Any, int]:
    """Bind and start serving; returns (``async stop()``, the port actually bound)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return await ENGINES[engine](mock, host, port)


# --------------------------------------------------------------------------------------------
# Running it: in this process (background thread) or in a child process
# --------------------------------------------------------------------------------------------


def _options(**kwargs: Any) -> MockOptions:
    """Build options from keyword arguments, with a clear error on a misspelt one."""
    try:
        return MockOptions(**kwargs)
    except TypeError as exc:
        raise TypeError(f"{exc}; valid options: {', '.join(MockOptions.__dataclass_fields__)}") from None


class MockServer:
    """A mock server on its own event loop in a daemon thread, for tests in this process.

    Why a thread: a test (sync or async) and the client under test can use the server without
    sharing its event loop, so a client that blocks its loop cannot stall the server.
    """

    def __init__(self, options: MockOptions, host: str = "127.0.0.1", port: int = 0, engine: str = "aiohttp") -> None:
        self.mock = MockApp(options)
        self.host = host
        self.engine = engine
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: Any = None
        self.port = port
        self._thread = threading.Thread(target=self._run, name="mock-openai", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"mock server failed to start: {self._error}") from self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._stop, self.port = self._loop.run_until_complete(
                start_site(self.mock, self.host, self.port, self.engine)
            )
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._loop.close()
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._stop())
        self._cancel_leftovers()
        self._loop.close()

    def _cancel_leftovers(self) -> None:
        """Cancel handlers the engine left behind (aiohttp abandons ``hang`` ones after its grace
        period), so closing the loop does not print "Task was destroyed but it is pending"."""
        pending = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    @property
    def base_url(self) -> str:
        """``http://host:port`` without the ``/v1`` suffix (for ``/_stats`` and friends)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return self.base_url + "/v1"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the server's loop, so state is never touched from two threads at once."""

        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stats(self) -> dict[str, Any]:
        """Same JSON as ``GET /_stats``: total, by_endpoint, by_status, directives, last_requests."""
        return self._call(self.mock.state.snapshot)

    def reset(self) -> None:
        """Zero counters and directive ``times`` counters (``POST /_reset``)."""
        self._call(self.mock.state.reset)

    def configure(self, **changes: Any) -> None:
        """Change latency, error_rate, error_status, seed, dimension, keep_last or models live."""
        self._call(self.mock.state.configure, **changes)

    def finish_batch(self, batch_id: str, results: bytes) -> None:
        """Complete a batch with results another engine made from its input file (:meth:`MockBatches.finish`)."""
        self._call(self.mock.batches.finish, batch_id, results)

    def close(self) -> None:
        """Stop serving and join the thread; pending (e.g. ``hang``) requests are cancelled."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> MockServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_mock_server(
    latency: float = 0.0, *, host: str = "127.0.0.1", port: int = 0, engine: str = "aiohttp", **options: Any
) -> MockServer:
    """Start an in-process mock server; ``options`` are the fields of :class:`MockOptions`.

    ``engine="aiohttp"`` (default) is the robust one; ``"raw"`` is the lean asyncio protocol.
    """
    return MockServer(_options(latency=latency, **options), host=host, port=port, engine=engine)


# ---- child process --------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def _http_json(method: str, url: str, payload: dict[str, Any] | None = None) -> Any:
    """Tiny blocking HTTP helper for the control endpoints (stdlib only, no client library)."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": JSON_CT})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class MockProcess:
    """A mock server in a child process, so it has its own core (the benchmark needs that)."""

    def __init__(self, proc: subprocess.Popen[str], port: int, host: str) -> None:
        self.proc = proc
        self.port = port
        self.host = host

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        return _http_json("GET", self.base_url + "/_stats")

    def reset(self) -> None:
        _http_json("POST", self.base_url + "/_reset", {})

    def configure(self, **changes: Any) -> None:
        _http_json("POST", self.base_url + "/_config", changes)

    def close(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cli_args(options: MockOptions) -> list[str]:
    """The ``python -m tests.mock_openai`` flags that reproduce ``options``."""
    args = [
        "--latency",
        repr(options.latency),
        "--error-rate",
        repr(options.error_rate),
        "--error-status",
        str(options.error_status),
        "--seed",
        str(options.seed),
        "--dimension",
        str(options.dimension),
        "--keep-last",
        str(options.keep_last),
    ]
    for model in options.models:
        args += ["--model", model]
    if options.error_retry_after:
        args += ["--error-retry-after", options.error_retry_after]
    if options.capacity:
        args += ["--capacity", str(options.capacity)]
    if options.quota_rps:
        args += ["--quota-rps", repr(options.quota_rps), "--quota-burst", repr(options.quota_burst)]
    if not options.quota_headers:
        args += ["--no-quota-headers"]
    if options.hold_after >= 0:
        args += ["--hold-after", str(options.hold_after)]
    return args


def spawn_mock_server(
    latency: float = 0.0,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    engine: str = "aiohttp",
    cpu: int | None = None,
    python: str | None = None,
    startup_timeout: float = 30.0,
    **options: Any,
) -> MockProcess:
    """Start ``python -m tests.mock_openai`` and wait for its ``PORT <n>`` line.

    ``cpu`` pins the child to one core (Linux), so a benchmark client on the other core measures
    itself, not a fight over cores.
    """
    cmd = [
        python or sys.executable,
        "-m",
        "tests.mock_openai",
        "--host",
        host,
        "--port",
        str(port),
        "--engine",
        engine,
        *cli_args(_options(latency=latency, **options)),
    ]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    line = _readline_with_timeout(proc, startup_timeout)
    if not line.startswith("PORT "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"mock server did not start (exit {proc.returncode}); first line: {line!r}")
    return MockProcess(proc, int(line.split()[1]), host)


def _readline_with_timeout(proc: subprocess.Popen[str], timeout: float) -> str:
    """Read the child's first stdout line without blocking forever if it never prints one."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0].strip() if box else ""
