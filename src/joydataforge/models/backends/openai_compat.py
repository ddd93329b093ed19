"""Any OpenAI-compatible server: vLLM, SGLang, llama.cpp server, Ollama, TEI, hosted APIs.

Speaks the four HTTP endpoints (chat, completions, embeddings, and vLLM's ``/pooling`` for rewards) with
aiohttp (chosen over httpx for its lower per-request CPU cost, which is what bounds throughput at hundreds of
concurrent calls on a small machine). Sorts every failure into three kinds, because the gateway acts on
each differently: transient (retried with backoff: 429, 5xx, timeouts, dropped connections), fatal (fails at
once: a retry would get the same answer) and, across both, endpoint faults (nothing usable answered: a
closed port, an HTML login page, JSON without ``choices``, a refused key), which the circuit breaker counts.
Every reply's headers are read for the wait it asks (``retry-after-ms``, else ``Retry-After``) and for the
x-ratelimit-* budget, which goes up to the gateway (``on_rate_limits``) to pace this model's requests.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ...errors import ModelError
from .. import reasoning
from ..chat_template import ChatTemplateSource, load_chat_template_file
from ..config import ModelConfig
from ..rate_headers import RateLimitInfo, parse_rate_limit_headers, retry_after_seconds
from .base import Backend, Completion, FatalError, Messages, StructuredOutputRefused, TransientError, Usage

_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524}
# Statuses that every call of this model would get: a refused key, a path or model the server does not
# have, a method it does not offer. Fatal, and counted by the circuit breaker.
_ENDPOINT_STATUS = {401, 403, 404, 405, 501}
# Words of a server error that no retry can change (llama.cpp's 501 "not supported", vLLM's "does not
# support Embeddings API", a NotImplementedError surfacing as a 500). Such a reply fails at once.
_CANNOT_SUCCEED = (
    "not supported",
    "does not support",
    "doesn't support",
    "not implemented",
    "notimplementederror",
    "method not allowed",
)
# A connection that takes longer than this is not coming (a firewall dropping packets, a wrong host).
CONNECT_TIMEOUT = 10.0
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is either seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# Words a server's error uses when it cannot do what response_format asked (OpenAI, DeepSeek, Groq, TGI,
# vLLM, SGLang, LM Studio phrasings); a 400 about anything else (context length, a bad model) has none.
_STRUCTURED_WORDS = ("response_format", "json_schema", "json schema", "schema", "grammar", "guided", "structured")
_MODES = ("json_schema", "json_object", "none")  # from the strictest way of asking for JSON to the prompt alone


def _refuses_structured_output(error_text: str) -> bool:
    text = error_text.lower()
    return any(word in text for word in _STRUCTURED_WORDS)


def _short(text: str, limit: int = 80) -> str:
    """One line of at most ``limit`` characters, for the few words a breaker message quotes."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _decode(payload: bytes, charset: str | None) -> str:
    """A reply body as text, whatever it holds: a server's bytes must never turn into a crash here."""
    try:
        return payload.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def error_text(data: Any) -> str | None:
    """The message of an error body, whatever its dialect: OpenAI's ``{"error": {"message"}}``, vLLM's
    ``{"object": "error", "message"}``, FastAPI's ``{"detail": ...}``, a bare ``{"error": "text"}``."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and error.get("message") is not None:
        return str(error["message"])
    if isinstance(error, str):
        return error
    if data.get("object") == "error" and data.get("message") is not None:
        return str(data["message"])
    detail = data.get("detail")
    if detail is not None:
        return detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    return None


def describe_non_json(status: int, content_type: str, text: str) -> str:
    """What came back when a model API was expected, in a few words, e.g.
    ``HTML page (status 200, <title>Login</title>)``."""
    stripped = text.lstrip()
    if "html" in content_type or stripped[:15].lower().startswith(("<!doctype html", "<html")):
        title = _TITLE.search(text)
        shown = f", <title>{_short(title.group(1), 60)}</title>" if title and title.group(1).strip() else ""
        return f"HTML page (status {status}{shown})"
    if not stripped:
        return f"an empty reply (status {status})"
    return f"not JSON (status {status}, {content_type or 'no content type'}: {_short(stripped, 40)!r})"


def describe_connection_error(exc: aiohttp.ClientError) -> str:
    """A client-side failure in a few words: ``connection refused``, ``host not found (DNS)``, ..."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host not found (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError) or cause.errno == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host not found (DNS)"
        return f"cannot connect ({_short(cause.strerror or str(cause), 60)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without a reply"
    if isinstance(exc, (aiohttp.ClientConnectionResetError, ConnectionResetError)) or (
        isinstance(exc, OSError) and exc.errno == errno.ECONNRESET
    ):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "reply cut short"
    return _short(str(exc) or type(exc).__name__, 60)


class OpenAICompatBackend(Backend):
    supports_tools = True  # the request takes `tools`; a server that refuses them says so in its error

    def __init__(self, config: ModelConfig):
        if not config.base_url:
            raise ModelError(f"model '{config.name}': the openai backend needs base_url")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._schema_mode = config.structured_output  # stepped down if the server refuses json_schema
        # Told each reply's x-ratelimit-* budget (set by the gateway; None: nobody listens).
        self.on_rate_limits: Callable[[RateLimitInfo], None] | None = None

    @property
    def structured_output(self) -> str:
        return self._schema_mode

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=max(1, self.config.max_concurrency), ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(
                total=self.config.timeout, sock_connect=min(self.config.timeout, CONNECT_TIMEOUT)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers(),
                timeout=timeout,
                json_serialize=lambda obj: json.dumps(obj, ensure_ascii=False),
            )
        return self._session

    async def _post(
        self, path: str, body: dict[str, Any], *, base: str | None = None, expect: str | None = None
    ) -> dict[str, Any]:
        """POST ``body``; the reply's JSON, or the failure sorted (see the module docstring).

        ``expect`` names the key every reply of this endpoint has (``choices``, ``data``): a reply without it
        came from something that is not a model API (a proxy, a web app at the wrong address).
        """
        session = await self._session_get()
        name = self.config.name
        try:
            async with session.post((base or self.base_url) + path, json=body) as response:
                payload = await response.read()
                status, content_type, charset = response.status, response.content_type, response.charset
                retry_after = self._rate_headers(response.headers)
        except aiohttp.ConnectionTimeoutError:
            seconds = min(self.config.timeout, CONNECT_TIMEOUT)
            raise TransientError(
                f"model '{name}': connection failed: no connection within {seconds:g}s",
                model=name,
                endpoint_fault=f"no connection within {seconds:g}s",
            ) from None
        except asyncio.TimeoutError:
            raise TransientError(f"model '{name}': no reply within {self.config.timeout}s", model=name) from None
        except aiohttp.InvalidURL as exc:
            raise FatalError(
                f"model '{name}': base_url is not a valid URL ({exc})", model=name, endpoint_fault="invalid URL"
            ) from None
        except aiohttp.ClientError as exc:
            what = describe_connection_error(exc)
            raise TransientError(
                f"model '{name}': connection failed: {what} ({exc})", model=name, endpoint_fault=what
            ) from None
        return self._reply(path, status, content_type, _decode(payload, charset), retry_after, expect)

    def _rate_headers(self, headers: Any) -> float | None:
        """The wait a reply asks for (``retry-after-ms``, else ``Retry-After``); its x-ratelimit-* budget goes
        to ``on_rate_limits`` (the gateway's, which paces this model's requests by it)."""
        if self.on_rate_limits is not None:
            info = parse_rate_limit_headers(headers)
            if info is not None:
                self.on_rate_limits(info)
        if "retry-after-ms" in headers:
            return retry_after_seconds(headers)
        return parse_retry_after(headers.get("Retry-After"))

    def _reply(
        self, path: str, status: int, content_type: str, text: str, retry_after: float | None, expect: str | None
    ) -> dict[str, Any]:
        name = self.config.name
        data = _json_or_none(text)
        if data is None:
            what = describe_non_json(status, content_type, text)
            message = f"model '{name}': {path} did not answer like a model API: {what}: {_short(text, 200)}"
            if status >= 400 and status not in _TRANSIENT_STATUS:
                raise FatalError(message, status=status, model=name, raw=text, endpoint_fault=what)
            # A rate-limit page (a CDN's 429) says "slow down", not "nothing is there": retried, never counted.
            raise TransientError(
                message,
                status=status,
                model=name,
                raw=text,
                retry_after=retry_after,
                endpoint_fault=None if status == 429 else what,
            )
        if status >= 400:
            raise self._http_error(path, status, text, data, retry_after)
        if expect is not None and not (isinstance(data, dict) and expect in data):
            if error_text(data) is not None:  # an error sent with status 200 (some proxies, vLLM's embeddings)
                raise self._http_error(path, _embedded_status(data), text, data, retry_after, sent_as_200=True)
            what = f"JSON without '{expect}'"
            raise TransientError(
                f"model '{name}': {path} did not answer like a model API: {what}: {_short(text, 200)}",
                status=status,
                model=name,
                raw=text,
                endpoint_fault=what,
            )
        return data

    def _http_error(
        self, path: str, status: int, text: str, data: Any, retry_after: float | None, sent_as_200: bool = False
    ) -> ModelError:
        """An error the server answered in its API's words: transient, or fatal when no retry can help."""
        name = self.config.name
        said = error_text(data) or text
        how = f"HTTP {status}" + (" (sent with status 200)" if sent_as_200 else "")
        message = f"model '{name}': {how} from {path}: {text[:300]}"
        cannot_succeed = any(words in said.lower() for words in _CANNOT_SUCCEED)
        if status in _TRANSIENT_STATUS and not cannot_succeed:
            return TransientError(message, status=status, model=name, raw=text, retry_after=retry_after)
        if status in (401, 403):
            key = (
                f"the key from the environment variable {self.config.api_key_env} was refused"
                if self.config.api_key_env
                else "no key was sent: name the variable holding it in api_key_env"
            )
            return FatalError(f"{message} ({key})", status=status, model=name, raw=text, endpoint_fault=f"{how}, {key}")
        hint = ""
        if status == 404:
            hint = f" (is base_url right, and does the server serve model '{self.config.model}'?)"
        fault = f"{how} ({_short(said, 80)})" if status in _ENDPOINT_STATUS or cannot_succeed else None
        return FatalError(message + hint, status=status, model=name, raw=text, endpoint_fault=fault)

    @staticmethod
    def _usage(data: dict[str, Any]) -> Usage:
        usage = data.get("usage") or {}
        return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        path, body = self.request("chat", messages, params, json_schema=json_schema, seed=seed)
        try:
            data = await self._post(path, body, expect="choices")
        except (TransientError, FatalError) as exc:
            said = error_text(_json_or_none(exc.raw or ""))
            if "response_format" not in body or said is None or not _refuses_structured_output(said):
                raise
            raise self._step_down(body["response_format"]["type"], exc, said) from None
        return self.reply("chat", data)[0]

    def request(
        self,
        verb: str,
        payload: Any,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
        n: int = 1,
    ) -> tuple[str, dict[str, Any]]:
        """The path (under ``base_url``) and the body of the request a gateway verb (``chat``, ``chat_tools``,
        ``complete``) sends. One place builds them, so a provider batch (:mod:`..batch`) carries exactly the
        request a live call would have made."""
        if verb == "complete":
            body: dict[str, Any] = {"model": self.config.model, "prompt": payload, **params}
            if n > 1:
                body["n"] = n
            path = "/completions"
        elif verb == "chat_tools":
            body = {"model": self.config.model, "messages": payload["messages"], "tools": payload["tools"], **params}
            if payload.get("tool_choice") is not None:
                body["tool_choice"] = payload["tool_choice"]
            path = "/chat/completions"
        elif verb == "chat":
            body = {"model": self.config.model, "messages": payload, **params}
            path = "/chat/completions"
        else:
            raise ModelError(f"model '{self.config.name}': no request for verb '{verb}'", model=self.config.name)
        if seed is not None and "seed" not in body:
            body["seed"] = seed
        if verb == "chat" and json_schema is not None and self._schema_mode != "none":
            body["response_format"] = self._response_format(json_schema)
        return path, body

    def reply(self, verb: str, data: dict[str, Any], n: int = 1) -> list[Completion]:
        """The completions in a reply body to :meth:`request`'s request, live or from a provider batch's results
        file; a body without them raises :class:`TransientError`."""
        if verb == "complete":
            return self._text_completions(data)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            trace = message.get("reasoning_content") or message.get("reasoning")  # DeepSeek/vLLM; OpenRouter/Ollama
            tools = verb == "chat_tools"  # a plain chat reply's tool_calls are not read
            calls = [_tool_call(call, k) for k, call in enumerate(message.get("tool_calls") or [])] if tools else []
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            what = "reply without choices" + (" or with malformed tool_calls" if verb == "chat_tools" else "")
            raise TransientError(
                f"model '{self.config.name}': {what}: {str(data)[:200]}",
                model=self.config.name,
                raw=json.dumps(data),
            ) from None
        completion = Completion(
            text=text,
            usage=self._usage(data),
            finish_reason=choice.get("finish_reason"),
            model=data.get("model", self.config.model),
            tool_calls=calls or None,
        )
        trace = trace if isinstance(trace, str) else None
        return [reasoning.apply(completion, self.config, trace, server_tokens=_reasoning_tokens(data))]

    async def chat_tools(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        tool_choice: str | None = None,
        seed: int | None = None,
    ) -> Completion:
        """``chat`` with OpenAI's ``tools`` (and ``tool_choice``): the calls the model made come back in
        ``tool_calls``, each ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
        payload = {"messages": messages, "tools": tools, "tool_choice": tool_choice}
        path, body = self.request("chat_tools", payload, params, seed=seed)
        data = await self._post(path, body, expect="choices")
        return self.reply("chat_tools", data)[0]

    def _step_down(self, used: str, refusal: ModelError, said: str) -> StructuredOutputRefused:
        """The server refused our way of asking for structured output (some answer 400, some 500): step down
        json_schema -> json_object (+schema, which llama.cpp's server enforces) -> the prompt alone, and
        remember it. Stepping from the mode the refused request *used* keeps concurrent refusals of one
        json_schema request each from stepping twice. Replies are still validated against the schema."""
        below = _MODES[min(_MODES.index(used) + 1, len(_MODES) - 1)]
        if _MODES.index(below) > _MODES.index(self._schema_mode):
            self._schema_mode = below
        now = self._schema_mode
        asking = "the prompt alone" if now == "none" else f"response_format {now}"
        status = getattr(refusal, "status", None)
        return StructuredOutputRefused(
            f"model '{self.config.name}': {self.config.endpoint} refused response_format {used} (HTTP {status}: "
            f"{_short(said, 120)}); asking with {asking} from now on, every reply still checked against the schema",
            used=used,
            now=now,
            model=self.config.name,
            raw=refusal.raw,
        )

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._schema_mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        return {"type": "json_object", "schema": schema}

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        return (await self._completions(prompt, params, 1, seed))[0]

    async def complete_n(
        self, prompt: str, params: dict[str, Any], n: int, *, seed: int | None = None
    ) -> list[Completion]:
        """One request with ``n`` (vLLM and SGLang process the prompt once for all samples). A server that
        ignores ``n`` (some llama.cpp builds, Ollama) returns fewer choices: the rest are asked for one by one."""
        got = await self._completions(prompt, params, n, seed)
        missing = n - len(got)
        if missing > 0:
            seeds = [None if seed is None else seed + len(got) + i for i in range(missing)]
            got += await asyncio.gather(*(self.complete(prompt, params, seed=s) for s in seeds))
        return got[:n]

    async def _completions(self, prompt: str, params: dict[str, Any], n: int, seed: int | None) -> list[Completion]:
        path, body = self.request("complete", prompt, params, seed=seed, n=n)
        return self._text_completions(await self._post(path, body, expect="choices"))

    def _text_completions(self, data: dict[str, Any]) -> list[Completion]:
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [c.get("text") or "" for c in choices]
        except (KeyError, TypeError, AttributeError):
            choices, texts = [], []
        if not choices:
            raise TransientError(
                f"model '{self.config.name}': completion without choices", model=self.config.name, raw=json.dumps(data)
            )
        # The server counts tokens per request: the prompt once, completion tokens for all samples together.
        usage = self._usage(data)
        share, extra = divmod(usage.completion_tokens, len(choices))
        model = data.get("model", self.config.model)
        return [
            Completion(
                text=text,
                finish_reason=choice.get("finish_reason"),
                model=model,
                usage=Usage(usage.prompt_tokens if i == 0 else 0, share + (extra if i == 0 else 0)),
            )
            for i, (choice, text) in enumerate(zip(choices, texts))
        ]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return (await self.embed_with_usage(texts))[0]

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        data = await self._post("/embeddings", {"model": self.config.model, "input": texts}, expect="data")
        try:
            rows = sorted(data["data"], key=lambda item: item.get("index", 0))
            vectors = [list(map(float, row["embedding"])) for row in rows]
        except (KeyError, TypeError, ValueError):
            raise ModelError(
                f"model '{self.config.name}': malformed embeddings reply",
                model=self.config.name,
                raw=json.dumps(data)[:2000],
            ) from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
        return vectors, int(tokens) if isinstance(tokens, (int, float)) else None

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        """vLLM's pooling endpoint, one request per conversation (see :mod:`..reward` for the shapes)."""
        from ..reward import POOLING_PATH, parse_pooling_reply, pooling_request, server_root

        root = server_root(self.base_url)
        replies = await asyncio.gather(
            *(
                self._post(POOLING_PATH, pooling_request(self.config.model, c, params), base=root, expect="data")
                for c in conversations
            )
        )
        return [parse_pooling_reply(data, self.config.name) for data in replies]

    async def chat_template(self) -> ChatTemplateSource | None:
        """A server does not say which template it applies; ``chat_template`` in models.yaml may name the
        served model's tokenizer_config.json (or a .jinja file)."""
        if not self.config.chat_template:
            return None
        return load_chat_template_file(self.config.chat_template)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _reasoning_tokens(data: dict[str, Any]) -> int | None:
    """The server's count of the reply's reasoning tokens (``usage.completion_tokens_details.reasoning_tokens``:
    OpenAI, DeepSeek, OpenRouter), or None when it gives none."""
    usage = data.get("usage")
    details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
    value = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _tool_call(call: Any, index: int) -> dict[str, Any]:
    """One tool call in OpenAI's shape, whatever a server's variant: arguments as JSON text (some servers
    send an object), an id even where the server gave none (the tool's reply must name it)."""
    function = call["function"]
    name = function["name"]
    if not isinstance(name, str):
        raise ValueError("tool call without a function name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {
        "id": str(call.get("id") or f"call_{index}"),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _embedded_status(data: Any) -> int:
    """The status an error body sent with 200 names (vLLM puts it in ``code``); a server error if none."""
    error = data.get("error") if isinstance(data, dict) else None
    for value in ((error or {}).get("code") if isinstance(error, dict) else None, data.get("code")):
        try:
            status = int(value)
        except (TypeError, ValueError):
            continue
        if 400 <= status <= 599:
            return status
    return 500
